//! Placement: which host runs each block, minimizing `alpha·overflow + cut + beta·moved`
//! (the report's Eq. 1 plus a migration term). Pure and deterministic.
//!
//! `problem` states it in indices; `exact` proves small instances by branch and bound (with
//! the bounds of `pieces` and `cells`), and `star` bounds fan-ins of any size;
//! `heuristic` handles the rest (construction, FM refinement, swaps, and re-solving small
//! groups of hosts exactly), helped by `multilevel` (contraction and V-cycles), `ejection`
//! and `ejection_dfs` (segment and subtree moves passed along rows of full hosts); `explain`
//! says why blocks sit where they do.

mod branch;
#[cfg(test)]
mod brute;
mod cells;
mod ejection;
mod ejection_dfs;
mod exact;
pub(crate) mod explain;
// Generated instances are for tests and the benchmark (which includes the same file), not
// part of the library.
#[cfg(test)]
mod generate;
mod heuristic;
mod multilevel;
mod pieces;
pub mod problem;
mod star;

use crate::resolve::Resolved;
use exact::Scope::Whole;
pub use problem::Problem;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

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

impl Cost {
    pub fn new(overflow: u64, cut: u64, moved: u64, weights: &Weights) -> Cost {
        Cost {
            overflow,
            cut,
            moved,
            total: weights.alpha * overflow as f64 + cut as f64 + weights.beta * moved as f64,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlacementError {
    #[error("no hosts to place the orchestra on")]
    NoHosts,
    #[error("blocks `{first}` (pinned to {first_host}) and `{second}` (pinned to {second_host}) share host alias `{alias}`: an alias is one host")]
    ConflictingPins {
        first: String,
        first_host: String,
        second: String,
        second_host: String,
        alias: String,
    },
}

/// How hard to search.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    pub weights: Weights,
    /// Wall-clock cap. Every search loop is bounded by counts, so the result is the same on
    /// every run unless this cap cuts a search short.
    pub time_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            weights: Weights::default(),
            time_limit: Duration::from_millis(200),
        }
    }
}

/// A placement with its cost and whether it is proven optimal.
#[derive(Debug, Clone, PartialEq)]
pub struct Solution {
    pub placement: Placement,
    pub cost: Cost,
    pub optimal: bool,
}

/// Largest instance handed to the exact solver whole right after a quick start too.
const EXACT_UNITS: usize = 32;
/// Largest orchestra whose heuristic placement the exact search then tries to prove (or
/// improve on).
const PROOF_UNITS: usize = 80;
/// Work of one exact search, in nodes × units (a node's bounds cost 40–80 ns a unit here on
/// up to 8 hosts, more on more hosts): 50–100 ms, well inside the default time limit, so the
/// budget, not the clock, ends an unproven search.
const EXACT_WORK: u64 = 1_200_000;

fn exact_nodes(problem: &Problem) -> u64 {
    let hosts = problem.hosts.len().max(8) as u64;
    EXACT_WORK * 8 / hosts / problem.units.len().max(1) as u64
}

/// Branch-and-bound nodes the large-neighbourhood search may spend in all (at most a few
/// hundred per unit, so small orchestras stay fast).
const NEIGHBOURHOOD_NODES: u64 = 150_000;
fn neighbourhood_nodes(units: usize) -> u64 {
    // Medium orchestras have most of their time left here; on large ones the V-cycles and the
    // ejection chains need theirs.
    let per_unit = if units <= MEDIUM_UNITS { 300 } else { 80 };
    NEIGHBOURHOOD_NODES.min(per_unit * units as u64)
}

/// Largest orchestra that runs the large-neighbourhood search twice (a second opinion) with a
/// larger budget: its counted work stays within about 100 ms here (150 ms on a busy machine).
const MEDIUM_UNITS: usize = 150;

/// Largest orchestra whose groups of hosts are also re-solved with chain segments contracted.
const COARSE_GROUPS_UNITS: usize = 200;

