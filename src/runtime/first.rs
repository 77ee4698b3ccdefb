//! A run's first steps: the orchestra loaded (the last run's live layer laid over it), every
//! host dialled and its key checked before anything starts anywhere, their agents up, the
//! recording begun, the first converge, and its wiring awaited; then what plays is said.

use super::servers::Servers;
use super::teardown::RemoteRecording;
use super::RunOptions;
use crate::conductor::{Conductor, Converge, Converged};
use crate::deploy::{jack_ports, Deployment};
use crate::events::{Events, Happening};
use crate::executor;
use crate::first_run::BroughtUp;
use crate::hosts::fleet::{self, AgentSetup, Fleet};
use crate::model::Host;
use crate::osc::memory::OscMemory;
use crate::pipeline::{desire, judgement, load_with, Desired, Loaded};
use crate::script::layer::LiveLayer;
use crate::state::{self, AppliedState};
use anyhow::{anyhow, bail, Context, Result};
use orchestra_protocol::wire::{self, Event};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// What a run found before it started anything.
pub struct Start {
    /// The state directory beside the script.
    pub dir: PathBuf,
    /// The changes made over OSC in an earlier run, laid over the script again.
    pub layer: LiveLayer,
    pub loaded: Loaded,
    /// What the last run applied (its synths may still play: they are adopted).
    pub previous: Option<AppliedState>,
    /// What to say of it, once the page is served (a bad script says only its error).
    pub notices: Vec<Happening>,
}

/// Load the orchestra with the last run's live layer over it, and what the last run applied.
/// Nothing has started: an error here changes nothing.
pub fn load(options: &RunOptions, dir: &Path) -> Result<Start> {
    let name = crate::script::orchestra_name(&options.source.script);
    let (layer, unreadable) = LiveLayer::load_or_warn(dir, &name);
    let mut notices: Vec<Happening> = unreadable
        .map(|text| Happening::Warning { text })
        .into_iter()
        .collect();
    if !layer.is_empty() {
        notices.push(Happening::LayerRestored { size: layer.size() });
    }
    let mut loaded = load_with(&options.source, &layer).map_err(|e| {
        if layer.is_empty() {
            e
        } else {
            anyhow!(
                "{e:#} (with the live layer of the last run laid over the script: `orchestra plan` lists it; delete {} to start from the script alone)",
                dir.join(format!("{name}.live.json")).display()
            )
        }
    })?;
    loaded.round_trips = state::load_round_trips(dir, &loaded.resolved.name);
    let previous = state::load(dir, &loaded.resolved.name)?;
    Ok(Start {
        dir: dir.to_path_buf(),
        layer,
        loaded,
        previous,
        notices,
    })
}

/// What plays after the first converge, for the play loop.
pub struct Playing {
    pub conductor: Conductor<Fleet>,
    pub layer: LiveLayer,
    pub loaded: Loaded,
    /// What the first converge desired (its warnings were said).
    pub desired: Desired,
    /// Hosts left out as unreachable (`--skip-unreachable`).
    pub left_out: BTreeSet<String>,
    /// What the router tells each block, replayed to its new instances.
    pub osc_memory: OscMemory,
    /// The recording on a remote DAC host, fetched at the end.
    pub recording: Option<RemoteRecording>,
    /// How long after the run's start the recording began.
    pub record_offset: Option<Duration>,
    /// The agents' events, for the play loop.
    pub agent_events: mpsc::UnboundedReceiver<(String, Event)>,
}

