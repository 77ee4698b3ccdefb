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