/// Work (units visited, path states expanded) the ejection-chain path search may spend, about
/// 15–40 ns each. Small orchestras get what fits in their 5 ms (the 100-block chain and tree
/// of the benchmark find their chains within 30 000), medium ones enough to finish; large ones
/// are capped, as V-cycles and the large-neighbourhood search already fill most of their time.
fn ejection_work(units: usize) -> u64 {
    match units {
        0..=150 => 500 * units as u64,
        151..=500 => 2_000 * units as u64,
        _ => 50_000,
    }
}

/// Unit moves and branch visits the depth-first ejection search may spend after the path
/// search: only medium orchestras, where it still finds some (small ones must stay within
/// 5 ms, large ones are short of time).
fn ejection_dfs_work(units: usize) -> u64 {
    match units {
        151..=500 => 1_000 * units as u64,
        _ => 0,
    }
}

/// Solve in indices: the host of each unit, and whether it is proven optimal.
pub fn solve(problem: &Problem, options: &Options) -> (Vec<usize>, bool) {
    let deadline = Some(Instant::now() + options.time_limit);
    let weights = &options.weights;
    let incremental = heuristic::incremental_start(problem, weights);
    let start = incremental
        .clone()
        .unwrap_or_else(|| heuristic::construct(problem, weights));
    let mut state = heuristic::State::new(problem, weights, start);
    if incremental.is_some() && problem.units.len() > EXACT_UNITS {
        // A re-plan touches only the neighbourhood of what changed: the rest keeps its host.
        if let Some(region) = heuristic::changed_region(&state) {
            state.movable = region;
        }
    }
    heuristic::refine(&mut state, 8, deadline);
    heuristic::swaps(&mut state, deadline);
    heuristic::refine(&mut state, 8, deadline);
    if incremental.is_none() && problem.units.len() > multilevel::COARSEST {
        // A second opinion that sees chains and subtrees whole; keep the better.
        let coarse = multilevel::place(problem, weights, deadline);
        if problem.cost(&coarse, weights).total < state.total() - 1e-9 {
            state = heuristic::State::new(problem, weights, coarse);
        }
    }
    if problem.units.len() <= EXACT_UNITS {
        // Most small orchestras are proved in a fraction of the budget; the others go on with
        // the full heuristic and are searched again from its (better) placement.
        let nodes = exact_nodes(problem) / 4;
        let found = exact::solve(problem, weights, &state.at, nodes, deadline, Whole);
        if found.proven {
            return (found.assignment, true);
        }
        state = heuristic::State::new(problem, weights, found.assignment);
    }
    // V-cycles pay off on large orchestras; on small ones they cost more time than they gain.
    if incremental.is_none() && problem.units.len() > 200 {
        for seed in 0..2 {
            let at = multilevel::v_cycle(problem, weights, state.at.clone(), seed, deadline);
            state = heuristic::State::new(problem, weights, at);
        }
    }
    let mut budget = neighbourhood_nodes(problem.units.len());
    let large = heuristic::LARGE_GROUP_UNITS;
    let mut second_opinion = None;
    if problem.units.len() <= 200 {
        if incremental.is_none() && problem.units.len() <= MEDIUM_UNITS {
            second_opinion = Some(state.at.clone());
        }
        // Pairs of hosts first (cheap, mostly proved), then larger groups.
        let small = heuristic::SMALL_GROUP_UNITS;
        heuristic::neighbourhoods(&mut state, 6, small, false, budget / 2, deadline);
        budget -= budget / 2;
    }
    heuristic::neighbourhoods(&mut state, 6, large, false, budget, deadline);
    if let Some(at) = second_opinion {
        // Larger groups from the start get out of other local optima (random patches, voices
        // over full hosts); medium orchestras have the time for both. Keep the better.
        let mut other = heuristic::State::new(problem, weights, at);
        let budget = neighbourhood_nodes(problem.units.len());
        heuristic::neighbourhoods(&mut other, 6, large, false, budget, deadline);
        if other.total() < state.total() - 1e-9 {
            state = other;
        }
    }
    if incremental.is_none() && problem.units.len() <= COARSE_GROUPS_UNITS {
        // Groups of hosts again, each chain segment one unit: the same number of units then
        // spans more hosts, so the free cores of a row of full hosts can be re-packed (equal
        // hosts full of voices, where a better plan moves whole voices over five hosts at once,
        // a change no group of single units that the search can solve holds).
        let budget = neighbourhood_nodes(problem.units.len()) / 2;
        heuristic::neighbourhoods(&mut state, 6, large, true, budget, deadline);
    }
    heuristic::refine(&mut state, 4, deadline);
    if incremental.is_none() {
        // Segment and subtree moves passed along rows of full hosts (chains and trees).
        ejection::improve(&mut state, 4, ejection_work(problem.units.len()), deadline);
        let dfs_work = ejection_dfs_work(problem.units.len());
        if dfs_work > 0 {
            ejection_dfs::improve(&mut state, 4, dfs_work, deadline);
        }
    }
    let total = state.total();
    // The star bound proves fan-ins of any size.
    let bound = lower_bound(problem, weights).max(star::bound(problem, weights));
    if total <= bound + 1e-9 {
        return (state.at, true);
    }
    if problem.units.len() <= PROOF_UNITS {
        // Try to prove the heuristic's placement optimal (or find the better one). Small
        // orchestras where the pieces bound did not prove it quickly are dense patches, whose
        // nodes are cheap without it: they get twice the nodes.
        let dense = if problem.units.len() <= EXACT_UNITS {
            2
        } else {
            1
        };
        let nodes = dense * exact_nodes(problem);
        let found = exact::solve(problem, weights, &state.at, nodes, deadline, Whole);
        return (found.assignment, found.proven);
    }
    (state.at, false)
}

