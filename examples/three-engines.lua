-- One chain through three engines: a Csound sine, a SuperCollider low-pass, a Pure Data
-- low-pass, into the DAC. Each block is its own program (csound, scsynth, pd), wired by JACK.
--   orchestra run examples/three-engines.lua --record three.wav --seconds 5
local osc  = block "osc"  { module = "sine", freq = 440 }       -- Csound
local warm = block "warm" { module = "sc_lp", cutoff = 3000 }   -- SuperCollider
local soft = block "soft" { module = "pd_lp", cutoff = 4000 }   -- Pure Data
local out  = block "out"  { module = "dac" }

osc >> warm >> soft >> out
