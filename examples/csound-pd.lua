-- A mixed orchestra: a Csound sine through a Pure Data low-pass into the DAC.
--   orchestra run examples/csound-pd.lua --record csound-pd.wav --seconds 5
local osc  = block "osc"  { module = "sine", freq = 440 }
local filt = block "filt" { module = "pd_lp", cutoff = 2000 }
local out  = block "out"  { module = "dac" }

osc >> filt >> out
