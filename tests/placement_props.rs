//! Properties of the placement solver on random small orchestras: it finds the brute-force
//! optimum and says so, pins hold, it is deterministic, and an unchanged orchestra stays put.

use cloud_orchestra::placement::problem::{HostSlot, Unit};
use cloud_orchestra::placement::{solve, Options, Problem, Weights};
use proptest::prelude::*;

/// Random problems: `hosts` × `cores` each, `units` of cpu 0–2 (some pinned), and between
/// `edge_factor.0` and `edge_factor.1` connections per unit.
fn problems(
    hosts: std::ops::RangeInclusive<usize>,
    units: std::ops::RangeInclusive<usize>,
    cores: std::ops::RangeInclusive<u32>,
    pinned: f64,
    edge_factor: (usize, usize),
) -> impl Strategy<Value = Problem> {
    (hosts, units).prop_flat_map(move |(hosts, units)| {
        let host_cores = prop::collection::vec(cores.clone(), hosts);
        let unit_specs =
            prop::collection::vec((0u32..=2, prop::option::weighted(pinned, 0..hosts)), units);
        let edges = prop::collection::vec(
            (0..units, 0..units, 1u32..=2),
            units * edge_factor.0..=units * edge_factor.1,
        );
        (host_cores, unit_specs, edges).prop_map(move |(cores, specs, raw_edges)| {
            let mut merged = std::collections::BTreeMap::new();
            for (a, b, w) in raw_edges {
                if a != b {
                    *merged.entry((a.min(b), a.max(b))).or_insert(0) += w;
                }
            }
            Problem {
                hosts: cores
                    .iter()
                    .enumerate()
                    .map(|(i, c)| HostSlot {
                        name: format!("h{i}"),
                        cores: *c,
                    })
                    .collect(),
                units: specs
                    .iter()
                    .enumerate()
                    .map(|(i, (cpu, pin))| Unit {
                        blocks: vec![format!("b{i}")],
                        cpu: *cpu,
                        pin: *pin,
                        previous: vec![],
                        previous_total: 0,
                    })
                    .collect(),
                edges: merged.into_iter().map(|((a, b), w)| (a, b, w)).collect(),
            }
        })
    })
}

fn problem_strategy() -> impl Strategy<Value = Problem> {
    problems(1..=3, 1..=7, 1..=3, 0.2, (0, 2))
}

fn brute_force(problem: &Problem, weights: &Weights) -> f64 {
    let (n, h) = (problem.units.len(), problem.hosts.len());
    let mut best = f64::INFINITY;
    let mut at = vec![0usize; n];
    for code in 0..h.pow(n as u32) {
        let mut c = code;
        for slot in at.iter_mut() {
            *slot = c % h;
            c /= h;
        }
        if problem.pins_hold(&at) {
            best = best.min(problem.cost(&at, weights).total);
        }
    }
    best
}

fn with_previous(problem: &Problem, at: &[usize]) -> Problem {
    let mut p = problem.clone();
    for (unit, host) in p.units.iter_mut().zip(at) {
        unit.previous = vec![(*host, unit.blocks.len() as u32)];
        unit.previous_total = unit.blocks.len() as u32;
    }
    p
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn equals_the_brute_force_optimum(problem in problem_strategy(), beta in prop_oneof![Just(1.0), Just(0.5), Just(3.0)]) {
        let options = Options { weights: Weights { alpha: 100.0, beta }, ..Options::default() };
        let (at, optimal) = solve(&problem, &options);
        prop_assert!(problem.pins_hold(&at));
        prop_assert!(optimal, "small instances are proven");
        let best = brute_force(&problem, &options.weights);
        prop_assert!((problem.cost(&at, &options.weights).total - best).abs() < 1e-9);
        // With a previous placement (of an arbitrary assignment) too.
        let shifted: Vec<usize> = at.iter().map(|h| (h + 1) % problem.hosts.len()).collect();
        let moved = with_previous(&problem, &shifted);
        let (at2, _) = solve(&moved, &options);
        prop_assert!((moved.cost(&at2, &options.weights).total - brute_force(&moved, &options.weights)).abs() < 1e-9);
    }

    #[test]
    fn deterministic_and_stable(problem in problem_strategy()) {
        let options = Options::default();
        let (first, _) = solve(&problem, &options);
        let (again, _) = solve(&problem, &options);
        prop_assert_eq!(&first, &again);
        let unchanged = with_previous(&problem, &first);
        let (kept, _) = solve(&unchanged, &options);
        prop_assert_eq!(&kept, &first, "an unchanged orchestra gives the identical placement");
        prop_assert_eq!(unchanged.cost(&kept, &options.weights).moved, 0);
    }
}

fn large_problem_strategy() -> impl Strategy<Value = Problem> {
    problems(2..=6, 25..=60, 1..=12, 0.15, (1, 2))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    /// Beyond the exact solver's size: pins hold, the result never loses to the greedy start
    /// or the overflow bound, and the heuristic path is deterministic and stable.
    #[test]
    fn heuristic_path_keeps_pins_determinism_and_stability(problem in large_problem_strategy()) {
        let options = Options { time_limit: std::time::Duration::from_secs(5), ..Options::default() };
        let (at, _) = solve(&problem, &options);
        prop_assert!(problem.pins_hold(&at));
        let cost = problem.cost(&at, &options.weights);
        let greedy = cloud_orchestra::placement::greedy(&problem, &options.weights);
        prop_assert!(cost.total <= problem.cost(&greedy, &options.weights).total + 1e-9);
        prop_assert!(cost.total + 1e-9 >= cloud_orchestra::placement::lower_bound(&problem, &options.weights));
        let (again, _) = solve(&problem, &options);
        prop_assert_eq!(&again, &at);
        let unchanged = with_previous(&problem, &at);
        let (kept, _) = solve(&unchanged, &options);
        prop_assert_eq!(unchanged.cost(&kept, &options.weights).moved, 0, "nothing moves");
    }
}
