-- A 440 Hz sine through a lowpass into the DAC.
--   orchestra run examples/sine-lp.lua --record sine-lp.wav --seconds 5
local osc  = block "osc"  { module = "sine", freq = 440 }
local filt = block "filt" { module = "lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }

osc >> filt >> out
