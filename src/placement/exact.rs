//! Exact placement by branch and bound: depth-first over units (most constrained first),
//! hosts tried cheapest first, interchangeable empty hosts tried once (same cores, nothing
//! pinned to or previously on them: the symmetry of equal hosts), and three lower bounds —
//! each remaining unit's cheapest increment against what is placed, the cut/move part plus
//! the overflow the remaining cpu cannot avoid, and the pieces bound of `pieces`. Used whole
//! on orchestras up to 80 units and on small groups of hosts inside the large-neighbourhood
//! search; searches of a whole orchestra (`Scope::Whole`) also use the cells bound of `cells` and
//! place twin units (same cpu and connections) on hosts in order.

use super::cells::{Cells, Partial};
use super::pieces::Pieces;
use super::problem::Problem;
use super::Weights;
use std::time::Instant;

const EPS: f64 = 1e-9;
const UNSET: usize = usize::MAX;

/// What a search found.
pub struct Exact {
    /// Best assignment found (never worse than the incumbent given).
    pub assignment: Vec<usize>,
    pub total: f64,
    /// True when the search finished: `assignment` is optimal.
    pub proven: bool,
    pub nodes: u64,
}

struct Search<'a> {
    problem: &'a Problem,
    weights: Weights,
    adjacency: Vec<Vec<(usize, u32)>>,
    order: Vec<usize>,
    /// Interchangeability class of each host: hosts with the same class and no units are
    /// the same choice (same cores, nothing pinned to or previously on them).
    class: Vec<usize>,
    /// Per unit, the twin placed before it (same cpu, same connections, nothing pinned or
    /// previous), or `UNSET`: twins are interchangeable, so a unit goes to a host no lower than
    /// its twin's (the symmetry of equal units, as of equal hosts). Whole orchestras only.
    twin_before: Vec<usize>,
    at: Vec<usize>,
    load: Vec<u64>,
    units_on: Vec<u32>,
    best: Vec<usize>,
    best_total: f64,
    nodes: u64,
    node_limit: u64,
    deadline: Option<Instant>,
    stopped: bool,
    remaining_cpu: u64,
    /// `links[u * hosts + h]`: weight of `u`'s connections to placed units on `h`.
    links: Vec<u32>,
    /// Weight of `u`'s connections to placed units anywhere.
    placed_links: Vec<u32>,
    pieces: Pieces,
    /// Times the pieces bound was computed, and pruned where the others did not. Where it
    /// hardly ever does (dense patches: one big component) it is dropped, by count.
    pieces_tried: u64,
    pieces_pruned: u64,
    /// The cells bound, in searches of a whole orchestra only, with its counts.
    cells: Option<Cells>,
    cells_tried: u64,
    cells_pruned: u64,
    /// Scratch: free cores per host, and the units drawn to each host.
    free: Vec<u64>,
    drawn: Vec<Vec<(f64, u64)>>,
}

/// The pieces bound is kept while it prunes at least one node in this many of those it is
/// computed for, judged after `PIECES_TRIAL` of them.
const PIECES_RATE: u64 = 50;
const PIECES_TRIAL: u64 = 2_000;

/// The cells bound costs more: it is kept while it prunes one node in ten of those it is
/// computed for (trees and voices: a third to a half; dense patches much less).
const CELLS_RATE: u64 = 10;
const CELLS_TRIAL: u64 = 500;

/// What a search covers, which decides the bounds worth their cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// A small group of hosts inside a larger search: the bounds of every node.
    Part,
    /// A whole orchestra to prove: the cells bound and the symmetry of twin units too.
    Whole,
}

