//! `Inspect`: what a run directory says plays there, read only (for `orchestra status`,
//! beside the agent that looks after it): no JACK client, nothing started or stopped.

use super::Serve;
use crate::agent::Agent;
use crate::supervisor;
use anyhow::Result;
use orchestra_protocol::wire::{Inspect, Inspected};
use std::path::Path;

impl Serve for Inspect {
    async fn serve(self, _: &mut Agent) -> Result<Inspected> {
        Ok(Inspected {
            processes: supervisor::inspect(Path::new(&self.workdir)),
        })
    }
}
