-- System engine: the host's own sound card ports. No process runs; adc outputs are
-- system:capture_N and dac inputs are system:playback_N.
return {
  input_port = function(ctx, i)
    return "system:playback_" .. i
  end,
  output_port = function(ctx, i)
    return "system:capture_" .. i
  end,
}
