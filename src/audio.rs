//! The orchestra's one sample rate and period: what every JACK server, synth and link runs
//! at. Its own module because the model, the modules' engines and the agents all speak it.

use serde::{Deserialize, Serialize};

/// One sample rate and period for the whole orchestra (every JACK server and every synth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSettings {
    pub rate: u32,
    pub period: u32,
}

impl AudioSettings {
    /// How long `n` periods last.
    pub fn periods(&self, n: u32) -> std::time::Duration {
        std::time::Duration::from_secs_f64(f64::from(n * self.period) / f64::from(self.rate.max(1)))
    }
}

impl Default for AudioSettings {
    /// 512 frames (10.7 ms): on the lab's hosts (JACK's dummy driver on a 2-vCPU VM, three
    /// servers) a period of 256 missed its deadline about 5 times a second and left gaps in
    /// every run; 512 about once in 10 s, with no gap in 30 s runs (README, *Buffers*). A
    /// host with a sound card and a quiet CPU may set `audio { period = 256 }` or less.
    fn default() -> Self {
        AudioSettings {
            rate: 48000,
            period: 512,
        }
    }
}
