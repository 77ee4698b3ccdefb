//! Plan: the ordered actions that turn what runs into what is desired, make-before-break:
//! start new processes → connect new edges → disconnect old edges → stop old processes; the
//! undo of a change's making half; the repair plan from what the agents observe to what was
//! applied; and the plan as a musician reads it.

use crate::deploy::links::Link;
use crate::deploy::{Deployment, Edge, LiveParam, ProcessSpec};
use orchestra_protocol::{ClientName, LinkId, Part, PortRef};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Start {
        host: String,
        process: Box<ProcessSpec>,
        /// The instance this one replaces: (host, client), on this host or (a move) another.
        replaces: Option<(String, ClientName)>,
    },
    Connect {
        host: String,
        edge: Edge,
    },
    Disconnect {
        host: String,
        edge: Edge,
    },
    Stop {
        host: String,
        block: Part,
        client: ClientName,
        /// True when a new instance took over (replace or move): not a removal of the block.
        replaced: bool,
    },
    /// Live params sent to the running instance at its OSC port: the same process plays on.
    Set {
        host: String,
        block: Part,
        client: ClientName,
        port: u16,
        /// The params that change, at their new values.
        to: BTreeMap<String, LiveParam>,
        /// The same params at the values they had: what the undo sends.
        from: BTreeMap<String, LiveParam>,
    },
}

impl Action {
    /// The action that takes this one back, where one exists: a started instance is stopped,
    /// a connected edge disconnected and the other way round. A stop has none (the instance
    /// is gone), which is why a make-before-break change stops nothing before it commits.
    pub fn undo(&self) -> Option<Action> {
        match self {
            Action::Start { host, process, .. } => Some(Action::Stop {
                host: host.clone(),
                block: process.block.clone(),
                client: process.client.clone(),
                replaced: true,
            }),
            Action::Connect { host, edge } => Some(Action::Disconnect {
                host: host.clone(),
                edge: edge.clone(),
            }),
            Action::Disconnect { host, edge } => Some(Action::Connect {
                host: host.clone(),
                edge: edge.clone(),
            }),
            Action::Stop { .. } => None,
            Action::Set {
                host,
                block,
                client,
                port,
                to,
                from,
            } => Some(Action::Set {
                host: host.clone(),
                block: block.clone(),
                client: client.clone(),
                port: *port,
                to: from.clone(),
                from: to.clone(),
            }),
        }
    }

    pub fn host(&self) -> &str {
        match self {
            Action::Start { host, .. }
            | Action::Connect { host, .. }
            | Action::Disconnect { host, .. }
            | Action::Stop { host, .. }
            | Action::Set { host, .. } => host,
        }
    }

    /// One reviewable line: `+ start`, `~ replace`, `~ move`, `- stop`, `+ connect`, `- disconnect`.
    pub fn line(&self) -> String {
        match self {
            Action::Start {
                host,
                process,
                replaces: None,
            } => {
                format!("+ start {} ({}) on {host}", process.block, process.module)
            }
            Action::Start {
                host,
                process,
                replaces: Some((old_host, _)),
            } if old_host == host => {
                format!("~ replace {} ({}) on {host}", process.block, process.module)
            }
            Action::Start {
                host,
                process,
                replaces: Some((old_host, _)),
            } => {
                format!(
                    "~ move {} ({}) from {old_host} to {host}",
                    process.block, process.module
                )
            }
            Action::Connect { host, edge } => {
                format!("+ connect {} → {} on {host}", edge.from, edge.to)
            }
            Action::Disconnect { host, edge } => {
                format!("- disconnect {} → {} on {host}", edge.from, edge.to)
            }
            Action::Stop {
                host,
                block,
                client,
                replaced: false,
            } => {
                format!("- stop {block} ({client}) on {host}")
            }
            Action::Stop {
                host,
                block,
                client,
                replaced: true,
            } => {
                format!("- stop old {block} ({client}) on {host}")
            }
            Action::Set {
                host, block, to, ..
            } => {
                format!("= set {} on {host} (live)", set_text(block, to))
            }
        }
    }