/// Find an optimal assignment, starting from `incumbent` (a complete assignment) as the
/// upper bound. Stops early, unproven, after `node_limit` nodes or at `deadline`.
pub fn solve(
    problem: &Problem,
    weights: &Weights,
    incumbent: &[usize],
    node_limit: u64,
    deadline: Option<Instant>,
    scope: Scope,
) -> Exact {
    let whole = scope == Scope::Whole;
    let n = problem.units.len();
    let hosts = problem.hosts.len();
    let adjacency = problem.adjacency();
    let mut special = vec![false; hosts];
    for unit in &problem.units {
        if let Some(p) = unit.pin {
            special[p] = true;
        }
        for (h, _) in &unit.previous {
            special[*h] = true;
        }
    }
    let class: Vec<usize> = (0..hosts)
        .map(|h| {
            if special[h] {
                h
            } else {
                (0..h)
                    .find(|&g| !special[g] && problem.hosts[g].cores == problem.hosts[h].cores)
                    .unwrap_or(h)
            }
        })
        .collect();
    let order = branching_order(problem, &adjacency);
    let twin_before = if whole {
        twins(problem, &adjacency, &order)
    } else {
        vec![UNSET; n]
    };
    let mut search = Search {
        problem,
        weights: *weights,
        order,
        adjacency,
        class,
        twin_before,
        at: vec![UNSET; n],
        load: vec![0; hosts],
        units_on: vec![0; hosts],
        best: incumbent.to_vec(),
        best_total: problem.cost(incumbent, weights).total,
        nodes: 0,
        node_limit,
        deadline,
        stopped: false,
        remaining_cpu: problem.units.iter().map(|u| u.cpu as u64).sum(),
        links: vec![0; n * hosts],
        placed_links: vec![0; n],
        pieces: Pieces::new(problem),
        pieces_tried: 0,
        pieces_pruned: 0,
        cells: whole.then(|| Cells::new(problem)),
        cells_tried: 0,
        cells_pruned: 0,
        free: vec![0; hosts],
        drawn: vec![Vec::new(); hosts],
    };
    search.descend(0, 0.0);
    if std::env::var("STATS").is_ok() {
        eprintln!(
            "stats: nodes {} pieces {}/{} cells {}/{}",
            search.nodes,
            search.pieces_pruned,
            search.pieces_tried,
            search.cells_pruned,
            search.cells_tried
        );
    }
    Exact {
        proven: !search.stopped,
        assignment: search.best,
        total: search.best_total,
        nodes: search.nodes,
    }
}

/// For each unit, the last unit before it in `order` that is its twin: same cpu, neither
/// pinned nor previously anywhere, and the same connections (with weights) to the same units.
fn twins(problem: &Problem, adjacency: &[Vec<(usize, u32)>], order: &[usize]) -> Vec<usize> {
    let mut twin_before = vec![UNSET; problem.units.len()];
    let mut last: std::collections::HashMap<(u32, Vec<(usize, u32)>), usize> =
        std::collections::HashMap::new();
    for &u in order {
        let unit = &problem.units[u];
        if unit.pin.is_some() || unit.previous_total > 0 {
            continue;
        }
        let mut around = adjacency[u].clone();
        around.sort_unstable();
        if let Some(before) = last.insert((unit.cpu, around), u) {
            twin_before[u] = before;
        }
    }
    twin_before
}

/// Pinned units first, then repeatedly the unit most connected to those already ordered
/// (ties: larger cpu, then index), so bounds bite early.
fn branching_order(problem: &Problem, adjacency: &[Vec<(usize, u32)>]) -> Vec<usize> {
    let n = problem.units.len();
    let mut ordered = vec![false; n];
    let mut link = vec![0u64; n];
    let mut order = Vec::with_capacity(n);
    for _ in 0..n {
        let next = (0..n)
            .filter(|&u| !ordered[u])
            .max_by_key(|&u| {
                let unit = &problem.units[u];
                (
                    unit.pin.is_some(),
                    link[u],
                    unit.cpu,
                    adjacency[u].len(),
                    std::cmp::Reverse(u),
                )
            })
            .expect("an unordered unit remains");
        ordered[next] = true;
        order.push(next);
        for &(v, w) in &adjacency[next] {
            link[v] += w as u64;
        }
    }
    order
}

