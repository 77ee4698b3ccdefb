-- Command engine: any program that is a JACK client, run as the module's manifest says.
--
-- The manifest names the program and its ports:
--   "command": ["jack_metro", "--name", "{client}", "--bpm", "{bpm}"],
--   "ports": { "outputs": ["{client}:{bpm}_bpm"] }
-- `{client}` is the instance's JACK client name (the program must register under it: the
-- agent finds the ports by name, and a replacement starts beside the old instance under a
-- new name); `{<param>}` is the block's value of that param (whole numbers without ".0").
-- Each word stays one argument: nothing goes through a shell, so a text param cannot add
-- arguments or commands.
-- The program must not connect its own ports: the agent makes every edge (and removes what
-- a program connects to the system ports by itself).

local function text(value)
  if type(value) == "number" then
    if value == math.floor(value) then
      return string.format("%d", value)
    end
    return string.format("%g", value)
  end
  return tostring(value)
end

local function fill(ctx, word, field)
  return (string.gsub(word, "{([%w_%-]+)}", function(name)
    if name == "client" then
      return ctx.client
    end
    local value = ctx.params[name]
    if value == nil then
      local known = {}
      for param in pairs(ctx.params) do
        known[#known + 1] = "{" .. param .. "}"
      end
      table.sort(known)
      table.insert(known, 1, "{client}")
      error(string.format("%s: \"%s\" names {%s}, which is not one of %s",
        ctx.manifest, field, name, table.concat(known, ", ")), 0)
    end
    return text(value)
  end))
end

local function port(ctx, kind, i)
  local names = ctx.ports and ctx.ports[kind] or {}
  if names[i] == nil then
    error(string.format(
      "%s: \"ports\" names %d %s, but the module has %d; name each one (e.g. \"{client}:%s_%d\")",
      ctx.manifest, #names, kind, ctx[kind], kind == "inputs" and "in" or "out", i), 0)
  end
  return fill(ctx, names[i], "ports")
end

return {
  command = function(ctx)
    if ctx.command == nil or #ctx.command == 0 then
      error(string.format(
        "%s: no \"command\" (the program the command engine runs, e.g. [\"jack_metro\", \"--name\", \"{client}\", \"--bpm\", \"{bpm}\"])",
        ctx.manifest), 0)
    end
    local argv = {}
    for i, word in ipairs(ctx.command) do
      argv[i] = fill(ctx, word, "command")
    end
    return argv
  end,

  input_port = function(ctx, i)
    return port(ctx, "inputs", i)
  end,

  output_port = function(ctx, i)
    return port(ctx, "outputs", i)
  end,
}
