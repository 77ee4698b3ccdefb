//! Multilevel placement, as METIS and KaHIP partition graphs: contract heavy connections into
//! larger units until few remain, place those, then undo the contractions one level at a time,
//! refining at each. A move at a coarse level shifts a whole chain segment or subtree at once,
//! which single-unit moves at the finest level cannot find.

use super::exact;
use super::heuristic::{self, State};
use super::problem::{Problem, Unit};
use super::Weights;
use std::collections::BTreeMap;
use std::time::Instant;

/// Stop contracting at this many units (or when a round shrinks the problem by < 10 %).
pub const COARSEST: usize = 24;
/// Branch-and-bound nodes for the coarsest level. Where the search is not proven, more nodes
/// found nothing better on the benchmark families (300 and 3 000 give the same placements) and
/// took most of a 100-block solve.
const COARSEST_NODES: u64 = 500;

/// A coarser problem and, per fine unit, its coarse unit.
/// With `keep`, only units on the same host are contracted (a V-cycle around a placement).
fn coarsen(problem: &Problem, seed: u64, keep: Option<&[usize]>) -> Option<(Problem, Vec<usize>)> {
    let n = problem.units.len();
    let adjacency = problem.adjacency();
    let max_cores = problem.hosts.iter().map(|h| h.cores).max().unwrap_or(1);
    let total_cpu: u64 = problem.units.iter().map(|u| u.cpu as u64).sum();
    // A contracted unit must still fit on a typical host, or packing gets coarse.
    let cap = (total_cpu.div_ceil(problem.hosts.len() as u64).max(1) as u32).min(max_cores);
    let mut mate = vec![usize::MAX; n];
    // Visit lightly connected units first: they have the fewest good partners.
    let mut order: Vec<usize> = (0..n).collect();
    // Ties in a seeded but fixed order: different seeds contract differently.
    let salt = |u: usize| {
        ((u as u64) ^ seed.wrapping_mul(0xD1B5_4A32_D192_ED03)).wrapping_mul(0x9E37_79B9_7F4A_7C15)
            >> 32
    };
    order.sort_by_key(|&u| (adjacency[u].len(), salt(u)));
    for &u in &order {
        if mate[u] != usize::MAX {
            continue;
        }
        let a = &problem.units[u];
        let partner = adjacency[u]
            .iter()
            .filter(|(v, _)| mate[*v] == usize::MAX && *v != u)
            .filter(|(v, _)| {
                let b = &problem.units[*v];
                let pin = a.pin.or(b.pin);
                let fits = a.cpu + b.cpu <= pin.map_or(cap, |p| problem.hosts[p].cores.max(cap));
                let together = keep.is_none_or(|at| at[u] == at[*v]);
                fits && together && (a.pin.is_none() || b.pin.is_none() || a.pin == b.pin)
            })
            .max_by_key(|(v, w)| {
                (
                    *w,
                    std::cmp::Reverse(problem.units[*v].cpu),
                    std::cmp::Reverse(*v),
                )
            })
            .map(|(v, _)| *v);
        match partner {
            Some(v) => {
                mate[u] = v;
                mate[v] = u;
            }
            None => mate[u] = u,
        }
    }
    let mut coarse_of = vec![usize::MAX; n];
    let mut units: Vec<Unit> = Vec::new();
    for u in 0..n {
        if coarse_of[u] != usize::MAX {
            continue;
        }
        let members: Vec<usize> = if mate[u] == u {
            vec![u]
        } else {
            vec![u, mate[u]]
        };
        let mut merged = Unit {
            blocks: Vec::new(),
            cpu: 0,
            pin: None,
            previous: Vec::new(),
            previous_total: 0,
        };
        for m in members {
            coarse_of[m] = units.len();
            let unit = &problem.units[m];
            merged.cpu += unit.cpu;
            merged.pin = merged.pin.or(unit.pin);
            merged.previous_total += unit.previous_total;
            for &(h, c) in &unit.previous {
                match merged.previous.iter_mut().find(|(ph, _)| *ph == h) {
                    Some((_, n)) => *n += c,
                    None => merged.previous.push((h, c)),
                }
            }
        }
        units.push(merged);
    }
    if units.len() * 10 > n * 9 {
        return None;
    }
    let mut edges: BTreeMap<(usize, usize), u32> = BTreeMap::new();
    for &(a, b, w) in &problem.edges {
        let (ca, cb) = (coarse_of[a], coarse_of[b]);
        if ca != cb {
            *edges.entry((ca.min(cb), ca.max(cb))).or_default() += w;
        }
    }
    Some((
        Problem {
            hosts: problem.hosts.clone(),
            units,
            edges: edges.into_iter().map(|((a, b), w)| (a, b, w)).collect(),
        },
        coarse_of,
    ))
}