/// The greedy construction alone, before any search improves it (a yardstick for tests).
pub fn greedy(problem: &Problem, weights: &Weights) -> Vec<usize> {
    heuristic::construct(problem, weights)
}

/// A bound no placement beats: the overflow that pins force, plus what the unpinned cpu
/// cannot fit into the cores the pins leave free (a fractional packing).
pub fn lower_bound(problem: &Problem, weights: &Weights) -> f64 {
    let mut pinned = vec![0u64; problem.hosts.len()];
    let mut unpinned = 0u64;
    for unit in &problem.units {
        match unit.pin {
            Some(p) => pinned[p] += unit.cpu as u64,
            None => unpinned += unit.cpu as u64,
        }
    }
    let (mut forced, mut free) = (0u64, 0u64);
    for (load, host) in pinned.iter().zip(&problem.hosts) {
        forced += load.saturating_sub(host.cores as u64);
        free += (host.cores as u64).saturating_sub(*load);
    }
    (forced + unpinned.saturating_sub(free)) as f64 * weights.alpha
}

/// Place every block on a host. With `previous`, staying put is preferred (`beta` per move).
pub fn place(
    resolved: &Resolved,
    previous: Option<&Placement>,
    options: &Options,
) -> Result<Solution, PlacementError> {
    place_without(resolved, previous, options, &BTreeSet::new())
}

/// [`place`] on the orchestra's hosts but those `left_out` (they did not answer).
pub fn place_without(
    resolved: &Resolved,
    previous: Option<&Placement>,
    options: &Options,
    left_out: &BTreeSet<String>,
) -> Result<Solution, PlacementError> {
    let problem = Problem::from_resolved(resolved, previous, left_out)?;
    let (at, optimal) = solve(&problem, options);
    Ok(Solution {
        placement: problem.placement(&at),
        cost: problem.cost(&at, &options.weights),
        optimal,
    })
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
