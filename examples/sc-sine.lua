-- A SuperCollider sine into the DAC.
--   orchestra run examples/sc-sine.lua --record sc-sine.wav --seconds 5
local tone = block "tone" { module = "sc_sine", freq = 440 }
local out  = block "out"  { module = "dac" }

tone >> out
