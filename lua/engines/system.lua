-- System engine: the host's own sound card as JACK's "system" client.  Nothing is
-- launched (no `command`); a block of this engine only names existing ports.
-- The directions flip: a block's input i is where sound leaves the host
-- (system:playback_i), its output i is where sound enters it (system:capture_i).

return {
  input_port = function(ctx, i)
    return string.format("system:playback_%d", i)
  end,

  output_port = function(ctx, i)
    return string.format("system:capture_%d", i)
  end,
}