/// Dial every host (its key checked) and bring its agent up, record, converge to the script
/// and wait for its wiring. When nothing that started can sound, what did start is stopped
/// and the run ends with why.
pub async fn bring_up(
    options: &RunOptions,
    start: Start,
    events: &Events,
    servers: &Servers,
    started: Instant,
) -> Result<Playing> {
    let Start {
        dir,
        layer,
        mut loaded,
        previous,
        notices,
    } = start;
    for notice in notices {
        events.emit(notice);
    }
    let current = previous
        .as_ref()
        .map(|p| p.deployment.clone())
        .unwrap_or_default();
    // Every host is dialled and its key checked before anything starts anywhere.
    let mut all_hosts = loaded.resolved.hosts.clone();
    for h in current.hosts.values() {
        if !all_hosts.iter().any(|x| x.name == h.host.name) {
            all_hosts.push(h.host.clone());
        }
    }
    let connected = fleet::connect(&all_hosts, &options.connect).await?;
    let left_out: BTreeSet<String> = connected.skipped.iter().map(|(h, _)| h.clone()).collect();
    for (host, why) in &connected.skipped {
        events.emit(Happening::HostLeftOut {
            host: host.clone(),
            why: why.clone(),
        });
    }
    if !left_out.is_empty() {
        if loaded
            .resolved
            .hosts
            .iter()
            .all(|h| left_out.contains(&h.name))
        {
            bail!("no host answered");
        }
        all_hosts.retain(|h| !left_out.contains(&h.name));
    }
    let desire_now = |loaded: &Loaded| {
        desire(
            loaded,
            previous.as_ref().map(|p| &p.placement),
            &current,
            &options.source.placement,
            &left_out,
        )
    };
    let mut desired = desire_now(&loaded)?;
    for text in judgement(&loaded, &desired, options.source.strict)? {
        events.emit(Happening::Warning { text });
    }
    let (event_tx, from_agents) = mpsc::unbounded_channel();
    let agent_events = servers.agent_events(from_agents);
    // Hosts that play now or played before (their leftovers are stopped by the plan).
    let involved: Vec<Host> = all_hosts
        .iter()
        .filter(|h| {
            desired.deployment.hosts.contains_key(&h.name) || current.hosts.contains_key(&h.name)
        })
        .cloned()
        .collect();
    state::record_hosts(&dir, &involved)?;
    let mut fleet = Fleet::new(AgentSetup {
        connect: options.connect.clone(),
        state_dir: dir.clone(),
        orchestra: loaded.resolved.name.clone(),
        events: event_tx,
        exclusive: options.exclusive,
    });
    // What the router tells each block is replayed to its new instances (moved, replaced,
    // restarted).
    let osc_memory = OscMemory::default();
    if servers.has_osc() {
        fleet.replay_from(osc_memory.clone());
    }
    let remote = !connected.ssh.is_empty();
    fleet
        .bring_up(
            &involved,
            connected,
            &current,
            desired.deployment.audio,
            jack_ports::room(&desired.deployment),
        )
        .await?;
    // The hosts now say which UDP ports are bound there: a new OSC port that another program
    // holds is chosen again (the placement stays; bring-up did not depend on the ports).
    loaded.ports_in_use = executor::Hosts::ports_in_use(&fleet);
    if takes_a_port_in_use(&desired.deployment, &current, &loaded.ports_in_use) {
        desired = desire_now(&loaded)?;
    }
    say_hellos(
        &fleet,
        &all_hosts,
        options.record.is_none() && !remote,
        events,
    );
    let (recording, record_offset) =
        record(options, &fleet, &loaded, &desired, events, started).await?;

    let mut conductor = Conductor::new(
        fleet,
        previous.unwrap_or_default(),
        dir.clone(),
        events.clone(),
    );
    let next = AppliedState {
        deployment: desired.deployment.clone(),
        placement: desired.placement.clone(),
    };
    let converged = conductor.converge(next, Converge::First, started).await;
    let failures = match &converged {
        Converged::Applied { failures, .. } | Converged::RolledBack { failures } => {
            failures.as_slice()
        }
        Converged::Unchanged => &[],
    };
    let brought_up = BroughtUp::judge(&desired.deployment, failures);
    wait_for_edges(conductor.hosts(), &desired, started, &brought_up, events).await;
    let fleet = conductor.hosts();
    if fleet.has_remote() || fleet.sessions.len() > 1 {
        // What started: a synth that failed is not listed as playing on its host.
        let lines = summary(&conductor.applied().deployment, fleet);
        events.emit(Happening::Summary { lines });
    }
    if !brought_up.can_sound {
        // Nothing would ever be heard: stop what did start rather than play silence.
        super::teardown::teardown(conductor, None, events).await?;
        bail!(
            "nothing can sound: {}; stopped what had started. Fix the failures above and run again",
            if brought_up.failed_synths() == brought_up.synths {
                format!("none of the {} synth(s) started", brought_up.synths)
            } else {
                "no sound source that started reaches a DAC".to_string()
            }
        );
    }
    Ok(Playing {
        conductor,
        layer,
        loaded,
        desired,
        left_out,
        osc_memory,
        recording,
        record_offset,
        agent_events,
    })
}

/// What the agents said at their hello that the musician should know: instances adopted
/// from an earlier run, and a silent JACK server started where nothing records it.
fn say_hellos(fleet: &Fleet, hosts: &[Host], silence_unheard: bool, events: &Events) {
    for (host, hello) in &fleet.hellos {
        if !hello.adopted.is_empty() {
            events.emit(Happening::Adopted {
                host: host.clone(),
                instances: hello.adopted.len(),
            });
        }
        let dummy = hosts
            .iter()
            .any(|h| h.name == *host && h.jack.driver.as_deref().unwrap_or("dummy") == "dummy");
        if hello.jack_started && dummy && silence_unheard {
            events.emit(Happening::SilentJack { host: host.clone() });
        }
    }
}

/// With `--record`, start recording what reaches the DAC (on a remote host beside its work,
/// fetched at the end): the remote recording, and how long after the start it began.
async fn record(
    options: &RunOptions,
    fleet: &Fleet,
    loaded: &Loaded,
    desired: &Desired,
    events: &Events,
    started: Instant,
) -> Result<(Option<RemoteRecording>, Option<Duration>)> {
    let Some(path) = &options.record else {
        return Ok((None, None));
    };
    let host = record_host(loaded, desired, events)?;
    let local = std::path::absolute(path)?;
    let remote = fleet.is_remote(&host);
    let asked = if remote {
        "record.wav".to_string()
    } else {
        local.display().to_string()
    };
    let recording_at = fleet
        .get(&host)?
        .ask(wire::Record {
            path: asked,
            channels: 2,
        })
        .await
        .context("cannot record")?;
    let offset = started.elapsed();
    events.emit(Happening::Recording {
        host: host.clone(),
        path: local.display().to_string(),
    });
    let recording = remote.then_some((host, recording_at.path, local));
    Ok((recording, Some(offset)))
}

