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
-- Only `string`, `table` and `math` are used (what the sandbox has); %d also turns a
-- float that arrives as 256.0 into "256".
-- All flags live here, none in the templates' <CsOptions>, so changing them
-- changes the block's launch spec and restarts it.
--
-- Modules written for other setups (the 2015 prototype's: `sr = 44100`, `ksmps = 100`,
-- CsOptions `-odac -iadc -+rtaudio=jack -+jack_client=csoundlp -b 500 -B 2000`) play as
-- they are:
--   * csound reads the command line after <CsOptions>, so our flags win over theirs
--     (measured with csound 6.18).  Still the flags in `owned_csoptions` are taken out
--     of a module's <CsOptions> (the runtime does it, see src/csd.rs): a `-iadc` left
--     there opens inputs connected to system:capture_* when the block has no inputs
--     (we pass no -iadc then), and a `-r`/`-k` there would hide the real rate from us.
--   * `--sample-rate` and `--ksmps` override the header (kr follows), so the rate is
--     JACK's and ksmps divides -b.  --ksmps goes with every --sample-rate: given only a
--     new rate, csound derives ksmps from the header's kr (44100/441 → 48000/441 ≈ 108).
--   * nothing is passed when the header already fits (the built-in templates): their
--     launch command, and so their spec hash, stays the same.

local function buffer_frames(period)
  local b = period // 2
  if b < 8 then
    b = 8 -- rtjack's smallest -b
  end
  return b, 2 * period
end

-- The largest ksmps not above `want` that divides -b (rtjack refuses any other).
local function fitting_ksmps(b, want)
  local k = math.max(1, math.min(b, math.floor(want)))
  while b % k ~= 0 do
    k = k - 1
  end
  return k
end

local function fmt(x)
  if x == math.floor(x) then
    return string.format("%d", x)
  end
  return string.format("%g", x)
end

-- For a module's .csd (`ctx.csd`: its header, see src/csd.rs): the flags that make it fit
-- the orchestra, and a note per change ("sr 44100 → 48000").  An error names the file and
-- line, why, and what to change.
local function adapt(ctx, b)
  local csd = ctx.csd
  local flags, notes = {}, {}
  local function value(name)
    return csd[name] and csd[name].value
  end
  local function at(name)
    return string.format("%s:%d", csd.file, csd[name].line)
  end
  local nchnls = value("nchnls") or (csd.nchnls == nil and 1 or nil)
  local nchnls_i = value("nchnls_i") or (csd.nchnls_i == nil and nchnls or nil)
  if nchnls and nchnls < ctx.outputs then
    local where = csd.nchnls and at("nchnls") or csd.file
    error(string.format(
      "%s: nchnls = %d gives %d output port(s), but the manifest declares %d output(s); set nchnls = %d or \"outputs\": %d in manifest.json",
      where, nchnls, nchnls, ctx.outputs, ctx.outputs, nchnls), 0)
  end
  if nchnls_i and nchnls_i < ctx.inputs then
    local name = csd.nchnls_i and "nchnls_i" or "nchnls"
    local where = csd[name] and at(name) or csd.file
    error(string.format(
      "%s: %s = %d gives %d input port(s), but the manifest declares %d input(s); set nchnls_i = %d or \"inputs\": %d in manifest.json",
      where, name, nchnls_i, nchnls_i, ctx.inputs, ctx.inputs, nchnls_i), 0)
  end
  local rate = ctx.audio.rate
  -- csound's defaults when the header says nothing: sr 44100, and ksmps from kr 4410.
  local sr = value("sr") or (csd.sr == nil and 44100 or nil)
  local kr = value("kr") or (csd.kr == nil and 4410 or nil)
  local ksmps = value("ksmps")
  if ksmps == nil and csd.ksmps == nil and sr and kr and kr > 0 then
    ksmps = sr / kr
  end
  local new_rate = sr ~= rate
  local want = ksmps or 32
  local new_ksmps = fitting_ksmps(b, want)
  if new_rate then
    flags[#flags + 1] = string.format("--sample-rate=%d", rate)
    notes[#notes + 1] = string.format("sr %s → %d", sr and fmt(sr) or "(an expression)", rate)
  end
  if new_rate or ksmps ~= new_ksmps or csd.ksmps == nil then
    flags[#flags + 1] = string.format("--ksmps=%d", new_ksmps)
    if ksmps ~= new_ksmps then
      local was = ksmps and fmt(ksmps) or (csd.ksmps and "(an expression)" or "(unset)")
      notes[#notes + 1] = string.format("ksmps %s → %d", was, new_ksmps)
    end
    if csd.kr then
      local old = value("kr")
      notes[#notes + 1] = string.format("kr %s → %s", old and fmt(old) or "(an expression)",
        fmt(rate / new_ksmps))
    end
  end
  if #csd.ignored > 0 then
    notes[#notes + 1] = "CsOptions " .. table.concat(csd.ignored, " ") .. " left out (the engine sets them)"
  end
  return flags, notes
end

return {
  -- rtjack, right after activating, counts the server's ports and then lists them into
  -- a buffer of that size: a port that another client registers in between overflows the
  -- buffer (measured: "double free or corruption", csound hangs in its abort handler and
  -- stalls the whole JACK graph into silence). It prints this line when it is past that
  -- point, so the agent starts the next client on the server only then.
  ready_line = "output ports not connected",

  -- CsOptions flags this engine sets (or must not meet): taken out of a module's .csd.
  -- "-b N" takes a value (attached or the next word); "x=" a value after "=".
  owned_csoptions = {
    "-o N", "-i N", "--output=", "--input=", "-n", "--nosound",
    "-+rtaudio=", "-+jack_client=", "-b N", "-B N", "--iobufsamps=", "--hardwarebufsamps=",
    "-r N", "-k N", "--sample-rate=", "--control-rate=", "--ksmps=",
  },

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
    local notes = {}
    if ctx.csd then
      local flags
      flags, notes = adapt(ctx, b)
      for _, flag in ipairs(flags) do
        argv[#argv + 1] = flag
      end
    end
    argv[#argv + 1] = ctx.main
    return argv, notes
  end,

  input_port = function(ctx, i)
    return string.format("%s:input%d", ctx.client, i)
  end,

  output_port = function(ctx, i)
    return string.format("%s:output%d", ctx.client, i)
  end,
}
