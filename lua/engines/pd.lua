-- Pure Data engine: the command that runs a pd module (a `.pd` patch) as one headless
-- JACK client, and the names of its ports.
--
-- Why each flag (measured with Debian's puredata-core 0.53.1 against jackd 1.9.21):
--   -nogui                  headless: no Tcl/Tk GUI process (nor a display) on a synth host.
--   -noprefs                the host user's saved Pd preferences (audio API, devices,
--                           startup libraries, "-jackconnect") play no part: the same
--                           patch launches the same way on every host.
--   -stderr                 Pd's messages ("... couldn't create", errors) go to stderr, which
--                           is the block's log: without it they are sent to a GUI that is
--                           not there.
--   -nrt                    Pd's own scheduler thread asks for no real-time priority (and
--                           forks no pd-watchdog process beside it): with -callback the
--                           audio is computed in JACK's own real-time thread anyway, and
--                           one block is one process, which the agent stops by its pid.
--                           (In polling mode, below, the thread that fills the ring buffer
--                           then runs at normal priority: measured at period 32, more xruns
--                           than a csound block, which plays there too.)
--   -nomidi                 no ALSA MIDI ports: the orchestra wires audio only.
--   -jack -jackname NAME    JACK, under the block's client name. Pd names its ports
--                           NAME:input_1.. and NAME:output_1.. (measured with jack_lsp).
--                           JACK refuses a name over 63 bytes (Pd then plays on with no
--                           ports); the runtime's client names are at most 31.
--   -nojackconnect          Pd connects its ports to the first client's (system:capture_*,
--                           system:playback_*) by default: the agent makes every edge.
--   -noadc / -inchannels N  no input ports at all for a source; N for a block with inputs.
--   -outchannels M / -nodac one output port per declared output (dac~ 1..M in the patch);
--                           none for a sink.
--   -r RATE                 the orchestra's rate (Pd takes JACK's rate when it opens it, the
--                           same number; given so the patch's loadbang already sees it).
--   -callback               Pd computes its audio inside JACK's process callback (at its
--                           real-time priority), in 64-frame blocks: no ring buffer between
--                           JACK and Pd's (non-real-time) scheduler, nor its latency.
--                           Pd needs the JACK period to be a multiple of its 64-frame
--                           block; for a period under 64 (16, 32) it stays in its default
--                           polling mode, its scheduler filling a ring buffer of -audiobuf
--                           ms that JACK's callback empties: two blocks, 128 frames (2.7 ms
--                           at 48 kHz) of added latency.
--   -send MESSAGES          sent once the patch is loaded, in order:
--                             pd menunew… a canvas of the engine's own: [r orchestra] →
--                                        [print orchestra], made before the audio runs
--                                        (with -callback, work the main thread does under
--                                        Pd's lock once JACK calls Pd delays the callback).
--                             pd dsp 1   DSP on (a patch need not do it itself); Pd opens
--                                        its JACK client only now: registers its ports
--                                        and activates it before the next message.
--                             orchestra DSP on   printed by that canvas.
--                           So the log says "orchestra: DSP on" once the client is active:
--                           the ready line. Pd prints nothing of its own then (only with
--                           -verbose, and that line comes before its ports exist). Without a
--                           ready line the agent counted the block started once its ports
--                           existed, and connecting a port of a client not yet active fails
--                           (measured: a PortConnectionError warning, then a retry); with it,
--                           a replacement is wired in only once it plays (make-before-break).
--                           If JACK cannot be reached Pd still says "DSP on" (and plays into
--                           nothing, its ports missing): the agent starts it against its own
--                           server, which it has just checked.
-- The patch is the last argument, a path relative to the instance directory (the
-- process's working directory).
-- Only `string`, `table` and `math` are used (what the sandbox has).

-- Pd's signal block: JACK periods must be a multiple of it for -callback.
local PD_BLOCK = 64

-- Polling mode's ring buffer in ms (what -audiobuf takes): Pd turns it into frames rounded
-- down to whole 64-frame blocks, and writes a block at a time, so it must hold two (measured:
-- -audiobuf 1 at 48 kHz and period 32 came to one JACK period, 32 frames, and Pd never
-- wrote: silence).
local function polling_buffer_ms(rate)
  return math.ceil(2 * PD_BLOCK * 1000 / rate)
end

-- `flag N` for N ports of a direction, or `none` (no ports, not even Pd's default 2).
local function channels(argv, count, flag, none)
  if count > 0 then
    argv[#argv + 1] = flag
    argv[#argv + 1] = string.format("%d", count)
  else
    argv[#argv + 1] = none
  end
end

-- The messages of -send (see above): the engine's canvas, DSP on, "orchestra: DSP on".
local STARTUP = table.concat({
  "pd menunew orchestra /",
  "pd-orchestra obj 0 0 r orchestra",
  "pd-orchestra obj 0 30 print orchestra",
  "pd-orchestra connect 0 0 1 0",
  "pd dsp 1",
  "orchestra DSP on",
}, "; ")

return {
  ready_line = "orchestra: DSP on",

  -- What to install where `pd` is missing (named in the error when it cannot be started).
  package = "puredata-core",

  command = function(ctx)
    local argv = {
      "pd",
      "-nogui",
      "-noprefs",
      "-stderr",
      "-nrt",
      "-nomidi",
      "-jack",
      "-jackname", ctx.client,
      "-nojackconnect",
    }
    channels(argv, ctx.inputs, "-inchannels", "-noadc")
    channels(argv, ctx.outputs, "-outchannels", "-nodac")
    argv[#argv + 1] = "-r"
    argv[#argv + 1] = string.format("%d", ctx.audio.rate)
    if ctx.audio.period % PD_BLOCK == 0 then
      argv[#argv + 1] = "-callback"
    else
      argv[#argv + 1] = "-audiobuf"
      argv[#argv + 1] = string.format("%d", polling_buffer_ms(ctx.audio.rate))
    end
    argv[#argv + 1] = "-send"
    argv[#argv + 1] = STARTUP
    argv[#argv + 1] = ctx.main
    return argv
  end,

  input_port = function(ctx, i)
    return string.format("%s:input_%d", ctx.client, i)
  end,

  output_port = function(ctx, i)
    return string.format("%s:output_%d", ctx.client, i)
  end,
}