impl Search<'_> {
    fn overflow(&self, h: usize, load: u64) -> u64 {
        load.saturating_sub(self.problem.hosts[h].cores as u64)
    }

    /// Cost of putting `u` on `h` given what is placed: (cut + move part, overflow part).
    fn increment(&self, u: usize, h: usize) -> (f64, f64) {
        let unit = &self.problem.units[u];
        let cut = self.placed_links[u] - self.links[u * self.problem.hosts.len() + h];
        let moved = unit.moved_if_on(h) as f64 * self.weights.beta;
        let over = (self.overflow(h, self.load[h] + unit.cpu as u64)
            - self.overflow(h, self.load[h])) as f64
            * self.weights.alpha;
        (cut as f64 + moved, over)
    }

    fn candidates(&self, u: usize) -> Vec<usize> {
        if let Some(p) = self.problem.units[u].pin {
            return vec![p];
        }
        // Of interchangeable empty hosts, only the first is a distinct choice; of twins, the
        // hosts in order.
        let mut offered_empty: Vec<usize> = Vec::new();
        let lowest = match self.twin_before[u] {
            UNSET => 0,
            twin => self.at[twin],
        };
        (lowest..self.problem.hosts.len())
            .filter(|&h| {
                if self.units_on[h] > 0 {
                    return true;
                }
                if offered_empty.contains(&self.class[h]) {
                    return false;
                }
                offered_empty.push(self.class[h]);
                true
            })
            .collect()
    }

    /// Two bounds on what the remaining units add, the larger wins:
    /// - each unit's cheapest increment, plus — per host — what the units that would all like
    ///   that host must pay when they do not fit in its free cores (each either overflows it,
    ///   `alpha` per core, or goes to its second-best host: a fractional knapsack);
    /// - each unit's cheapest cut/move increment plus the overflow the remaining cpu cannot
    ///   avoid anywhere.
    fn lower_bound(&mut self, depth: usize, partial: f64) -> f64 {
        let hosts = self.problem.hosts.len();
        let mut separate = 0.0;
        let mut cut_move = 0.0;
        let mut moves = 0.0;
        // Per host: (extra cost per core if moved away, cpu) of units that fit there alone.
        let mut drawn = std::mem::take(&mut self.drawn);
        drawn.iter_mut().for_each(Vec::clear);
        for &u in &self.order[depth..] {
            let (mut best, mut second, mut best_host, mut best_over) =
                (f64::INFINITY, f64::INFINITY, 0, 0.0);
            let mut best_cut = f64::INFINITY;
            let mut best_move = f64::INFINITY;
            // Interchangeable empty hosts give equal increments: no need to skip them here.
            let range = match self.problem.units[u].pin {
                Some(p) => p..p + 1,
                None => 0..hosts,
            };
            for h in range {
                let (c, o) = self.increment(u, h);
                if c + o < best {
                    second = best;
                    (best, best_host, best_over) = (c + o, h, o);
                } else if c + o < second {
                    second = c + o;
                }
                best_cut = best_cut.min(c);
                let unit = &self.problem.units[u];
                best_move = best_move.min(unit.moved_if_on(h) as f64 * self.weights.beta);
            }
            separate += best;
            cut_move += best_cut;
            moves += best_move;
            let cpu = self.problem.units[u].cpu as u64;
            if best_over == 0.0 && cpu > 0 {
                let per_core = ((second - best) / cpu as f64).min(self.weights.alpha);
                drawn[best_host].push((per_core, cpu));
            }
        }
        let mut crowding = 0.0;
        for (h, units) in drawn.iter_mut().enumerate() {
            let free = (self.problem.hosts[h].cores as u64).saturating_sub(self.load[h]);
            let wanted: u64 = units.iter().map(|(_, c)| c).sum();
            let mut excess = wanted.saturating_sub(free);
            if excess == 0 {
                continue;
            }
            units.sort_by(|a, b| a.0.total_cmp(&b.0));
            for &(per_core, cpu) in units.iter() {
                let take = cpu.min(excess);
                crowding += per_core * take as f64;
                excess -= take;
                if excess == 0 {
                    break;
                }
            }
        }
        let free: u64 = (0..hosts)
            .map(|h| (self.problem.hosts[h].cores as u64).saturating_sub(self.load[h]))
            .sum();
        let unavoidable = self.remaining_cpu.saturating_sub(free) as f64 * self.weights.alpha;
        self.drawn = drawn;
        let simple = partial + (separate + crowding).max(cut_move + unavoidable);
        if simple + EPS >= self.best_total {
            return simple;
        }
        for h in 0..hosts {
            self.free[h] = (self.problem.hosts[h].cores as u64).saturating_sub(self.load[h]);
        }
        let mut bound = simple;
        let pieces_useless = self.pieces_tried >= PIECES_TRIAL
            && self.pieces_pruned * PIECES_RATE < self.pieces_tried;
        if !pieces_useless {
            let pieces = self.pieces.bound(
                self.problem,
                &self.adjacency,
                &self.at,
                &self.order[depth..],
                &self.free,
                self.weights.alpha,
            );
            bound = bound.max(partial + pieces + moves);
            self.pieces_tried += 1;
            self.pieces_pruned += (bound + EPS >= self.best_total) as u64;
        }
        let cells_useless =
            self.cells_tried >= CELLS_TRIAL && self.cells_pruned * CELLS_RATE < self.cells_tried;
        if bound + EPS >= self.best_total || cells_useless {
            return bound;
        }
        if let Some(cells) = self.cells.as_mut() {
            // It costs about what a node's other bounds do: counted as a node of work.
            self.nodes += 1;
            let state = Partial {
                at: &self.at,
                links: &self.links,
                placed_links: &self.placed_links,
                free: &self.free,
            };
            let unplaced = &self.order[depth..];
            let more = cells.bound(
                self.problem,
                &self.adjacency,
                &state,
                unplaced,
                &self.weights,
            );
            bound = bound.max(partial + more);
            self.cells_tried += 1;
            self.cells_pruned += (bound + EPS >= self.best_total) as u64;
        }
        bound
    }

    /// Put `u` on `h` (or take it off again), keeping loads and links current.
    fn place(&mut self, u: usize, h: usize, on: bool) {
        let cpu = self.problem.units[u].cpu as u64;
        let hosts = self.problem.hosts.len();
        if on {
            self.at[u] = h;
            self.load[h] += cpu;
            self.units_on[h] += 1;
            self.remaining_cpu -= cpu;
        } else {
            self.at[u] = UNSET;
            self.load[h] -= cpu;
            self.units_on[h] -= 1;
            self.remaining_cpu += cpu;
        }
        for &(v, w) in &self.adjacency[u] {
            if on {
                self.links[v * hosts + h] += w;
                self.placed_links[v] += w;
            } else {
                self.links[v * hosts + h] -= w;
                self.placed_links[v] -= w;
            }
        }
    }

    fn descend(&mut self, depth: usize, partial: f64) {
        if self.stopped {
            return;
        }
        self.nodes += 1;
        if self.nodes > self.node_limit
            || (self.nodes.is_multiple_of(1024)
                && self.deadline.is_some_and(|d| Instant::now() >= d))
        {
            self.stopped = true;
            return;
        }
        if depth == self.order.len() {
            if partial + EPS < self.best_total {
                self.best_total = partial;
                self.best.clone_from(&self.at);
            }
            return;
        }
        if self.lower_bound(depth, partial) + EPS >= self.best_total {
            return;
        }
        let u = self.order[depth];
        let previous = self.problem.units[u].previous_host();
        let mut options: Vec<(f64, bool, usize)> = self
            .candidates(u)
            .into_iter()
            .map(|h| {
                let (c, o) = self.increment(u, h);
                (c + o, previous != Some(h), h)
            })
            .collect();
        // Cheapest first; ties stay put, then go to the first host.
        options.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for (inc, _, h) in options {
            if partial + inc + EPS >= self.best_total {
                break;
            }
            self.place(u, h, true);
            self.descend(depth + 1, partial + inc);
            self.place(u, h, false);
            if self.stopped {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::brute;
    use crate::placement::generate::{generate, generate_tight, with_previous, Family, HostSizes};

    /// Small instances of every family: tight on equal hosts (where only one of several empty
    /// hosts is tried), tight on mixed hosts, roomy, and with a previous placement.
    fn small_instances() -> Vec<Problem> {
        let mut out = Vec::new();
        for family in Family::ALL {
            for seed in 0..6 {
                let (blocks, hosts) = if seed % 2 == 0 { (8, 3) } else { (7, 4) };
                for sizes in HostSizes::ALL {
                    out.push(generate_tight(family, blocks, hosts, seed, sizes, 0.15));
                }
                let roomy = generate(family, blocks, hosts, seed, 0.0);
                let previous: Vec<usize> = (0..blocks)
                    .map(|u| (u * 7 + seed as usize) % hosts)
                    .collect();
                out.push(with_previous(&roomy, &previous));
                out.push(roomy);
            }
        }
        out
    }

    #[test]
    fn finds_and_proves_the_brute_force_optimum() {
        let weights = Weights::default();
        for problem in small_instances() {
            let start = vec![0; problem.units.len()];
            let start: Vec<usize> = start
                .iter()
                .zip(&problem.units)
                .map(|(h, u)| u.pin.unwrap_or(*h))
                .collect();
            let optimum = brute::optimum(&problem, &weights);
            // With and without the cells bound and the symmetry of twins.
            for scope in [Scope::Part, Scope::Whole] {
                let found = solve(&problem, &weights, &start, u64::MAX, None, scope);
                assert!(found.proven);
                assert!(
                    (found.total - optimum).abs() < 1e-9,
                    "{problem:?}: {} vs brute force {optimum}",
                    found.total
                );
                let cost = problem.cost(&found.assignment, &weights).total;
                assert!((cost - found.total).abs() < 1e-9);
                assert!(problem.pins_hold(&found.assignment));
            }
        }
    }

    #[test]
    fn equal_empty_hosts_are_tried_once() {
        // Eight units in a chain on four equal hosts with room for all: only one host is
        // ever opened first, so the search stays tiny.
        let mut problem = generate_tight(Family::Chain, 8, 4, 3, HostSizes::Equal, 0.0);
        problem.hosts.iter_mut().for_each(|h| h.cores = 16);
        let start: Vec<usize> = (0..8).map(|u| u % 4).collect();
        let found = solve(
            &problem,
            &Weights::default(),
            &start,
            u64::MAX,
            None,
            Scope::Part,
        );
        assert!(found.proven);
        assert_eq!(found.total, 0.0);
        assert!(found.nodes <= 20, "{} nodes", found.nodes);
    }
}
