//! `orchestra status`: what plays, from a second terminal — the state file says what was
//! applied, each host's run directory (read by a short-lived agent, beside the one that looks
//! after it) what runs there now. Read only: nothing is started, stopped or connected.

use crate::deploy::Deployment;
use crate::hosts::fleet::{self, AgentSetup, ConnectOptions};
use crate::model::Host;
use crate::script::layer::LiveLayer;
use crate::state;
use anyhow::Result;
use orchestra_protocol::wire::{self, ProcessStatus};
use orchestra_protocol::ClientName;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;
use std::time::SystemTime;

/// What one host said, or why it said nothing.
type Seen = Result<Vec<ProcessStatus>, String>;

/// Print the status of the orchestra of `script` on stdout.
pub async fn status(
    script: &Path,
    state_dir: Option<&Path>,
    connect: &ConnectOptions,
) -> Result<()> {
    let dir = state::state_dir(script, state_dir);
    let name = crate::script::orchestra_name(script);
    let Some(applied) = state::load(&dir, &name)? else {
        println!(
            "`{name}` is not playing: no state for it in {}",
            dir.display()
        );
        return Ok(());
    };
    // The hosts it plays on, and those it used before (a host that went down, say).
    let mut hosts: Vec<Host> = applied
        .deployment
        .hosts
        .values()
        .map(|h| h.host.clone())
        .collect();
    for host in state::recorded_hosts(&dir) {
        if !hosts.iter().any(|h| h.name == host.name) {
            hosts.push(host);
        }
    }
    let seen = ask_hosts(&hosts, &dir, &name, connect).await?;
    let file = state::state_file(&dir, &name);
    let age = std::fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok());
    let (layer, unreadable) = LiveLayer::load_or_warn(&dir, &name);
    if let Some(warning) = unreadable {
        eprintln!("warning: {warning}");
    }
    print!("{}", report(&name, &applied.deployment, &seen, age, &layer));
    Ok(())
}

/// Each host's instances, asked in parallel; a host that does not answer is down.
async fn ask_hosts(
    hosts: &[Host],
    dir: &Path,
    name: &str,
    connect: &ConnectOptions,
) -> Result<BTreeMap<String, Seen>> {
    let connect = ConnectOptions {
        skip_unreachable: true,
        ..connect.clone()
    };
    let connected = fleet::connect(hosts, &connect).await?;
    let setup = AgentSetup {
        connect: connect.clone(),
        state_dir: dir.to_path_buf(),
        orchestra: name.to_string(),
        events: tokio::sync::mpsc::unbounded_channel().0,
        exclusive: false,
    };
    let asks = hosts.iter().map(|host| {
        let setup = &setup;
        let connected = &connected;
        async move {
            if let Some((_, why)) = connected.skipped.iter().find(|(h, _)| *h == host.name) {
                return (host.name.clone(), Err(why.clone()));
            }
            let ssh = connected.ssh.get(&host.name).cloned();
            let seen = async {
                let (session, workdir) = setup.open_agent(host, ssh.as_deref(), None).await?;
                let reply = session.ask(wire::Inspect { workdir }).await;
                session.close().await;
                Ok::<_, anyhow::Error>(reply?.processes)
            }
            .await
            .map_err(|e| format!("{e:#}"));
            (host.name.clone(), seen)
        }
    });
    let seen = futures::future::join_all(asks).await.into_iter().collect();
    for ssh in connected.ssh.values() {
        ssh.disconnect().await;
    }
    Ok(seen)
}

/// The status as a musician reads it: per host up or down and its blocks with their state
/// and pid, then the links with the state of both ends, the live layer and the last reload.
fn report(
    name: &str,
    applied: &Deployment,
    seen: &BTreeMap<String, Seen>,
    age: Option<std::time::Duration>,
    layer: &LiveLayer,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "`{name}`: last change applied {}",
        match age {
            Some(age) => format!("{} s ago", age.as_secs()),
            None => "at an unknown time".to_string(),
        }
    );
    let state_of = |host: &str, client: &ClientName| -> String {
        match seen.get(host) {
            Some(Ok(instances)) => match instances.iter().find(|i| i.client == *client) {
                Some(i) if i.alive => format!("playing (pid {})", i.pid),
                Some(i) => format!("exited (pid {} gone)", i.pid),
                None => "not running".to_string(),
            },
            _ => "unknown (host down)".to_string(),
        }
    };
    for (host, deployed) in &applied.hosts {
        match seen.get(host) {
            Some(Ok(_)) => {
                let _ = writeln!(out, "{host} ({}): up", deployed.host.address);
            }
            Some(Err(why)) => {
                let _ = writeln!(out, "{host} ({}): down ({why})", deployed.host.address);
            }
            None => {}
        }
        for process in deployed.processes.values().filter(|p| !p.is_link()) {
            let _ = writeln!(
                out,
                "  {:<16} {:<12} {}",
                process.block,
                process.module,
                state_of(host, &process.client)
            );
        }
    }
    for (host, said) in seen.iter().filter(|(h, _)| !applied.hosts.contains_key(*h)) {
        let _ = match said {
            Ok(_) => writeln!(out, "{host}: up, not used now"),
            Err(why) => writeln!(out, "{host}: down ({why}), not used now"),
        };
    }
    if !applied.links.is_empty() {
        let _ = writeln!(out, "links:");
    }
    for link in &applied.links {
        let end = |host: &str| {
            applied
                .hosts
                .get(host)
                .and_then(|h| {
                    h.processes
                        .values()
                        .find(|p| p.is_link() && p.client == link.id.client())
                })
                .map(|p| state_of(host, &p.client))
                .unwrap_or_else(|| "not applied".to_string())
        };
        // The sending end's agent measures the round trip to the receiving end.
        let round_trip = match seen.get(&link.from_host) {
            Some(Ok(instances)) => instances
                .iter()
                .find(|i| i.client == link.id.client() && i.alive)
                .and_then(|i| i.rtt_us)
                .map(|us| format!(", round trip {:.2} ms", us as f64 / 1000.0))
                .unwrap_or_default(),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "  {} → {} ({}, udp {}, {}): sender {}, receiver {}{round_trip}",
            link.from_host,
            link.to_host,
            link.id,
            link.server_port,
            link.fill(),
            end(&link.from_host),
            end(&link.to_host)
        );
    }
    if layer.is_empty() {
        let _ = writeln!(out, "live layer: empty");
    } else {
        let _ = writeln!(out, "live layer: {}", layer.size());
        for op in &layer.ops {
            let _ = writeln!(out, "  {op}");
        }
    }
    out
}
