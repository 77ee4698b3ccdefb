//! Placement: which host runs each block, minimizing `alpha·overflow + cut + beta·moved`
//! (the report's Eq. 1 plus a migration term). Pure and deterministic.
//!
//! This is the v0 solver: a greedy construction along connections followed by single-unit
//! moves until no move lowers the cost. The optimizer issue replaces the search, not the API.

use crate::model::Resolved;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Weights of the cost terms.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weights {
    /// Price of one core of overflow.
    pub alpha: f64,
    /// Price of moving one block away from its previous host.
    pub beta: f64,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            alpha: 100.0,
            beta: 1.0,
        }
    }
}

/// Block name → host name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Placement(pub BTreeMap<String, String>);

impl Placement {
    pub fn host_of(&self, block: &str) -> Option<&str> {
        self.0.get(block).map(String::as_str)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Cost {
    /// Σ over hosts of cores needed beyond cores available.
    pub overflow: u64,
    /// Connections whose two blocks sit on different hosts (each counted once).
    pub cut: u64,
    /// Blocks of the previous placement now on another host.
    pub moved: u64,
    pub total: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("no hosts to place the orchestra on")]
    NoHosts,
    #[error("blocks `{0}` and `{1}` share host alias `{2}` but are pinned to different hosts")]
    ConflictingPins(String, String, String),
}

/// The placement problem in indices: what the search works on.
struct Problem {
    hosts: Vec<String>,
    cores: Vec<u64>,
    /// Units: blocks that must share a host (a prototype alias group, or one block).
    units: Vec<Unit>,
    /// Per connection, the two units it joins.
    edges: Vec<(usize, usize)>,
}

struct Unit {
    blocks: Vec<String>,
    cpu: u64,
    pin: Option<usize>,
    /// Per member with a previous host: that host's index (or None if it no longer exists).
    previous: Vec<Option<usize>>,
}

impl Problem {
    fn new(resolved: &Resolved, previous: Option<&Placement>) -> Result<Problem, PlacementError> {
        let hosts: Vec<String> = resolved.hosts.iter().map(|h| h.name.clone()).collect();
        if hosts.is_empty() {
            return Err(PlacementError::NoHosts);
        }
        let host_index = |name: &str| hosts.iter().position(|h| h == name);
        let mut unit_of: BTreeMap<String, usize> = BTreeMap::new();
        let mut group_unit: BTreeMap<String, usize> = BTreeMap::new();
        let mut units: Vec<Unit> = Vec::new();
        for block in resolved.blocks.values() {
            let mut new_unit = || {
                units.push(Unit {
                    blocks: vec![],
                    cpu: 0,
                    pin: None,
                    previous: vec![],
                });
                units.len() - 1
            };
            let u = match &block.group {
                Some(g) => *group_unit.entry(g.clone()).or_insert_with(new_unit),
                None => new_unit(),
            };
            let unit = &mut units[u];
            if let Some(pin) = &block.pin {
                let p = host_index(pin);
                if let (Some(existing), Some(_)) = (unit.pin, p) {
                    if Some(existing) != p {
                        return Err(PlacementError::ConflictingPins(
                            unit.blocks[0].clone(),
                            block.name.clone(),
                            block.group.clone().unwrap_or_default(),
                        ));
                    }
                }
                unit.pin = p;
            }
            if let Some(prev) = previous.and_then(|p| p.host_of(&block.name)) {
                unit.previous.push(host_index(prev));
            }
            unit.blocks.push(block.name.clone());
            unit.cpu += block.cpu as u64;
            unit_of.insert(block.name.clone(), u);
        }
        let edges = resolved
            .connections
            .iter()
            .map(|(a, b)| (unit_of[a], unit_of[b]))
            .collect();
        Ok(Problem {
            cores: resolved.hosts.iter().map(|h| h.cores as u64).collect(),
            hosts,
            units,
            edges,
        })
    }

    fn cost(&self, at: &[usize], weights: &Weights) -> Cost {
        let mut load = vec![0u64; self.hosts.len()];
        for (u, unit) in self.units.iter().enumerate() {
            load[at[u]] += unit.cpu;
        }
        let overflow = load
            .iter()
            .zip(&self.cores)
            .map(|(l, c)| l.saturating_sub(*c))
            .sum();
        let cut = self.edges.iter().filter(|(a, b)| at[*a] != at[*b]).count() as u64;
        let moved = self
            .units
            .iter()
            .enumerate()
            .map(|(u, unit)| unit.previous.iter().filter(|p| **p != Some(at[u])).count() as u64)
            .sum();
        Cost {
            overflow,
            cut,
            moved,
            total: weights.alpha * overflow as f64 + cut as f64 + weights.beta * moved as f64,
        }
    }

