//! `Stop`: tell an instance to stop. Its answer waits for its program to end (see `serve`):
//! the stops of one change arrive together and end together.

use super::Serve;
use crate::agent::Agent;
use anyhow::Result;
use orchestra_protocol::wire::{Done, Stop};

impl Serve for Stop {
    async fn serve(self, agent: &mut Agent) -> Result<Done> {
        agent.host()?.supervisor.begin_stop(&self.client);
        Ok(Done {})
    }
}
