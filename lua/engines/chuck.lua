-- ChucK engine: refuses to run Debian's chuck as a block, and says why in one line.
--
-- A block's program must be a JACK client the agent can find and wire alone: under the
-- client name the runtime chose (ctx.client, so a replacement can start beside the old
-- instance), with known port names, and connected to nothing by itself. Measured with
-- Debian bookworm's chuck 1.4.2.0 (`linux (jack)`, RtAudio) against jackd 1.9.21:
--   * Its JACK client is always "ChucK": no flag, nor environment variable, names it, and a
--     second instance on the server becomes "ChucK-01" (JACK's choice, in start order). Its
--     ports are "ChucK:outport 0"…, "ChucK:inport 0"….
--   * It connects its ports to the first physical client's (system:playback_N,
--     system:capture_N) as it starts, and cannot be told not to. The agent removes unplanned
--     edges of its own clients only, which it knows by name: a "ChucK" client is not one.
--   * --in:0 is taken as "the default", 2 inputs; --out:M fails ("no audio output device with
--     requested channel count") when M is more than the server's system:playback ports.
--   * It always listens on TCP port 8888 (--port:N moves it; --standalone, -s and --silent do
--     not stop it) on every interface, and adds any ChucK file sent there
--     (`chuck --remote:HOST + file.ck`) to the running VM: code that can write files as the
--     host's user, from anyone who reaches the port (measured: a FileIO write ran).
-- What does work: --srate:N, --in:N (N ≥ 1), --out:M, and the VM runs in the JACK process
-- callback, so a shred's first `<<< >>>` is printed only once the client is active (a ready
-- line a module could print). The README's "ChucK modules" says what a working engine takes.
-- Only `string`, `table` and `math` are used (what the sandbox has).

local WHY = "Debian's chuck 1.4.2.0 cannot run as a block: its JACK client is always "
  .. "\"ChucK\" (a second one is ChucK-01), it connects itself to system:playback_*/"
  .. "system:capture_*, and it runs any code sent to TCP port 8888; see README \"ChucK modules\""

local function refuse(ctx)
  error(string.format("%s: %s", ctx.module, WHY), 0)
end

return {
  -- What to install where `chuck` is missing (for an engine that can run it).
  package = "chuck",

  command = refuse,

  input_port = function(ctx, i)
    return string.format("%s:inport %d", ctx.client, i - 1)
  end,

  output_port = function(ctx, i)
    return string.format("%s:outport %d", ctx.client, i - 1)
  end,
}
