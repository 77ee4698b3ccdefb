-- The report's example: an FM voice through a lowpass to the DAC, and the sound input
-- through its own lowpass to the DAC as well.
local fm   = block "fm"   { module = "fm", freq = 220 }
local lp   = block "lp"   { module = "lp", cutoff = 1000 }
local adc  = block "adc"  { module = "adc" }
local lp4  = block "lp4"  { module = "lp", cutoff = 1000 }
local dac  = block "dac"  { module = "dac" }

fm >> lp
connect(lp:out(1), dac:input(1))
adc:out(1) >> lp4:input(1)
lp4:out(1) >> dac:input(2)
