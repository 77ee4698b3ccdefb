//! Plan: the ordered actions that turn what runs into what is desired, make-before-break:
//! start new processes → connect new edges → disconnect old edges → stop old processes.

use crate::deploy::{Deployment, Edge, ProcessSpec};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Start {
        host: String,
        process: Box<ProcessSpec>,
        /// The instance this one replaces: (host, client), on this host or (a move) another.
        replaces: Option<(String, String)>,
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
        block: String,
        client: String,
        /// True when a new instance took over (replace or move): not a removal of the block.
        replaced: bool,
    },
}

impl Action {
    pub fn host(&self) -> &str {
        match self {
            Action::Start { host, .. }
            | Action::Connect { host, .. }
            | Action::Disconnect { host, .. }
            | Action::Stop { host, .. } => host,
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
        }
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
            }
        }
        c
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

/// What to do to go from `current` to `desired`. Idempotent: `diff(d, d)` is empty.
pub fn diff(current: &Deployment, desired: &Deployment) -> Plan {
    let now = instances(current);
    let want = instances(desired);
    let same =
        |a: &(&str, &ProcessSpec), b: &(&str, &ProcessSpec)| a.0 == b.0 && a.1.client == b.1.client;
    let mut plan = Plan::default();
    for (block, wanted) in &want {
        let old = now.get(block);
        if old.is_some_and(|o| same(o, wanted)) {
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
            block: block.to_string(),
            client: old.1.client.clone(),
            replaced: new.is_some(),
        });
    }
    plan
}
