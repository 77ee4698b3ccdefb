-- A Pure Data sine into the DAC.
--   orchestra run examples/pd-sine.lua --record pd-sine.wav --seconds 5
local tone = block "tone" { module = "pd_sine", freq = 440 }
local out  = block "out"  { module = "dac" }

tone >> out
