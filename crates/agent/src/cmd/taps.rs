//! `Taps`: what this host's taps meter and stream, as a whole.

use super::Serve;
use crate::agent::{Agent, TapsWanted};
use anyhow::Result;
use orchestra_protocol::wire::{Done, Taps};

impl Serve for Taps {
    async fn serve(self, agent: &mut Agent) -> Result<Done> {
        let host = agent.host()?;
        host.taps_wanted = TapsWanted {
            meters: self.meters,
            listen: self.listen,
        };
        host.sync_taps();
        host.reconcile();
        Ok(Done {})
    }
}
