-- Csound engine: the command that runs a csound module as one JACK client, and
-- the names of its ports.
--
-- Why each flag:
--   -odac:null / -iadc:null  open JACK ports but connect them to nothing: the agent
--                            makes every edge itself (plain -odac / -iadc would
--                            connect to system:playback_* / system:capture_*).
--   -iadc:null only when the block has inputs: without it csound opens no input
--                            ports, and a source needs none.
--   -+jack_client=NAME       deterministic port names: NAME:input1.., NAME:output1..
--                            NAME must be at most 31 bytes (longer: csound falls back
--                            to "csound6"), and unused: JACK gives a second "NAME"
--                            the name "NAME-01" without any error.
--   -b / -B                  csound's ring buffer between its JACK callback and its
--                            own (not real-time) thread, in frames.  A block delays
--                            its audio by exactly -B frames (measured), so -B is
--                            this block's share of a chain's latency.  rtjack
--                            refuses -B < period + -b, and with only that (e.g.
--                            -b 64 -B 320 at a 256 period) csound's thread has no
--                            room for a late wake-up: measured dropouts whenever
--                            the host was busy.  -b = period/2, -B = 2 * period
--                            (128 / 512 at 256) played clean in every loaded trial.
--                            -b must be a multiple of ksmps: the module templates
--                            set ksmps = min(32, period/2) to match.
--   -d -m4                   no graphs, no per-note messages, but keep warnings:
--                            -m0 also hides "rtjack: xrun in real time audio" and
--                            "string exceeds maximum allowed length" (a client name
--                            of 32+ characters, after which csound silently uses
--                            "csound6" instead).  Steady state prints nothing else.
-- Only `string` is used (the sandbox has string/table/math); %d also turns a
-- float that arrives as 256.0 into "256".
-- All flags live here, none in the templates' <CsOptions>, so changing them
-- changes the block's launch spec and restarts it.

local function buffer_frames(period)
  local b = period // 2
  if b < 8 then
    b = 8 -- rtjack's smallest -b
  end
  return b, 2 * period
end

return {
  -- rtjack, right after activating, counts the server's ports and then lists them into
  -- a buffer of that size: a port that another client registers in between overflows the
  -- buffer (measured: "double free or corruption", csound hangs in its abort handler and
  -- stalls the whole JACK graph into silence). It prints this line when it is past that
  -- point, so the agent starts the next client on the server only then.
  ready_line = "output ports not connected",

  command = function(ctx)
    local b, B = buffer_frames(ctx.audio.period)
    local argv = {
      "csound",
      "-d",
      "-m4",
      "-+rtaudio=jack",
      "-+jack_client=" .. ctx.client,
      "-odac:null",
    }
    if ctx.inputs > 0 then
      argv[#argv + 1] = "-iadc:null"
    end
    argv[#argv + 1] = "-b"
    argv[#argv + 1] = string.format("%d", b)
    argv[#argv + 1] = "-B"
    argv[#argv + 1] = string.format("%d", B)
    argv[#argv + 1] = ctx.main
    return argv
  end,

  input_port = function(ctx, i)
    return string.format("%s:input%d", ctx.client, i)
  end,

  output_port = function(ctx, i)
    return string.format("%s:output%d", ctx.client, i)
  end,
}
