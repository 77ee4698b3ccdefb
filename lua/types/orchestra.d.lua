---@meta
-- LuaLS annotations for cloud-orchestra scripts: point your editor's Lua language server
-- at this folder (e.g. `"workspace.library": ["<repo>/lua/types"]` in .luarc.json) for
-- completion and checks of the orchestra API.

---A synthesizer block (or the host's adc/dac ports). `a >> b` connects output i of `a` to
---input i of `b` for every i both have, and returns `b`, so chains read left to right.
---@class Block
---@field name string The block's name.
---@operator shr(Block|Port): Block|Port
local Block = {}

---One output port of this block (1-based), for port-level connections.
---@param i integer
---@return Port
function Block:out(i) end

---Same as `Block:out`.
---@param i integer
---@return Port
function Block:output(i) end

---One input port of this block (1-based): `osc:out(1) >> mix:input(2)`.
---@param i integer
---@return Port
function Block:input(i) end

---A single port of a block, from `:out(i)` or `:input(i)`.
---@class Port
---@operator shr(Block|Port): Block|Port

---What a block is made of. Every other field is a param of its module
---(e.g. `freq = 440` for `sine`); unknown params are an error.
---@class BlockSpec
---@field module string The module: sine, fm, lp, gain, mixer, noise, adc, dac, or one from --modules.
---@field host? string Pin the block to this host (a hard constraint for the placement).
---@field fade? number Milliseconds a replacement of this block crossfades into the running one (default: 20; 0 switches at once; at most 10000).
---@field [string] number|string|boolean Module params.

---Declare a block: `local osc = block "osc" { module = "sine", freq = 440 }`.
---Names are `[A-Za-z0-9_-]+` and unique.
---@param name string
---@param spec? BlockSpec When given, the block is declared at once: `block("osc", {…})`.
---@return fun(spec: BlockSpec): Block
function block(name, spec) end

---A machine the orchestra may use (usually in a hosts file given with --hosts).
---@class HostSpec
---@field address string Address to reach it by.
---@field user? string Login user (default: the current user).
---@field port? integer SSH port (default: 22).
---@field cores? integer Cores the placement may fill (default: 1).
---@field identity? string SSH key file (default: the ssh-agent, then ~/.ssh/id_ed25519, id_rsa).

---Declare a host: `host "h1" { address = "10.0.0.4", user = "ubuntu", cores = 2 }`.
---@param name string
---@param spec? HostSpec
---@return fun(spec: HostSpec)
function host(name, spec) end

---Connect two blocks or ports: the same as `from >> to`.
---@param from Block|Port|string A block, an output port (`a:out(1)`), or a name: `"a"` or `"a:1"`.
---@param to Block|Port|string A block, an input port (`b:input(1)`), or a name: `"b"` or `"b:2"`.
function connect(from, to) end

---@class AudioSpec
---@field rate? integer Sample rate of every JACK server and synth (default: 48000).
---@field period? integer Frames per JACK period, a power of two (default: 512).

---One sample rate and period for the whole orchestra.
---@param spec AudioSpec
function audio(spec) end

---@class LinkRule
---@field from? string links from this host (default: any host)
---@field to? string links to this host (default: any host)
---@field queue? integer their receive queue in packets
---@field strategy? integer their jitter buffer, jacktrip's `--bufstrategy` (0–3)

---@class NetworkSpec
---@field queue? integer jacktrip's receive queue in packets, `-q`, 2–1024 (default: 4)
---@field strategy? integer jacktrip's jitter buffer, `--bufstrategy` 0–3 (default: jacktrip's own)
---@field links? LinkRule[] buffers of their own for links between given hosts; the last rule that matches wins
---@field first_port? integer first UDP port links may use on a host (default: 4464)
---@field last_port? integer last UDP port links may use on a host (default: 4963)
---@field osc_first_port? integer first UDP port OSC-capable blocks listen on, per host (default: 7800)
---@field osc_last_port? integer last UDP port OSC-capable blocks listen on, per host (default: 7999)

---How network links (jacktrip, one per wire between hosts) carry audio.
---@param spec NetworkSpec
function network(spec) end

---@class LatencySpec
---@field max_ms number the most a source's sound may take to reach a `dac`, in milliseconds

---A latency budget: `plan` and `run` warn when a placement's worst path exceeds it (with
---`--strict` they refuse it).
---@param spec LatencySpec
function latency(spec) end

---Load `name.lua` (dots are folders) or `name/init.lua` from the script's folder, once.
---Required files are watched like the script.
---@param name string
---@return any
function require(name) end
