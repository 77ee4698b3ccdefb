//! `Tell`: send a running instance of ours its live params' new values over OSC (the same
//! process plays on), and keep them in its record, so a restart with its JACK server (or a
//! later agent's) is told them again.

use super::Serve;
use crate::agent::{send_osc, Agent};
use anyhow::{bail, Result};
use orchestra_protocol::wire::{Tell, Told};

impl Serve for Tell {
    async fn serve(self, agent: &mut Agent) -> Result<Told> {
        let Tell { client, port, live } = self;
        let host = agent.host()?;
        // Only to an instance this agent looks after, which is there to hear it.
        if !host.supervisor.clients().any(|c| *c == client) {
            bail!("no instance `{client}` runs here to tell");
        }
        host.supervisor.told(&client, &live)?;
        let packets: Vec<Vec<u8>> = live.into_values().map(|p| p.osc).collect();
        let sent = send_osc(port, &packets);
        if sent < packets.len() {
            bail!(
                "`{client}` was sent {sent} of {} OSC messages on port {port}",
                packets.len()
            );
        }
        Ok(Told { sent })
    }
}