/// Multilevel placement with a few contraction orders (fewer for large orchestras); the best.
pub fn place(problem: &Problem, weights: &Weights, deadline: Option<Instant>) -> Vec<usize> {
    let tries = match problem.units.len() {
        0..=500 => 3,
        501..=1000 => 2,
        _ => 1,
    };
    (0..tries)
        .map(|seed| place_seeded(problem, weights, seed, deadline))
        .map(|at| (problem.cost(&at, weights).total, at))
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, at)| at)
        .expect("at least one try")
}

/// Place the coarsest problem well, then project and refine level by level.
fn place_seeded(
    problem: &Problem,
    weights: &Weights,
    seed: u64,
    deadline: Option<Instant>,
) -> Vec<usize> {
    if problem.units.len() > COARSEST {
        if let Some((coarse, coarse_of)) = coarsen(problem, seed, None) {
            let coarse_at = place_seeded(&coarse, weights, seed, deadline);
            let at: Vec<usize> = coarse_of.iter().map(|c| coarse_at[*c]).collect();
            return polish(problem, weights, at, deadline);
        }
    }
    coarsest(
        problem,
        weights,
        heuristic::construct(problem, weights),
        deadline,
    )
}

fn polish(
    problem: &Problem,
    weights: &Weights,
    at: Vec<usize>,
    deadline: Option<Instant>,
) -> Vec<usize> {
    let mut state = State::new(problem, weights, at);
    heuristic::refine(&mut state, 6, deadline);
    heuristic::swaps(&mut state, deadline);
    heuristic::refine(&mut state, 4, deadline);
    state.at
}

/// A V-cycle around an existing placement: contract only units that share a host, refine
/// from the coarsest level back down. Moves at coarse levels shift whole runs of a chain or
/// whole subtrees between hosts. Never returns anything worse than `at`.
pub fn v_cycle(
    problem: &Problem,
    weights: &Weights,
    at: Vec<usize>,
    seed: u64,
    deadline: Option<Instant>,
) -> Vec<usize> {
    let before = problem.cost(&at, weights).total;
    let improved = cycle(problem, weights, at.clone(), seed, deadline);
    if problem.cost(&improved, weights).total < before - 1e-9 {
        improved
    } else {
        at
    }
}

fn cycle(
    problem: &Problem,
    weights: &Weights,
    at: Vec<usize>,
    seed: u64,
    deadline: Option<Instant>,
) -> Vec<usize> {
    if problem.units.len() > COARSEST {
        if let Some((coarse, coarse_of)) = coarsen(problem, seed, Some(&at)) {
            let mut coarse_at = vec![0; coarse.units.len()];
            for (u, c) in coarse_of.iter().enumerate() {
                coarse_at[*c] = at[u];
            }
            let coarse_at = cycle(&coarse, weights, coarse_at, seed, deadline);
            let projected: Vec<usize> = coarse_of.iter().map(|c| coarse_at[*c]).collect();
            return polish(problem, weights, projected, deadline);
        }
    }
    coarsest(problem, weights, at, deadline)
}

/// The bottom of a cycle: refine, then search exactly (within a node budget) when small.
fn coarsest(
    problem: &Problem,
    weights: &Weights,
    at: Vec<usize>,
    deadline: Option<Instant>,
) -> Vec<usize> {
    let at = polish(problem, weights, at, deadline);
    if problem.units.len() <= COARSEST {
        return exact::solve(
            problem,
            weights,
            &at,
            COARSEST_NODES,
            deadline,
            exact::Scope::Part,
        )
        .assignment;
    }
    at
}
