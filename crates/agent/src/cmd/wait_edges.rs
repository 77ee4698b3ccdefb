//! `WaitEdges`: answer once every intended edge exists (or those asked for), or after the
//! timeout with those missing. Edges to clients that exited are not waited for.

use super::Serve;
use crate::agent::Agent;
use anyhow::Result;
use orchestra_protocol::wire::{EdgesWaited, WaitEdges};
use std::time::{Duration, Instant};

/// How often the graph is looked at while edges are awaited.
const POLL: Duration = Duration::from_millis(5);

impl Serve for WaitEdges {
    async fn serve(self, agent: &mut Agent) -> Result<EdgesWaited> {
        let host = agent.host()?;
        let deadline = Instant::now() + Duration::from_millis(self.timeout_ms);
        loop {
            host.sweep();
            host.reconcile();
            let (connected, mut missing) = host.split_intended()?;
            if !self.only.is_empty() {
                missing.retain(|e| self.only.contains(e));
            }
            let done = EdgesWaited {
                connected: connected.len(),
                missing,
            };
            // No server (it died and does not come back yet): nothing to wait for.
            if host.graph_if_up().is_none() {
                return Ok(done);
            }
            let awaited = done.missing.iter().any(|e| {
                !host.dead_clients.contains(&e.from.client)
                    && !host.dead_clients.contains(&e.to.client)
            });
            if !awaited || Instant::now() >= deadline {
                return Ok(done);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