    /// The action as JSON for `plan --format json` (file contents left out).
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Action::Start {
                host,
                process,
                replaces,
            } => json!({
                "op": match replaces { None => "start", Some((h, _)) if h == host => "replace", Some(_) => "move" },
                "host": host, "block": process.block, "module": process.module,
                "client": process.client, "spec_hash": process.spec_hash,
                "command": process.command,
                "replaces": replaces.as_ref().map(|(h, c)| json!({"host": h, "client": c})),
            }),
            Action::Connect { host, edge } => {
                json!({"op": "connect", "host": host, "from": edge.from, "to": edge.to})
            }
            Action::Disconnect { host, edge } => {
                json!({"op": "disconnect", "host": host, "from": edge.from, "to": edge.to})
            }
            Action::Stop {
                host,
                block,
                client,
                replaced,
            } => json!({
                "op": "stop", "host": host, "block": block, "client": client, "replaced": replaced,
            }),
            Action::Set {
                host,
                block,
                client,
                to,
                ..
            } => json!({
                "op": "set", "host": host, "block": block, "client": client,
                "params": to.iter().map(|(k, v)| (k.clone(), v.value.clone())).collect::<BTreeMap<_, _>>(),
            }),
        }
    }
}

/// `tone.freq = 660, tone.amp = 0.2`.
pub fn set_text(block: &Part, params: &BTreeMap<String, LiveParam>) -> String {
    params
        .iter()
        .map(|(name, p)| format!("{block}.{name} = {}", p.value))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The edges a change swaps on one host through a crossfade (see `agent::fader`) instead of
/// connecting and cutting them: over `ms`, those from a new instance (or link) into a port
/// that stays fade in, and those from an instance that goes into such a port fade out.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Crossfade {
    pub host: String,
    pub fade_in: Vec<Edge>,
    pub fade_out: Vec<Edge>,
    pub ms: u32,
}

impl Crossfade {
    /// What it does to the edges, as actions: each of `fade_in` connected, then each of
    /// `fade_out` disconnected (what a host without a fader does instead, and what a failed
    /// crossfade leaves for the repair).
    pub fn actions(&self) -> Vec<Action> {
        let host = &self.host;
        let comes = self.fade_in.iter().map(|edge| Action::Connect {
            host: host.clone(),
            edge: edge.clone(),
        });
        let goes = self.fade_out.iter().map(|edge| Action::Disconnect {
            host: host.clone(),
            edge: edge.clone(),
        });
        comes.chain(goes).collect()
    }
}

