-- A sine that is retuned over OSC: block "ctl" (module osc_ctl, no audio) sends
-- /freq 440, then 660, then 440... every 2 s to block "osc" (module sine_osc), at the
-- address and OSC port the orchestra gave "osc" wherever it was placed.
--   orchestra run examples/osc-control.lua --record osc.wav --seconds 8
-- Change the tone by hand through the runtime's OSC router (oscsend is in liblo-tools):
--   oscsend localhost 7770 /osc/freq f 660
--   oscsend localhost 7770 /osc/amp f 0.1
-- The router forwards /osc/freq to block "osc" as /freq (ctl will set it back at its
-- next tick; remove the ctl block to keep manual control).
local osc = block "osc" { module = "sine_osc", freq = 440 }
local out = block "out" { module = "dac" }

osc >> out

block "ctl" { module = "osc_ctl", target = "osc" }