/// Per host: its synths, its network links and how long each step took.
fn summary(deployment: &Deployment, fleet: &Fleet) -> Vec<String> {
    let timings = fleet.timings();
    let mut out = Vec::new();
    for (name, host) in &deployment.hosts {
        let synths: Vec<&str> = host
            .processes
            .values()
            .filter_map(|p| p.block.block().map(|b| b.as_str()))
            .collect();
        let links: Vec<String> = deployment
            .links
            .iter()
            .filter_map(|l| {
                if l.from_host == *name {
                    Some(format!("→{} (udp {})", l.to_host, l.client_port))
                } else if l.to_host == *name {
                    Some(format!("←{} (udp {})", l.from_host, l.server_port))
                } else {
                    None
                }
            })
            .collect();
        out.push(format!(
            "  {name:<12} {:<24} synths: {:<28} links: {}",
            host.host.address,
            if synths.is_empty() {
                "-".to_string()
            } else {
                synths.join(", ")
            },
            if links.is_empty() {
                "-".to_string()
            } else {
                links.join(", ")
            }
        ));
        if let Some(t) = timings.get(name) {
            out.push(format!("  {:<12} {}", "", t.line()));
        }
    }
    out
}

/// The host whose DAC `--record` listens to: where a `dac` block sits (else the first host).
fn record_host(loaded: &Loaded, desired: &Desired, events: &Events) -> Result<String> {
    let dac_hosts: std::collections::BTreeSet<&str> = loaded
        .resolved
        .blocks
        .values()
        .filter(|b| b.module.name() == "dac")
        .filter_map(|b| desired.placement.host_of(&b.name))
        .collect();
    if dac_hosts.len() > 1 {
        events.emit(Happening::Warning {
            text: format!(
                "dac blocks on several hosts; recording the first ({})",
                dac_hosts.iter().next().expect("more than one")
            ),
        });
    }
    dac_hosts
        .into_iter()
        .next()
        .map(str::to_string)
        .or_else(|| desired.deployment.hosts.keys().next().cloned())
        .ok_or_else(|| anyhow!("nothing to record: the orchestra is empty"))
}

/// Wait until each host's edges are made (those to synths that failed to start are never
/// waited for), then say what plays: all of it, or how many synths of how many started and
/// which failed and why.
async fn wait_for_edges(
    fleet: &Fleet,
    desired: &Desired,
    started: Instant,
    up: &BroughtUp,
    events: &Events,
) {
    // Every host at once (one after the other, 20 hosts took a second more).
    let asked = fleet.sessions.iter().filter_map(|(host, session)| {
        let edges = desired
            .deployment
            .hosts
            .get(host)
            .map(|h| up.awaitable(host, &h.edges))
            .unwrap_or_default();
        // `only` empty means every edge: with nothing left to await, do not ask.
        if edges.is_empty() && !up.failed.is_empty() {
            return None;
        }
        let request = wire::WaitEdges {
            timeout_ms: 10_000,
            only: if up.failed.is_empty() {
                Vec::new()
            } else {
                edges
            },
        };
        Some(async move {
            let waiting = Instant::now();
            let reply = session.ask(request).await;
            (host, waiting.elapsed(), reply)
        })
    });
    let mut missing = Vec::new();
    for (host, took, reply) in futures::future::join_all(asked).await {
        fleet.time(host, "wiring", took);
        match reply {
            Ok(waited) => missing.extend(waited.missing.into_iter().map(|e| (host.clone(), e))),
            Err(e) => events.emit(Happening::Error {
                text: format!("{e:#}"),
            }),
        }
    }
    fleet.finish_progress();
    let d = &desired.deployment;
    let synths = d
        .hosts
        .values()
        .flat_map(|h| h.processes.values())
        .filter(|p| !p.is_link())
        .count();
    if up.failed.is_empty() {
        events.emit(Happening::Playing {
            synths,
            connections: d.hosts.values().map(|h| h.edges.len()).sum(),
            links: d.links.len(),
            hosts: d.hosts.len(),
            ready_ms: started.elapsed().as_millis(),
        });
    } else {
        events.emit(Happening::PartlyStarted {
            started: synths - up.failed_synths(),
            synths,
            hosts: d.hosts.len(),
            can_sound: up.can_sound,
            failed: up.failed.clone(),
        });
    }
    for (host, edge) in missing {
        events.emit(Happening::NotConnected { host, edge });
    }
}

/// Some new OSC endpoint of `desired` (not one that plays in `current`) is on a port its host
/// says is bound.
fn takes_a_port_in_use(
    desired: &Deployment,
    current: &Deployment,
    in_use: &crate::deploy::PortsInUse,
) -> bool {
    desired.osc.iter().any(|(block, endpoint)| {
        current.osc.get(block) != Some(endpoint)
            && in_use
                .get(&endpoint.host)
                .is_some_and(|ports| ports.contains(&endpoint.port))
    })
}