/// Ordered actions; empty when what runs is already what is desired.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    pub actions: Vec<Action>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// For a teardown: without the disconnects of edges that a stop in the plan takes away
    /// anyway (a stopped client's edges go with it). Each disconnect is a request to the host;
    /// on 20 hosts of 200 synths they were most of the teardown.
    pub fn without_edges_of_stopped(self) -> Plan {
        let stopped: BTreeSet<(&str, &ClientName)> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Stop { host, client, .. } => Some((host.as_str(), client)),
                _ => None,
            })
            .collect();
        let goes = |host: &str, port: &PortRef| stopped.contains(&(host, &port.client));
        let kept = self
            .actions
            .iter()
            .map(|a| match a {
                Action::Disconnect { host, edge } => {
                    !goes(host, &edge.from) && !goes(host, &edge.to)
                }
                _ => true,
            })
            .collect::<Vec<bool>>();
        let mut kept = kept.into_iter();
        let mut actions = self.actions;
        actions.retain(|_| kept.next().unwrap_or(true));
        Plan { actions }
    }

    /// The plan that takes this one back: each action's undo, last first (edges go before
    /// the instances they joined). Stops have no undo and are left out.
    pub fn undo(&self) -> Plan {
        Plan {
            actions: self.actions.iter().rev().filter_map(Action::undo).collect(),
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for action in &self.actions {
            let _ = writeln!(out, "{}", action.line());
        }
        if self.actions.is_empty() {
            out.push_str("nothing to change\n");
        }
        out
    }

    /// Counts for a one-line summary: (started, replaced or moved, stopped, connected, disconnected).
    pub fn counts(&self) -> [usize; 5] {
        let mut c = [0; 5];
        for a in &self.actions {
            match a {
                Action::Start { replaces: None, .. } => c[0] += 1,
                Action::Start { .. } => c[1] += 1,
                Action::Stop {
                    replaced: false, ..
                } => c[2] += 1,
                Action::Stop { .. } => {}
                Action::Connect { .. } => c[3] += 1,
                Action::Disconnect { .. } => c[4] += 1,
                Action::Set { .. } => {}
            }
        }
        c
    }

    /// The crossfades of a change that replaces or moves blocks: the longest `fade` of the
    /// replacing instances, over every edge from a client that comes (its new instance, a new
    /// link) or goes into a port of one that stays, per host. None when nothing is replaced
    /// or moved, or every such block's `fade` is 0: the edges then switch at once.
    pub fn crossfades(&self) -> Vec<Crossfade> {
        let ms = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Start {
                    process,
                    replaces: Some(_),
                    ..
                } => Some(process.fade_ms),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        if ms == 0 {
            return Vec::new();
        }
        let mut coming = BTreeSet::new();
        let mut going = BTreeSet::new();
        for action in &self.actions {
            match action {
                Action::Start { host, process, .. } => {
                    coming.insert((host.as_str(), &process.client));
                }
                Action::Stop { host, client, .. } => {
                    going.insert((host.as_str(), client));
                }
                _ => {}
            }
        }
        let of = |set: &BTreeSet<(&str, &ClientName)>, host: &str, port: &PortRef| {
            set.contains(&(host, &port.client))
        };
        let stays =
            |host: &str, port: &PortRef| !of(&coming, host, port) && !of(&going, host, port);
        let mut fades: BTreeMap<&str, Crossfade> = BTreeMap::new();
        for action in &self.actions {
            let (host, edge, comes) = match action {
                Action::Connect { host, edge }
                    if of(&coming, host, &edge.from) && stays(host, &edge.to) =>
                {
                    (host, edge, true)
                }
                Action::Disconnect { host, edge }
                    if of(&going, host, &edge.from) && stays(host, &edge.to) =>
                {
                    (host, edge, false)
                }
                _ => continue,
            };
            let fade = fades.entry(host).or_insert_with(|| Crossfade {
                host: host.clone(),
                ms,
                ..Default::default()
            });
            match comes {
                true => fade.fade_in.push(edge.clone()),
                false => fade.fade_out.push(edge.clone()),
            }
        }
        fades.into_values().collect()
    }

    /// How many instances are told new live values.
    pub fn sets(&self) -> usize {
        self.actions
            .iter()
            .filter(|a| matches!(a, Action::Set { .. }))
            .count()
    }
}

/// Every process instance in a deployment: block → (host, spec).
fn instances(d: &Deployment) -> BTreeMap<&str, (&str, &ProcessSpec)> {
    d.hosts
        .iter()
        .flat_map(|(h, hd)| {
            hd.processes
                .iter()
                .map(move |(b, p)| (b.as_str(), (h.as_str(), p)))
        })
        .collect()
}

/// The live params whose values differ between two specs of one instance: (new, old).
type LiveChanges = (BTreeMap<String, LiveParam>, BTreeMap<String, LiveParam>);

fn live_changes(old: &ProcessSpec, new: &ProcessSpec) -> Option<LiveChanges> {
    let mut to = BTreeMap::new();
    let mut from = BTreeMap::new();
    for (name, wanted) in &new.live {
        let before = old.live.get(name);
        if before.is_some_and(|b| b.value == wanted.value) {
            continue;
        }
        to.insert(name.clone(), wanted.clone());
        if let Some(before) = before {
            from.insert(name.clone(), before.clone());
        }
    }
    (!to.is_empty()).then_some((to, from))
}

