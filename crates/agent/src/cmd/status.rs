//! `Status`: what runs here, which intended edges exist and which do not, the xruns and link
//! runs since the hello, and the UDP ports bound now.

use super::Serve;
use crate::agent::Agent;
use crate::udp_ports;
use anyhow::Result;
use orchestra_protocol::wire::{Status, StatusReply};

impl Serve for Status {
    async fn serve(self, agent: &mut Agent) -> Result<StatusReply> {
        let host = agent.host()?;
        let processes = host.supervisor.status();
        let (connected, missing) = host.split_intended()?;
        host.count_xruns();
        Ok(StatusReply {
            processes,
            connected,
            missing,
            xruns: host.xruns.total(),
            link_runs: host.link_runs.total(),
            udp_in_use: udp_ports::in_use(),
        })
    }
}
