//! The placement problem in indices — units (blocks that must share a host), hosts, weighted
//! edges — and its cost. What every solver works on; serializable so that offline yardsticks
//! (an exact MIP) can read the very same instance.

use super::{Cost, Placement, PlacementError, Weights};
use crate::resolve::Resolved;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostSlot {
    pub name: String,
    pub cores: u32,
}

/// Blocks that go to one host together: one block, or a prototype alias group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    pub blocks: Vec<String>,
    /// Σ cpu of its blocks.
    pub cpu: u32,
    /// Host index it must go to.
    pub pin: Option<usize>,
    /// (host index, how many of its blocks were there in the previous placement).
    #[serde(default)]
    pub previous: Vec<(usize, u32)>,
    /// How many of its blocks had a previous placement at all (on a host that may be gone).
    #[serde(default)]
    pub previous_total: u32,
}

impl Unit {
    /// Blocks of this unit that would move if it went to `host`.
    pub fn moved_if_on(&self, host: usize) -> u32 {
        let stay = self
            .previous
            .iter()
            .find(|(h, _)| *h == host)
            .map_or(0, |(_, n)| *n);
        self.previous_total - stay
    }

    /// The host most of its blocks were on before, if any.
    pub fn previous_host(&self) -> Option<usize> {
        self.previous
            .iter()
            .max_by_key(|(h, n)| (*n, std::cmp::Reverse(*h)))
            .map(|(h, _)| *h)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    pub hosts: Vec<HostSlot>,
    pub units: Vec<Unit>,
    /// (a, b, weight) with a < b: connections between distinct units, merged.
    pub edges: Vec<(usize, usize, u32)>,
}

impl Problem {
    /// Build from a resolved orchestra, on its hosts but those `left_out` (they do not answer);
    /// `previous` is the last placement (blocks or hosts that no longer exist are ignored).
    pub fn from_resolved(
        resolved: &Resolved,
        previous: Option<&Placement>,
        left_out: &BTreeSet<String>,
    ) -> Result<Problem, PlacementError> {
        let hosts: Vec<HostSlot> = resolved
            .hosts
            .iter()
            .filter(|h| !left_out.contains(&h.name))
            .map(|h| HostSlot {
                name: h.name.clone(),
                cores: h.cores,
            })
            .collect();
        if hosts.is_empty() {
            return Err(PlacementError::NoHosts);
        }
        let host_index = |name: &str| hosts.iter().position(|h| h.name == name);
        let mut units: Vec<Unit> = Vec::new();
        let mut unit_of: BTreeMap<&str, usize> = BTreeMap::new();
        let mut group_unit: BTreeMap<&str, usize> = BTreeMap::new();
        for block in resolved.blocks.values() {
            let mut new_unit = || {
                units.push(Unit {
                    blocks: vec![],
                    cpu: 0,
                    pin: None,
                    previous: vec![],
                    previous_total: 0,
                });
                units.len() - 1
            };
            let u = match &block.group {
                Some(g) => *group_unit.entry(g.as_str()).or_insert_with(new_unit),
                None => new_unit(),
            };
            let unit = &mut units[u];
            if let Some(pin) = block.pin.as_deref().and_then(host_index) {
                if let Some(existing) = unit.pin.filter(|e| *e != pin) {
                    return Err(PlacementError::ConflictingPins {
                        first: unit.blocks[0].clone(),
                        first_host: hosts[existing].name.clone(),
                        second: block.name.clone(),
                        second_host: hosts[pin].name.clone(),
                        alias: block.group.clone().unwrap_or_default(),
                    });
                }
                unit.pin = Some(pin);
            }
            if let Some(prev) = previous.and_then(|p| p.host_of(&block.name)) {
                unit.previous_total += 1;
                if let Some(h) = host_index(prev) {
                    match unit.previous.iter_mut().find(|(ph, _)| *ph == h) {
                        Some((_, n)) => *n += 1,
                        None => unit.previous.push((h, 1)),
                    }
                }
            }
            unit.blocks.push(block.name.clone());
            unit.cpu += block.cpu;
            unit_of.insert(block.name.as_str(), u);
        }
        let mut weights: BTreeMap<(usize, usize), u32> = BTreeMap::new();
        for (a, b) in &resolved.connections {
            let (ua, ub) = (unit_of[a.as_str()], unit_of[b.as_str()]);
            if ua != ub {
                *weights.entry((ua.min(ub), ua.max(ub))).or_default() += 1;
            }
        }
        Ok(Problem {
            hosts,
            units,
            edges: weights.into_iter().map(|((a, b), w)| (a, b, w)).collect(),
        })
    }

    /// Neighbours of each unit with the edge weight.
    pub fn adjacency(&self) -> Vec<Vec<(usize, u32)>> {
        let mut adj = vec![Vec::new(); self.units.len()];
        for &(a, b, w) in &self.edges {
            adj[a].push((b, w));
            adj[b].push((a, w));
        }
        adj
    }

    /// The cost of an assignment (host index per unit).
    pub fn cost(&self, at: &[usize], weights: &Weights) -> Cost {
        let mut load = vec![0u64; self.hosts.len()];
        for (u, unit) in self.units.iter().enumerate() {
            load[at[u]] += unit.cpu as u64;
        }
        let overflow = load
            .iter()
            .zip(&self.hosts)
            .map(|(l, h)| l.saturating_sub(h.cores as u64))
            .sum();
        let cut = self
            .edges
            .iter()
            .filter(|(a, b, _)| at[*a] != at[*b])
            .map(|(_, _, w)| *w as u64)
            .sum();
        let moved = self
            .units
            .iter()
            .enumerate()
            .map(|(u, unit)| unit.moved_if_on(at[u]) as u64)
            .sum();
        Cost::new(overflow, cut, moved, weights)
    }

    /// Block → host name for an assignment.
    pub fn placement(&self, at: &[usize]) -> Placement {
        let mut placement = Placement::default();
        for (u, unit) in self.units.iter().enumerate() {
            for block in &unit.blocks {
                placement
                    .0
                    .insert(block.clone(), self.hosts[at[u]].name.clone());
            }
        }
        placement
    }

    /// Whether every pin holds.
    pub fn pins_hold(&self, at: &[usize]) -> bool {
        self.units
            .iter()
            .zip(at)
            .all(|(u, h)| u.pin.is_none_or(|p| p == *h))
    }
}
