//! `Connect` and `Disconnect`: what the graph should have. Both write to the graph and read
//! nothing (see `JackGraph::connect_now`); the reconcile (the upkeep's, or the `WaitEdges`
//! that follows) makes an edge of a client too new to connect, and catches up with the rest.
//! While the JACK server is down the intention is kept for when it is back.

use super::Serve;
use crate::agent::{Agent, Jack};
use anyhow::{bail, Result};
use orchestra_protocol::wire::{Connect, Connected, Disconnect, Done};

impl Serve for Connect {
    async fn serve(self, agent: &mut Agent) -> Result<Connected> {
        match &mut agent.host()?.jack {
            Jack::Lost(lost) => {
                lost.intended.insert(self.edge);
                Ok(Connected { connected: false })
            }
            Jack::Up { graph, .. } => {
                graph.intend(self.edge.clone(), true);
                // Said when it is made (its ports exist): nobody need wait for it.
                let connected = graph.connect_now(&self.edge);
                Ok(Connected { connected })
            }
            Jack::Closed => bail!("no JACK client (say hello first)"),
        }
    }
}

impl Serve for Disconnect {
    async fn serve(self, agent: &mut Agent) -> Result<Done> {
        match &mut agent.host()?.jack {
            Jack::Lost(lost) => {
                lost.intended.remove(&self.edge);
            }
            Jack::Up { graph, .. } => {
                graph.intend(self.edge.clone(), false);
                // The edge may be between ports of no client we manage: remove it directly.
                graph.disconnect(&self.edge);
            }
            Jack::Closed => bail!("no JACK client (say hello first)"),
        }
        Ok(Done {})
    }
}
