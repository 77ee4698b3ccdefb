//! Brute force over every assignment: the reference the exact search and its bounds are
//! tested against (tests only).

use super::problem::Problem;
use super::Weights;

/// The least cost of any assignment that keeps the pins and the units `fixed` where they are.
pub fn best_completion(problem: &Problem, weights: &Weights, fixed: &[Option<usize>]) -> f64 {
    let hosts = problem.hosts.len();
    let free: Vec<usize> = (0..problem.units.len())
        .filter(|&u| fixed[u].is_none())
        .collect();
    let mut at: Vec<usize> = fixed.iter().map(|f| f.unwrap_or(0)).collect();
    let mut best = f64::INFINITY;
    for code in 0..hosts.pow(free.len() as u32) {
        let mut c = code;
        for &u in &free {
            at[u] = c % hosts;
            c /= hosts;
        }
        if problem.pins_hold(&at) {
            best = best.min(problem.cost(&at, weights).total);
        }
    }
    best
}

/// The least cost of any assignment that keeps the pins.
pub fn optimum(problem: &Problem, weights: &Weights) -> f64 {
    best_completion(problem, weights, &vec![None; problem.units.len()])
}

/// A partial assignment to check a bound on: host per unit (`usize::MAX` when unplaced), with
/// what the placed units cost among themselves and the best completion, by brute force.
pub struct PartialCase {
    pub name: String,
    pub problem: Problem,
    pub at: Vec<usize>,
    pub unplaced: Vec<usize>,
    /// Free cores per host.
    pub free: Vec<u64>,
    pub placed_cost: f64,
    pub best: f64,
}

impl PartialCase {
    /// Fails unless `bound` on what the unplaced units add is no more than the best does.
    pub fn assert_below_best(&self, bound: f64) {
        assert!(
            self.placed_cost + bound <= self.best + 1e-9,
            "{}: {} + {bound} > {}",
            self.name,
            self.placed_cost,
            self.best
        );
    }
}

/// Partial assignments of small tight instances of every family on mixed and equal hosts:
/// pinned units first (as the search places them), then a growing prefix of the others, each
/// on a host drawn from the seed.
pub fn partial_cases(weights: &Weights) -> Vec<PartialCase> {
    use super::generate::{generate_tight, Family, HostSizes};
    let mut out = Vec::new();
    for family in Family::ALL {
        for sizes in HostSizes::ALL {
            for seed in 0..8 {
                let problem = generate_tight(family, 8, 3, seed, sizes, 0.15);
                let (n, hosts) = (problem.units.len(), problem.hosts.len());
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by_key(|&u| problem.units[u].pin.is_none());
                for placed in 0..=n {
                    let mut at = vec![usize::MAX; n];
                    let mut load = vec![0u64; hosts];
                    for &u in &order[..placed] {
                        let unit = &problem.units[u];
                        at[u] = unit.pin.unwrap_or((u * 5 + seed as usize) % hosts);
                        load[at[u]] += unit.cpu as u64;
                    }
                    let free = problem
                        .hosts
                        .iter()
                        .zip(&load)
                        .map(|(h, l)| (h.cores as u64).saturating_sub(*l))
                        .collect();
                    // The placed units alone: the others take no cores, move nothing and
                    // connect to nothing.
                    let mut only = problem.clone();
                    let is_placed: Vec<bool> = at.iter().map(|h| *h != usize::MAX).collect();
                    only.edges.retain(|e| is_placed[e.0] && is_placed[e.1]);
                    for (unit, _) in only.units.iter_mut().zip(&is_placed).filter(|p| !*p.1) {
                        (unit.cpu, unit.previous_total) = (0, 0);
                        unit.previous.clear();
                    }
                    let anywhere: Vec<usize> = at.iter().map(|h| (*h).min(hosts - 1)).collect();
                    let fixed: Vec<Option<usize>> = at
                        .iter()
                        .map(|h| (*h != usize::MAX).then_some(*h))
                        .collect();
                    out.push(PartialCase {
                        name: format!("{family} {} seed {seed}, {placed} placed", sizes.name()),
                        placed_cost: only.cost(&anywhere, weights).total,
                        best: best_completion(&problem, weights, &fixed),
                        unplaced: order[placed..].to_vec(),
                        problem: problem.clone(),
                        at,
                        free,
                    });
                }
            }
        }
    }
    out
}