/// What to do to go from `current` to `desired`. Idempotent: `diff(d, d)` is empty.
pub fn diff(current: &Deployment, desired: &Deployment) -> Plan {
    let now = instances(current);
    let want = instances(desired);
    let same =
        |a: &(&str, &ProcessSpec), b: &(&str, &ProcessSpec)| a.0 == b.0 && a.1.client == b.1.client;
    let mut plan = Plan::default();
    for (block, wanted) in &want {
        let old = now.get(block);
        if let Some(old) = old.filter(|o| same(o, wanted)) {
            // The same instance: only its live values may differ.
            if let (Some(set), Some(port)) = (live_changes(old.1, wanted.1), wanted.1.osc_port) {
                plan.actions.push(Action::Set {
                    host: wanted.0.to_string(),
                    block: wanted.1.block.clone(),
                    client: wanted.1.client.clone(),
                    port,
                    to: set.0,
                    from: set.1,
                });
            }
            continue;
        }
        plan.actions.push(Action::Start {
            host: wanted.0.to_string(),
            process: Box::new(wanted.1.clone()),
            replaces: old.map(|(h, p)| (h.to_string(), p.client.clone())),
        });
    }
    for (host, hd) in &desired.hosts {
        let existing = current.hosts.get(host).map(|h| &h.edges);
        for edge in &hd.edges {
            if !existing.is_some_and(|e| e.contains(edge)) {
                plan.actions.push(Action::Connect {
                    host: host.clone(),
                    edge: edge.clone(),
                });
            }
        }
    }
    for (host, hd) in &current.hosts {
        let wanted = desired.hosts.get(host).map(|h| &h.edges);
        for edge in &hd.edges {
            if !wanted.is_some_and(|e| e.contains(edge)) {
                plan.actions.push(Action::Disconnect {
                    host: host.clone(),
                    edge: edge.clone(),
                });
            }
        }
    }
    for (block, old) in &now {
        let new = want.get(block);
        if new.is_some_and(|n| same(old, n)) {
            continue;
        }
        plan.actions.push(Action::Stop {
            host: old.0.to_string(),
            block: old.1.block.clone(),
            client: old.1.client.clone(),
            replaced: new.is_some(),
        });
    }
    plan
}

/// What a host's agent reports, as far as repair needs it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    /// Running instances: (what each plays, its client).
    pub processes: Vec<(Part, ClientName)>,
    /// Edges the agent holds as intended (made or waiting for their ports).
    pub intended: BTreeSet<Edge>,
    /// The pid of each running instance, by client (what the web page shows).
    pub pids: BTreeMap<ClientName, u32>,
}

/// The difference between what was applied and what the agents observe.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Repair {
    /// Edges to put back or take away, instances nobody asked for to stop.
    pub plan: Plan,
    /// Applied instances that no longer run: (host, spec), to restart as the policy allows.
    pub dead: Vec<(String, ProcessSpec)>,
}

/// Level-triggered: compare what each observed host runs with what was applied there, never
/// the event that woke us. Hosts missing from `observed` (their agent did not answer) are
/// left alone here: replacing an agent is its own step.
pub fn repair(applied: &Deployment, observed: &BTreeMap<String, Observed>) -> Repair {
    let mut out = Repair::default();
    let no_edges = BTreeSet::new();
    for (host, seen) in observed {
        let want = applied.hosts.get(host);
        let alive: BTreeSet<&ClientName> = seen.processes.iter().map(|(_, c)| c).collect();
        for process in want.iter().flat_map(|h| h.processes.values()) {
            if !alive.contains(&process.client) {
                out.dead.push((host.clone(), process.clone()));
            }
        }
        let wanted_edges = want.map(|h| &h.edges).unwrap_or(&no_edges);
        for edge in wanted_edges.difference(&seen.intended) {
            out.plan.actions.push(Action::Connect {
                host: host.clone(),
                edge: edge.clone(),
            });
        }
        for edge in seen.intended.difference(wanted_edges) {
            out.plan.actions.push(Action::Disconnect {
                host: host.clone(),
                edge: edge.clone(),
            });
        }
        for (block, client) in &seen.processes {
            let wanted = want.is_some_and(|h| h.processes.values().any(|p| p.client == *client));
            if !wanted {
                out.plan.actions.push(Action::Stop {
                    host: host.clone(),
                    block: block.clone(),
                    client: client.clone(),
                    replaced: false,
                });
            }
        }
    }
    out
}

