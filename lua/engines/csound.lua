-- Csound engine: how to launch a csound module as a JACK client and name its ports.
--
-- Why these flags:
--   -odac:null / -iadc:null  open JACK ports but connect them to nothing; the agent
--                            makes every edge itself (plain -odac/-iadc would
--                            auto-connect to system:playback_*/capture_*).
--   -iadc:null only with inputs: without it csound opens no input ports at all.
--   -+jack_client            deterministic port names: <client>:input1.., <client>:output1..
--   -b / -B                  csound's JACK ring buffer.  rtjack refuses
--                            -B < period + -b ("buffer size (-B) is too small"), so the
--                            smallest legal pair for a period is -b = period/4,
--                            -B = period + period/4 (64 / 320 at 256 frames), measured
--                            dropout-free on the dummy driver; each block in a chain
--                            adds one JACK period of latency either way.
--   -d -m0                   no displays, no per-note messages (errors still print).
-- Flags stay on the command line (templates carry no <CsOptions>) so that a
-- change here is a change of the block's launch spec.

local function buffer_frames(period)
  local b = period // 4
  if b < 16 then b = math.min(16, period) end
  return b, period + b
end

return {
  command = function(ctx)
    local b, B = buffer_frames(ctx.audio.period)
    local argv = {
      "csound", "-d", "-m0",
      "-+rtaudio=jack",
      "-+jack_client=" .. ctx.client,
      "-odac:null",
    }
    if ctx.inputs > 0 then
      argv[#argv + 1] = "-iadc:null"
    end
    argv[#argv + 1] = "-b"
    argv[#argv + 1] = tostring(b)
    argv[#argv + 1] = "-B"
    argv[#argv + 1] = tostring(B)
    argv[#argv + 1] = ctx.main
    return argv
  end,

  input_port = function(ctx, i)
    return ctx.client .. ":input" .. i
  end,

  output_port = function(ctx, i)
    return ctx.client .. ":output" .. i
  end,
}