    /// The host a unit would rather stay on: the previous host of most of its blocks.
    fn preferred(&self, u: usize) -> Option<usize> {
        let unit = &self.units[u];
        unit.pin.or_else(|| {
            let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
            for h in unit.previous.iter().flatten() {
                *counts.entry(*h).or_default() += 1;
            }
            counts
                .into_iter()
                .max_by_key(|(h, n)| (*n, std::cmp::Reverse(*h)))
                .map(|(h, _)| h)
        })
    }

    /// Units in the order the greedy construction places them: pinned and previously placed
    /// first, then breadth-first along connections so neighbours land together.
    fn construction_order(&self) -> Vec<usize> {
        let mut neighbours = vec![BTreeSet::new(); self.units.len()];
        for &(a, b) in &self.edges {
            neighbours[a].insert(b);
            neighbours[b].insert(a);
        }
        let mut seeds: Vec<usize> = (0..self.units.len()).collect();
        seeds.sort_by_key(|&u| (self.units[u].pin.is_none(), self.preferred(u).is_none(), u));
        let mut seen = vec![false; self.units.len()];
        let mut order = Vec::new();
        for seed in seeds {
            if seen[seed] {
                continue;
            }
            seen[seed] = true;
            let mut queue = VecDeque::from([seed]);
            while let Some(u) = queue.pop_front() {
                order.push(u);
                for &n in &neighbours[u] {
                    if !seen[n] {
                        seen[n] = true;
                        queue.push_back(n);
                    }
                }
            }
        }
        order
    }

    fn candidates(&self, u: usize) -> Vec<usize> {
        match self.units[u].pin {
            Some(p) => vec![p],
            None => {
                let mut c: Vec<usize> = (0..self.hosts.len()).collect();
                // Ties go to the preferred (previous) host, then to declaration order.
                if let Some(p) = self.preferred(u) {
                    c.retain(|&h| h != p);
                    c.insert(0, p);
                }
                c
            }
        }
    }

    fn solve(&self, weights: &Weights) -> Vec<usize> {
        const UNPLACED: usize = usize::MAX;
        let mut at = vec![UNPLACED; self.units.len()];
        let mut load = vec![0u64; self.hosts.len()];
        for u in self.construction_order() {
            let unit = &self.units[u];
            let best = self
                .candidates(u)
                .into_iter()
                .map(|h| {
                    let over_before = load[h].saturating_sub(self.cores[h]);
                    let over_after = (load[h] + unit.cpu).saturating_sub(self.cores[h]);
                    let cut = self
                        .edges
                        .iter()
                        .filter(|(a, b)| {
                            (*a == u && at[*b] != UNPLACED && at[*b] != h && *b != u)
                                || (*b == u && at[*a] != UNPLACED && at[*a] != h && *a != u)
                        })
                        .count();
                    let moved = unit.previous.iter().filter(|p| **p != Some(h)).count();
                    let delta = weights.alpha * (over_after - over_before) as f64
                        + cut as f64
                        + weights.beta * moved as f64;
                    (delta, h)
                })
                .fold(None, |best: Option<(f64, usize)>, (d, h)| match best {
                    Some((bd, _)) if bd <= d => best,
                    _ => Some((d, h)),
                })
                .expect("every unit has a candidate host");
            at[u] = best.1;
            load[best.1] += unit.cpu;
        }
        // Improve with single-unit moves while one lowers the total cost.
        let mut current = self.cost(&at, weights).total;
        for _ in 0..50 {
            let mut improved = false;
            for u in 0..self.units.len() {
                if self.units[u].pin.is_some() {
                    continue;
                }
                let here = at[u];
                for h in self.candidates(u) {
                    if h == here {
                        continue;
                    }
                    at[u] = h;
                    let c = self.cost(&at, weights).total;
                    if c + 1e-9 < current {
                        current = c;
                        improved = true;
                        break;
                    }
                    at[u] = here;
                }
            }
            if !improved {
                break;
            }
        }
        at
    }
}

/// Place every block on a host. With `previous`, staying put is preferred (`beta` per move).
pub fn place(
    resolved: &Resolved,
    previous: Option<&Placement>,
    weights: &Weights,
) -> Result<(Placement, Cost), PlacementError> {
    let problem = Problem::new(resolved, previous)?;
    let at = problem.solve(weights);
    let cost = problem.cost(&at, weights);
    let mut placement = Placement::default();
    for (u, unit) in problem.units.iter().enumerate() {
        for block in &unit.blocks {
            placement
                .0
                .insert(block.clone(), problem.hosts[at[u]].clone());
        }
    }
    Ok((placement, cost))
}

/// Cores used per host under `placement`, for reports.
pub fn host_loads(resolved: &Resolved, placement: &Placement) -> BTreeMap<String, u64> {
    let mut loads: BTreeMap<String, u64> =
        resolved.hosts.iter().map(|h| (h.name.clone(), 0)).collect();
    for block in resolved.blocks.values() {
        if let Some(h) = placement.host_of(&block.name) {
            *loads.entry(h.to_string()).or_default() += block.cpu as u64;
        }
    }
    loads
}
