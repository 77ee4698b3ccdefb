//! `Crossfade`: swap edges through a fade (see `fader`). While the JACK server is up it goes
//! on beside the requests that come meanwhile and is answered when it ends ([`begin`]); while
//! it is down, the swap is kept for when it is back and answered at once.

use super::Serve;
use crate::agent::{Agent, Jack};
use crate::fader;
use anyhow::{bail, Result};
use orchestra_protocol::wire::{Crossfade, Faded};

impl Serve for Crossfade {
    async fn serve(self, agent: &mut Agent) -> Result<Faded> {
        let Some(lost) = agent.host()?.lost() else {
            bail!("no JACK client (say hello first)");
        };
        lost.intended.extend(self.fade_in);
        for edge in &self.fade_out {
            lost.intended.remove(edge);
        }
        Ok(Faded {
            faded: false,
            why: Some("the JACK server is down".into()),
        })
    }
}

/// Start the crossfade of request `id` beside other requests, when the JACK server is up;
/// `Err` gives the request back, to be served at once.
pub fn begin(agent: &mut Agent, id: u64, request: Crossfade) -> Result<(), Crossfade> {
    let Some(host) = agent.host_if_any() else {
        return Err(request);
    };
    let Jack::Up { graph, .. } = &host.jack else {
        return Err(request);
    };
    let fading = fader::Crossfading::new(graph, request.fade_in, request.fade_out, request.ms);
    host.crossfades.push((id, fading));
    Ok(())
}

/// How a crossfade that ended is answered.
pub fn ended(outcome: Result<()>) -> Faded {
    match outcome {
        Ok(()) => Faded {
            faded: true,
            why: None,
        },
        Err(why) => Faded {
            faded: false,
            why: Some(format!("{why:#}")),
        },
    }
}
