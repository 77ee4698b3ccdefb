//! The orchestra's one sample rate and period: what every JACK server, synth and link runs
//! at. Its own module because the model, the modules' engines and the agents all speak it.

use serde::{Deserialize, Serialize};

/// One sample rate and period for the whole orchestra (every JACK server and every synth).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AudioSettings {
    pub rate: u32,
    pub period: u32,
}

impl Default for AudioSettings {
    fn default() -> Self {
        AudioSettings {
            rate: 48000,
            period: 256,
        }
    }
}
