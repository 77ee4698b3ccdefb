-- A ChucK sine into the DAC.
--   orchestra run examples/chuck-sine.lua --record chuck-sine.wav --seconds 5
-- With Debian's chuck 1.4.2.0 the run stops before anything starts, saying why (README
-- "ChucK modules").
local tone = block "tone" { module = "ck_sine", freq = 440 }
local out  = block "out"  { module = "dac" }

tone >> out
