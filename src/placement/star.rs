//! The star bound: what the connections around one unit must cut when no host can hold all
//! of its neighbours. Wherever unit `m` goes, its neighbours that share its host fit in the
//! cores that host has left after its pins and `m` (a fractional knapsack, best weight per
//! core first), or each core beyond costs `alpha` — no less than what a neighbour brings per
//! core. So the cost is at least, over units `m`, the least over hosts of the weight around
//! `m` that the knapsack cannot keep. Every connection of a fan-in touches its mixer, so there
//! the bound is the optimum.

use super::problem::Problem;
use super::Weights;

/// The star bound of `problem` (0 when `alpha` is too small for the argument).
pub fn bound(problem: &Problem, weights: &Weights) -> f64 {
    let adjacency = problem.adjacency();
    let units = &problem.units;
    let heavy = adjacency
        .iter()
        .flatten()
        .any(|&(v, w)| units[v].cpu > 0 && w as f64 > weights.alpha * units[v].cpu as f64);
    if heavy {
        return 0.0;
    }
    let mut pinned_cpu = vec![0u64; problem.hosts.len()];
    for unit in units {
        if let Some(p) = unit.pin {
            pinned_cpu[p] += unit.cpu as u64;
        }
    }
    let mut star = 0.0f64;
    for (m, around) in adjacency.iter().enumerate() {
        let total: f64 = around.iter().map(|(_, w)| *w as f64).sum();
        if total <= star {
            continue;
        }
        // Unpinned neighbours needing cores, best weight per core first.
        let mut movable: Vec<(f64, u64)> = around
            .iter()
            .filter(|(v, _)| units[*v].pin.is_none() && units[*v].cpu > 0)
            .map(|&(v, w)| (w as f64, units[v].cpu as u64))
            .collect();
        movable.sort_by(|a, b| (b.0 / b.1 as f64).total_cmp(&(a.0 / a.1 as f64)));
        let free_riders: f64 = around
            .iter()
            .filter(|(v, _)| units[*v].pin.is_none() && units[*v].cpu == 0)
            .map(|(_, w)| *w as f64)
            .sum();
        let mut worst = total;
        for (h, host) in problem.hosts.iter().enumerate() {
            if units[m].pin.is_some_and(|p| p != h) {
                continue;
            }
            let own = if units[m].pin.is_none() {
                units[m].cpu as u64
            } else {
                0
            };
            let mut left = (host.cores as u64).saturating_sub(pinned_cpu[h] + own) as f64;
            let mut kept: f64 = free_riders
                + around
                    .iter()
                    .filter(|(v, _)| units[*v].pin == Some(h))
                    .map(|(_, w)| *w as f64)
                    .sum::<f64>();
            for &(w, cpu) in &movable {
                if left <= 0.0 {
                    break;
                }
                let take = (left / cpu as f64).min(1.0);
                kept += take * w;
                left -= take * cpu as f64;
            }
            worst = worst.min(total - kept);
        }
        star = star.max(worst);
    }
    star
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::brute;
    use crate::placement::generate::{generate_tight, Family, HostSizes};

    #[test]
    fn never_above_the_optimum() {
        let weights = Weights::default();
        for family in Family::ALL {
            for sizes in HostSizes::ALL {
                for seed in 0..8 {
                    let problem = generate_tight(family, 8, 3, seed, sizes, 0.25);
                    let optimum = brute::optimum(&problem, &weights);
                    let star = bound(&problem, &weights);
                    assert!(
                        star <= optimum + 1e-9,
                        "{family} seed {seed}: {star} > {optimum}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_fan_in_is_bounded_by_what_its_mixer_host_cannot_hold() {
        // Seven one-core voices into a mixer on hosts of three cores: the mixer's host keeps
        // two voices at most, five connections are cut.
        let mut problem = generate_tight(Family::FanIn, 9, 3, 1, HostSizes::Equal, 0.0);
        for unit in &mut problem.units {
            unit.cpu = unit.cpu.min(1);
        }
        for host in &mut problem.hosts {
            host.cores = 3;
        }
        for edge in &mut problem.edges {
            edge.2 = 1;
        }
        assert_eq!(bound(&problem, &Weights::default()), 5.0);
        assert_eq!(brute::optimum(&problem, &Weights::default()), 5.0);
    }
}
