-- SuperCollider engine: one scsynth per block, playing one node of the module's compiled
-- synthdef, as one JACK client; the OSC messages that start that node and set its controls
-- while it plays; the names of its ports.
--
--   env SC_JACK_DEFAULT_INPUTS= SC_JACK_DEFAULT_OUTPUTS= SC_SYNTHDEF_PATH=. \
--     scsynth -u PORT -B 127.0.0.1 -H CLIENT -i N -o M -z 64 -R 0 -l 1 -D 1 -P .
--
-- Why each flag (measured with Debian's supercollider-server 3.13.0 against jackd 1.9.21):
--   one scsynth per block   as every other engine: a block is one process the agent starts,
--                           stops and restarts by its pid, and one JACK client whose ports
--                           carry only that block's sound (a shared server would need its
--                           own routing of buses to many clients' ports, and a crash or a
--                           replacement would take every block on it along). A server costs
--                           about 10 MB of its own memory (RssAnon; the 130 MB RSS that ps
--                           shows is mostly JACK's shared memory, as for jackd) and is ready
--                           190-250 ms after it is started on an idle server.
--   env …=                  the agent runs `env NAME=value… program` as the program with
--                           those variables (no `env` process, no shell; a missing scsynth
--                           is named with its package):
--     SC_JACK_DEFAULT_INPUTS= / SC_JACK_DEFAULT_OUTPUTS=
--                           scsynth connects its ports to the ports these name (a list, or a
--                           client's first ports); set on a host (a musician's .profile) they
--                           would wire a block by itself. Empty, it connects nothing (unset
--                           too, measured: jack_lsp -c shows no edge), and the agent makes
--                           every edge.
--     SC_SYNTHDEF_PATH=.    with -D 1 scsynth loads every .scsyndef under this folder before
--                           it is ready: the instance's own directory (its working
--                           directory), where the module's compiled synthdef was copied.
--                           Loading one later with /d_load is asynchronous: a /s_new sent
--                           right after it would find no synthdef.
--   -u PORT -B 127.0.0.1    OSC over UDP on the block's port (the runtime gives an "osc"
--                           module one per instance), on loopback only: the agent on the
--                           same host sends the node's start and its live params there.
--                           scsynth obeys every command it hears (/quit, /d_recv, …), so it
--                           listens to nobody beyond the host. The cost: the router sends
--                           what musicians address to a block to its host's address, which
--                           reaches an scsynth on the controller's own host (measured:
--                           /tone/n_set 1000 freq 550 to the router retuned sc_sine) but not
--                           one on another host.
--   -H CLIENT               the JACK client name: scsynth takes "SERVER:CLIENT" or, with no
--                           ':' (the runtime's client names have none), CLIENT alone and the
--                           server from JACK_DEFAULT_SERVER. It names its ports CLIENT:in_N
--                           and CLIENT:out_N (measured with jack_lsp).
--   -i N -o M               one port per declared input and output (scsynth's default is 8
--                           of each); 0 gives none. The synthdef reads its first input from
--                           bus NumOutputBuses.ir (what SoundIn.ar(0) reads) and writes its
--                           first output to bus 0.
--   -z BLOCK                scsynth computes in JACK's process callback (no ring buffer,
--                           no added latency), period / BLOCK blocks per callback: a period
--                           below the block (16, 32) computed none and played silence
--                           (measured at 16 with the default 64). So the block is 64 or
--                           the largest power of two dividing the period, which played 440 Hz
--                           at 16, 32, 64, 512 and 1024 (at 16, on a busy 2-core machine, a
--                           3 s run counted 106 xruns against pd's 272 and csound's 691).
--                           (-Z, the hardware buffer size, is JACK's period: scsynth takes
--                           it from the server.)
--   -R 0                    no Zeroconf publishing (it only adds "Zeroconf: failed to create
--                           client: Daemon not running" where no avahi runs).
--   -l 1                    at most one registered return address (/notify): nobody but the
--                           agent and the router talks to it.
--   -D 1                    load the synthdefs of SC_SYNTHDEF_PATH at start (the default,
--                           said since the engine depends on it).
--   -P .                    file access by OSC (/b_read, /b_write, /d_load, …) stays inside
--                           the instance's directory (measured: "/b_write 0 /tmp/x.wav" is
--                           written to ./tmp/x.wav, or fails), so a message routed to a block
--                           cannot read or overwrite the host's files.
-- Ready: scsynth prints "SuperCollider 3 server ready." once its JACK client is active (any
-- autoconnection is made before it, measured) and its UDP port listens: then the agent sends
-- `start_messages` (the node) and wires the block.
-- The node: /s_new of the synthdef named after the module's main file (`sc_sine.scsyndef`
-- holds `sc_sine`) as node 1000 at the head of the root group (no sclang, so no default
-- group 1), with every number param of the block as a control of the same name. A live
-- param sets that control on node 1000 (`/n_set`), in the same process. A server restarted
-- with its JACK server comes back with no node: the agent sends it the start messages again.
-- SIGTERM ends scsynth at once (21 ms, measured) and closes its JACK client.
-- Only `string`, `table` and `math` are used (what the sandbox has).

