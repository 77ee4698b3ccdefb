//! `Start`: write an instance's files and start it, refusing what would only fail later in
//! another program's words (a JACK name taken, a full server, an OSC port held); an engine
//! that says when it is ready is waited for, then told its first messages and what the block
//! was last told, before it is wired in.

use super::Serve;
use crate::agent::{send_osc, Agent};
use crate::{jackd, startup, supervisor};
use anyhow::{bail, Result};
use orchestra_protocol::wire::{Event, Start, Started};

impl Serve for Start {
    async fn serve(self, agent: &mut Agent) -> Result<Started> {
        let Start { process, replay } = self;
        let host = agent.host()?;
        // The same instance stopped a moment ago (moved away and back): its old program still
        // holds the JACK name until it ends.
        host.supervisor.wait_ended(Some(&process.client));
        let ours = host.supervisor.clients().any(|c| *c == process.client);
        // JACK silently renames a second `NAME` to `NAME-01`: its ports would never be found.
        // Refuse instead.
        if !ours && host.graph()?.client_exists(&process.client) {
            bail!(
                "JACK client name `{}` is already taken on server `{}` by a program we did not start",
                process.client,
                jackd::server_name()
            );
        }
        host.check_room(&process)?;
        if let (Some(port), false) = (process.osc_port, ours) {
            check_osc_port_free(port, &process.block.to_string())?;
        }
        let alone = process.ready_line.is_some();
        host.wait_for_starts(alone).await;
        let pid = host.supervisor.start(&process)?;
        host.starting
            .push(startup::Starting::new(&process, pid, &host.workdir));
        if !alone {
            return Ok(Started { pid });
        }
        // An engine that says when it is ready is waited for, so the controller knows the new
        // instance plays before it takes the old one's place (make-before-break), and a start
        // that fails is an error, not an event.
        host.wait_for_starts(true).await;
        if !supervisor::process_alive(pid) {
            return Err(host.failed_start(&process));
        }
        // Ready and not yet wired in: its engine's first messages (a SuperCollider node),
        // then what the block was last told: it joins sounding as the performer left it.
        if let (Some(port), false) = (process.osc_port, process.start_osc.is_empty()) {
            send_osc(port, &process.start_osc);
        }
        if let (Some(port), false, Some(block)) =
            (process.osc_port, replay.is_empty(), process.block.block())
        {
            let values = send_osc(port, &replay);
            host.pending.push(Event::Replayed {
                block: block.clone(),
                values,
            });
        }
        Ok(Started { pid })
    }
}

/// A new instance's OSC port must be free on this host: a synth that finds it taken fails
/// to start with its own words (csound: `INIT ERROR … OSCinit`), or plays without hearing
/// its live params (pd). Said here in one line instead.
fn check_osc_port_free(port: u16, block: &str) -> Result<()> {
    match std::net::UdpSocket::bind(("0.0.0.0", port)) {
        Ok(_) => Ok(()),
        Err(e) => bail!(
            "block `{block}` cannot have OSC port {port} on this host: {e} (another program holds it; choose other ports with `network {{ osc_first_port = …, osc_last_port = … }}`)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_osc_port_is_said_in_one_line() {
        let holder = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = holder.local_addr().unwrap().port();
        let error = check_osc_port_free(port, "tone").unwrap_err().to_string();
        assert_eq!(
            error,
            format!("block `tone` cannot have OSC port {port} on this host: Address already in use (os error 98) (another program holds it; choose other ports with `network {{ osc_first_port = …, osc_last_port = … }}`)")
        );
        drop(holder);
        assert!(check_osc_port_free(port, "tone").is_ok());
    }
}
