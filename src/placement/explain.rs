//! `plan --explain`: per host its load against its cores and its cut connections, and why a
//! pinned or overloaded block sits where it does.

use super::{Placement, Solution};
use crate::resolve::Resolved;
use std::collections::BTreeMap;
use std::fmt::Write;

pub fn explain(resolved: &Resolved, solution: &Solution, previous: Option<&Placement>) -> String {
    let placement = &solution.placement;
    let loads = super::host_loads(resolved, placement);
    let mut out = String::new();
    let c = solution.cost;
    let _ = writeln!(
        out,
        "cost {} = alpha·overflow {} + cut {} + beta·moved {}{}",
        c.total,
        c.overflow,
        c.cut,
        c.moved,
        if solution.optimal {
            " (proven optimal)"
        } else {
            " (best found)"
        }
    );
    let mut cut_by_host: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (a, b) in &resolved.connections {
        let (ha, hb) = (
            placement.host_of(a).unwrap_or("?"),
            placement.host_of(b).unwrap_or("?"),
        );
        if ha != hb {
            let line = format!("{a} ({ha}) → {b} ({hb})");
            cut_by_host.entry(ha).or_default().push(line.clone());
            cut_by_host.entry(hb).or_default().push(line);
        }
    }
    for host in &resolved.hosts {
        let load = loads.get(&host.name).copied().unwrap_or(0);
        let over = load.saturating_sub(host.cores as u64);
        let blocks: Vec<&str> = resolved
            .blocks
            .values()
            .filter(|b| placement.host_of(&b.name) == Some(host.name.as_str()))
            .map(|b| b.name.as_str())
            .collect();
        let _ = writeln!(
            out,
            "{}: {load}/{} cores{} — {}",
            host.name,
            host.cores,
            if over > 0 {
                format!(", {over} over")
            } else {
                String::new()
            },
            if blocks.is_empty() {
                "(empty)".to_string()
            } else {
                blocks.join(", ")
            }
        );
        for line in cut_by_host.get(host.name.as_str()).into_iter().flatten() {
            let _ = writeln!(out, "  cut: {line}");
        }
        for name in &blocks {
            let block = &resolved.blocks[*name];
            if let Some(pin) = &block.pin {
                let _ = writeln!(out, "  {name}: pinned here (host = \"{pin}\")");
            } else if let Some(group) = &block.group {
                let _ = writeln!(out, "  {name}: with the other blocks of alias `{group}`");
            }
            if over > 0 && block.pin.is_none() {
                let moved = previous.and_then(|p| p.host_of(name)) == Some(host.name.as_str());
                let _ = writeln!(
                    out,
                    "  {name}: here although {} is over its cores: {}",
                    host.name,
                    if moved {
                        "it was here before and every other place costs more"
                    } else {
                        "no host has room to spare that costs less"
                    }
                );
            }
        }
    }
    out
}