/// Most lines of one plan shown on the terminal.
const MAX_LINES: usize = 40;

/// `1 started, 2 replaced, …`, leaving out what did not happen.
pub fn counts_line(plan: &Plan) -> String {
    let [started, replaced, stopped, connected, disconnected] = plan.counts();
    let parts: Vec<String> = [
        (plan.sets(), "set live"),
        (started, "started"),
        (replaced, "replaced or moved"),
        (stopped, "stopped"),
        (connected, "connected"),
        (disconnected, "disconnected"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    let mut line = parts.join(", ");
    if let Some(fade) = plan.crossfades().first() {
        let _ = write!(line, ", crossfaded over {} ms", fade.ms);
    }
    line
}

/// The plan as a musician reads it: blocks started (+), replaced or moved (~, from → to),
/// stopped (−), connections made and cut; network links as one line each rather than their
/// jacktrip processes and edges.
pub fn describe(plan: &Plan, before: &Deployment, after: &Deployment) -> Vec<String> {
    // A link's ports and ends are said as the link's own line, below.
    let is_link_port = |port: &PortRef| port.client.link().is_some();
    let is_link_block = |block: &Part| block.link().is_some();
    let mut lines: Vec<String> = plan
        .actions
        .iter()
        .filter(|a| match a {
            Action::Start { process, .. } => !is_link_block(&process.block),
            Action::Stop {
                block, replaced, ..
            } => !replaced && !is_link_block(block),
            Action::Connect { edge, .. } | Action::Disconnect { edge, .. } => {
                !is_link_port(&edge.from) && !is_link_port(&edge.to)
            }
            Action::Set { .. } => true,
        })
        .map(Action::line)
        .collect();
    let ids =
        |d: &Deployment| -> BTreeSet<LinkId> { d.links.iter().map(|l| l.id.clone()).collect() };
    let (old, new) = (ids(before), ids(after));
    for link in after.links.iter().filter(|l| !old.contains(&l.id)) {
        lines.push(format!(
            "+ link {} → {} ({}, udp {}, {})",
            link.from_host,
            link.to_host,
            link.id,
            link.server_port,
            link.fill()
        ));
    }
    // A link that stays may carry other wires now: only edges changed.
    for link in &after.links {
        let Some(was) = before.links.iter().find(|l| l.id == link.id) else {
            continue;
        };
        let wires = |l: &Link| -> BTreeSet<(u32, String)> {
            l.wires
                .iter()
                .map(|w| (w.channel, w.wire.clone()))
                .collect()
        };
        let (then, now) = (wires(was), wires(link));
        for (channel, wire) in now.difference(&then) {
            lines.push(format!(
                "+ wire {wire} on link {} → {} (channel {channel})",
                link.from_host, link.to_host
            ));
        }
        for (channel, wire) in then.difference(&now) {
            lines.push(format!(
                "- wire {wire} on link {} → {} (channel {channel})",
                link.from_host, link.to_host
            ));
        }
    }
    for link in before.links.iter().filter(|l| !new.contains(&l.id)) {
        lines.push(format!(
            "- link {} → {} ({})",
            link.from_host, link.to_host, link.id
        ));
    }
    if lines.len() > MAX_LINES {
        let more = lines.len() - MAX_LINES;
        lines.truncate(MAX_LINES);
        lines.push(format!("… and {more} more"));
    }
    lines
}