-- The node every block plays (any number above the root group's 0 would do).
local NODE = 1000

-- scsynth's default control block; smaller when the period is smaller (see -z above).
local SC_BLOCK = 64

local function block_size(period)
  local block = SC_BLOCK
  while block > 1 and period % block ~= 0 do
    block = block // 2
  end
  return block
end

-- The synthdef's name: the main file's name without `.scsyndef`.
local function synthdef(ctx)
  local name = ctx.main and string.match(ctx.main, "([^/]+)%.scsyndef$")
  if name == nil then
    error(string.format(
      "%s: \"main\" of a supercollider module is its compiled synthdef, NAME.scsyndef, holding a SynthDef called NAME (not %s)",
      ctx.manifest, tostring(ctx.main)), 0)
  end
  return name
end

-- A param as a control value: a float for numbers (whole ones may arrive as Lua integers,
-- which OSC would send as int32), 1.0 / 0.0 for booleans; nil for text, which no control
-- takes (a string where /s_new expects a value would map the control to a bus).
local function control_value(value)
  if type(value) == "number" then
    return value + 0.0
  elseif type(value) == "boolean" then
    return value and 1.0 or 0.0
  end
  return nil
end

return {
  ready_line = "SuperCollider 3 server ready.",

  -- What to install where `scsynth` is missing (named in the error when it cannot be started).
  package = "supercollider-server",

  command = function(ctx)
    synthdef(ctx)
    if ctx.osc_port == nil then
      error(string.format(
        "%s: a supercollider module needs \"osc\": true (scsynth is told what to play over OSC)",
        ctx.manifest), 0)
    end
    return {
      "env",
      "SC_JACK_DEFAULT_INPUTS=",
      "SC_JACK_DEFAULT_OUTPUTS=",
      "SC_SYNTHDEF_PATH=.",
      "scsynth",
      "-u", string.format("%d", ctx.osc_port),
      "-B", "127.0.0.1",
      "-H", ctx.client,
      "-i", string.format("%d", ctx.inputs),
      "-o", string.format("%d", ctx.outputs),
      "-z", string.format("%d", block_size(ctx.audio.period)),
      "-R", "0",
      "-l", "1",
      "-D", "1",
      "-P", ".",
    }
  end,

  start_messages = function(ctx)
    local message = { "/s_new", synthdef(ctx), NODE, 0, 0 }
    local names = {}
    for name in pairs(ctx.params) do
      names[#names + 1] = name
    end
    table.sort(names)
    for _, name in ipairs(names) do
      local value = control_value(ctx.params[name])
      if value ~= nil then
        message[#message + 1] = name
        message[#message + 1] = value
      end
    end
    return { message }
  end,

  live_message = function(ctx, name, value)
    return { "/n_set", NODE, name, control_value(value) or value }
  end,

  input_port = function(ctx, i)
    return string.format("%s:in_%d", ctx.client, i)
  end,

  output_port = function(ctx, i)
    return string.format("%s:out_%d", ctx.client, i)
  end,
}
