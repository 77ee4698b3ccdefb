//! How many ports each host's JACK server is started with room for (jackd's `--port-max`).
//!
//! JACK2 reserves every port's buffer up front and locks it in memory: its default of 2048
//! ports is about 107 MB per server, and each client that joins maps and locks all of it.
//! Sized to the orchestra instead, a server starts in about two thirds of the CPU time and
//! its clients in half (measured on the 20-host lab: 10 clients a server). The room is
//! fixed for the server's life, so it is generous: four times the busiest host's ports in
//! the plan (a failover or a live edit may gather blocks on one host), plus the sound card's
//! and the agent's own.

use super::{Deployment, HostDeployment};

/// The least room a server is started with: more than a small host ever needs.
pub const FEWEST: u32 = 256;
/// JACK2's own ceiling: jackd refuses more.
pub const MOST: u32 = 4096;
/// Headroom over the busiest host of the plan the server starts for.
const GROWTH: usize = 4;
/// The sound card's ports (dozens on an audio interface) and the agent's recorder.
const SYSTEM: usize = 64;

/// The JACK ports the orchestra's own programs register on one host.
pub fn orchestra_ports(host: &HostDeployment) -> usize {
    host.processes
        .values()
        .map(|p| p.inputs.len() + p.outputs.len())
        .sum()
}

/// Room for the servers started for `deployment` (the same on every host: blocks move).
pub fn room(deployment: &Deployment) -> u32 {
    let busiest = deployment
        .hosts
        .values()
        .map(orchestra_ports)
        .max()
        .unwrap_or(0);
    let wanted = (busiest * GROWTH + SYSTEM).next_power_of_two();
    u32::try_from(wanted).unwrap_or(MOST).clamp(FEWEST, MOST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::ProcessSpec;
    use crate::model::Host;

    fn host_with(ports_per_block: &[usize]) -> HostDeployment {
        let processes = ports_per_block
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let block = format!("b{i}");
                let spec = ProcessSpec {
                    inputs: (0..n / 2)
                        .map(|k| format!("{block}:in{k}").as_str().into())
                        .collect(),
                    outputs: (0..n - n / 2)
                        .map(|k| format!("{block}:out{k}").as_str().into())
                        .collect(),
                    ..ProcessSpec::fixture(&block, "m", &block)
                };
                (block, spec)
            })
            .collect();
        HostDeployment {
            host: Host::localhost(),
            processes,
            edges: Default::default(),
        }
    }

    fn deployment(hosts: Vec<HostDeployment>) -> Deployment {
        Deployment {
            hosts: hosts
                .into_iter()
                .enumerate()
                .map(|(i, h)| (format!("h{i}"), h))
                .collect(),
            ..Deployment::default()
        }
    }

    #[test]
    fn a_small_orchestra_gets_the_fewest_and_a_big_host_sizes_every_server() {
        assert_eq!(room(&Deployment::default()), FEWEST);
        // 10 one-port metros and a 2-channel link end (4 ports): 14 × 4 + 64 = 120.
        let lab = host_with(&[1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 4]);
        assert_eq!(orchestra_ports(&lab), 14);
        assert_eq!(room(&deployment(vec![lab.clone()])), 256);
        // 60 stereo effects (4 ports each) on one host: 240 × 4 + 64 = 1024.
        let busy = host_with(&[4; 60]);
        assert_eq!(room(&deployment(vec![lab, busy])), 1024);
        assert_eq!(room(&deployment(vec![host_with(&[8; 600])])), MOST);
    }
}
