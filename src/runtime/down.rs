//! `orchestra down` and `orchestra trust`: the hosts' run directories emptied of what an
//! earlier run left, without the state file if need be; the hosts' SSH keys accepted.

use crate::hosts::fleet::{self, AgentSetup, ConnectOptions};
use crate::model::Host;
use crate::state;
use anyhow::{bail, Result};
use orchestra_protocol::wire;
use std::path::Path;
use tokio::sync::mpsc;

/// `orchestra down`: stop what a previous run left playing on every host it may have used.
/// What plays is what the hosts' run directories say (instance and pid files), so the state
/// file is only needed to find the hosts; without it (deleted, unreadable) the host records
/// beside it and the local work dirs say where to look.
pub async fn down(script: &Path, state_dir: Option<&Path>, connect: &ConnectOptions) -> Result<()> {
    let dir = state::state_dir(script, state_dir);
    let name = crate::script::orchestra_name(script);
    let hosts = hosts_to_stop(&dir, &name);
    if hosts.is_empty() {
        eprintln!(
            "nothing to stop: no state for `{name}` in {} and no host's run directory there",
            dir.display()
        );
        return Ok(());
    }
    let connected = fleet::connect(&hosts, connect).await?;
    let setup = AgentSetup {
        connect: connect.clone(),
        state_dir: dir.clone(),
        orchestra: name.clone(),
        events: mpsc::unbounded_channel().0,
        exclusive: false,
    };
    let stops = hosts.iter().map(|host| {
        let ssh = connected.ssh.get(&host.name).cloned();
        let setup = &setup;
        async move {
            let (session, workdir) = setup.open_agent(host, ssh.as_deref(), None).await?;
            let reply = session.ask(wire::Down { workdir }).await;
            session.close().await;
            reply
        }
    });
    let replies = futures::future::join_all(stops).await;
    for ssh in connected.ssh.values() {
        ssh.disconnect().await;
    }
    let (mut synths, mut link_ends, mut failed) = (0, 0, Vec::new());
    for (host, reply) in hosts.iter().zip(replies) {
        match reply {
            Ok(r) => {
                eprintln!(
                    "  {}: stopped {} synth(s), {} link end(s), jackd {}",
                    host.name,
                    r.synths,
                    r.links,
                    if r.jackd { "yes" } else { "no" }
                );
                synths += r.synths;
                link_ends += r.links;
            }
            Err(e) => failed.push(format!("{}: {e:#}", host.name)),
        }
    }
    if !failed.is_empty() {
        bail!(
            "cannot stop everything (the state is kept in {}): {}",
            dir.display(),
            failed.join("; ")
        );
    }
    eprintln!(
        "stopped {synths} synth(s) and {} network link(s)",
        link_ends.div_ceil(2)
    );
    state::clear(&dir, &name)
}

/// Where `down` looks: the hosts of the state file (when it can be read) and the hosts recorded
/// or worked on under the state dir. (Not the script's: evaluating it is not needed to stop
/// what it started, and must not stand in the way of stopping it.)
fn hosts_to_stop(dir: &Path, name: &str) -> Vec<Host> {
    let mut hosts: Vec<Host> = Vec::new();
    let mut add = |host: Host| {
        if !hosts.iter().any(|h| h.name == host.name) {
            hosts.push(host);
        }
    };
    match state::load(dir, name) {
        Ok(Some(applied)) => applied
            .deployment
            .hosts
            .into_values()
            .for_each(|h| add(h.host)),
        Ok(None) => {}
        Err(e) => eprintln!(
            "warning: {e:#}; looking for what plays in the hosts' run directories instead"
        ),
    }
    state::recorded_hosts(dir).into_iter().for_each(&mut add);
    hosts
}

/// `orchestra trust`: show each remote host's key fingerprint and record it in known_hosts.
pub async fn trust(hosts_file: &Path, connect: &ConnectOptions) -> Result<()> {
    let mut warnings = Vec::new();
    let (hosts, _) = crate::script::load_hosts(hosts_file, &mut warnings)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let probes = futures::future::join_all(
        hosts
            .iter()
            .map(|h| crate::hosts::ssh::probe_host_key(h, connect.timeout)),
    )
    .await;
    let mut keys = Vec::new();
    let mut failed = 0;
    for (host, probe) in hosts.iter().zip(probes) {
        match probe {
            Ok(key) => {
                eprintln!("{:<12} {:<22} {}", host.name, host.address, key.fingerprint);
                keys.push(key);
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed += 1;
            }
        }
    }
    let added = crate::hosts::ssh::trust(&connect.known_hosts, &keys)?;
    eprintln!(
        "recorded {added} new key(s) in {} ({} already there)",
        connect.known_hosts.display(),
        keys.len() - added
    );
    if failed > 0 {
        bail!("{failed} host(s) did not answer");
    }
    Ok(())
}
