//! Placement benchmarks over generated orchestra families: `solve` per family and size, and
//! an incremental re-plan after adding one block to a 2000-block orchestra.
//!
//! `cargo bench --bench placement` times every case with criterion and, before timing it,
//! prints one markdown table row per case (cost, optimality, time of one solve) to stderr.
//! Tight cases (`tight-mixed/…`, `tight-equal/…`: total cpu 90–100 % of the cores, on hosts of
//! mixed or equal sizes) come last; `cargo bench --bench placement -- tight` times only them.
//!
//! `PLACEMENT_DUMP_DIR=DIR cargo bench --bench placement` benchmarks nothing: it writes each
//! instance with our assignment and cost as JSON into DIR (plus a few yardstick-only sizes),
//! for `scripts/placement_yardstick.py`; `PLACEMENT_DUMP_FILTER=tight` writes only the cases
//! whose name contains it, and `PLACEMENT_TIME_LIMIT_MS` solves them with another time limit.

/// The generators are the library's unit-test file, included here rather than exported:
/// `generate.rs` finds the problem types as `super::problem`.
mod problem {
    pub use cloud_orchestra::placement::problem::{HostSlot, Problem, Unit};
}
#[path = "../src/placement/generate.rs"]
#[allow(dead_code)]
mod generate;

use cloud_orchestra::placement::{lower_bound, solve, Cost, Options, Problem};
use criterion::{BenchmarkId, Criterion, SamplingMode};
use generate::{generate, generate_tight, one_block_change, with_previous, Family, HostSizes};
use std::path::Path;
use std::time::{Duration, Instant};

/// (blocks, hosts) benchmarked.
const SIZES: [(usize, usize); 4] = [(10, 2), (100, 10), (1000, 100), (2000, 200)];
/// Extra sizes only dumped, small enough for the offline MIP to prove.
const YARDSTICK_SIZES: [(usize, usize); 3] = [(25, 4), (200, 20), (300, 30)];
/// (blocks, hosts) of the tight cases: about ten blocks a host, as in the roomy ones.
const TIGHT_SIZES: [(usize, usize); 5] = [(30, 4), (60, 8), (80, 8), (150, 15), (500, 40)];
const INCREMENTAL: (usize, usize) = (2000, 200);
const PINNED: f64 = 0.10;
/// Fewer pins on tight rigs: a pin to a full host can only make overflow, and hosts nothing is
/// pinned to stay interchangeable.
const TIGHT_PINNED: f64 = 0.05;
const SEED: u64 = 1;

struct Case {
    name: String,
    family: Family,
    pinned_fraction: f64,
    problem: Problem,
    /// Units present before a one-block change (the rest are new); all units otherwise.
    old_units: usize,
}

fn fresh_case(family: Family, blocks: usize, hosts: usize) -> Case {
    let problem = generate(family, blocks, hosts, SEED, PINNED);
    Case {
        name: format!("{}/{blocks}x{hosts}", family.name()),
        family,
        pinned_fraction: PINNED,
        old_units: problem.units.len(),
        problem,
    }
}

fn tight_case(family: Family, sizes: HostSizes, blocks: usize, hosts: usize) -> Case {
    let problem = generate_tight(family, blocks, hosts, SEED, sizes, TIGHT_PINNED);
    Case {
        name: format!("tight-{}/{}/{blocks}x{hosts}", sizes.name(), family.name()),
        family,
        pinned_fraction: TIGHT_PINNED,
        old_units: problem.units.len(),
        problem,
    }
}

/// Every tight case, by size, then family, then host sizes.
fn tight_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for (blocks, hosts) in TIGHT_SIZES {
        for family in Family::ALL {
            for sizes in HostSizes::ALL {
                cases.push(tight_case(family, sizes, blocks, hosts));
            }
        }
    }
    cases
}

/// The orchestra solved once, then one block added with that placement as the previous one.
fn incremental_case(family: Family, options: &Options) -> (Case, Vec<usize>) {
    let (blocks, hosts) = INCREMENTAL;
    let base = generate(family, blocks, hosts, SEED, PINNED);
    let (first, _) = solve(&base, options);
    let problem = with_previous(&one_block_change(&base, SEED), &first);
    let case = Case {
        name: format!("{}/{blocks}x{hosts}+1", family.name()),
        family,
        pinned_fraction: PINNED,
        old_units: base.units.len(),
        problem,
    };
    (case, first)
}

struct Outcome {
    at: Vec<usize>,
    proven: bool,
    elapsed: Duration,
}

fn run(case: &Case, options: &Options) -> Outcome {
    let start = Instant::now();
    let (at, proven) = solve(&case.problem, options);
    let elapsed = start.elapsed();
    assert_eq!(
        at.len(),
        case.problem.units.len(),
        "{}: one host per unit",
        case.name
    );
    assert!(case.problem.pins_hold(&at), "{}: pins hold", case.name);
    Outcome {
        at,
        proven,
        elapsed,
    }
}

fn header() {
    eprintln!();
    eprintln!("| case | units | hosts | time ms | total | overflow | cut | moved | optimal | lower bound |");
    eprintln!("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|");
}

fn report(case: &Case, outcome: &Outcome, options: &Options) {
    let cost = case.problem.cost(&outcome.at, &options.weights);
    eprintln!(
        "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
        case.name,
        case.problem.units.len(),
        case.problem.hosts.len(),
        outcome.elapsed.as_secs_f64() * 1e3,
        cost.total,
        cost.overflow,
        cost.cut,
        cost.moved,
        if outcome.proven { "yes" } else { "no" },
        lower_bound(&case.problem, &options.weights),
    );
}

/// Times `solve` on `case`; `outcome` (one solve done before) sizes the measurement.
fn bench_case(c: &mut Criterion, group: &str, case: &Case, outcome: &Outcome, options: &Options) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    if outcome.elapsed > Duration::from_millis(5) {
        // Ten solves of up to the time limit each, no more.
        g.sampling_mode(SamplingMode::Flat)
            .warm_up_time(Duration::from_millis(300))
            .measurement_time((outcome.elapsed * 12).max(Duration::from_millis(500)));
    } else {
        g.warm_up_time(Duration::from_millis(300))
            .measurement_time(Duration::from_secs(1));
    }
    g.bench_function(BenchmarkId::from_parameter(&case.name), |b| {
        b.iter(|| solve(std::hint::black_box(&case.problem), options))
    });
    g.finish();
}

fn benchmarks(c: &mut Criterion) {
    let options = Options::default();
    header();
    for (blocks, hosts) in SIZES {
        for family in Family::ALL {
            let case = fresh_case(family, blocks, hosts);
            let outcome = run(&case, &options);
            report(&case, &outcome, &options);
            bench_case(c, "solve", &case, &outcome, &options);
        }
    }
    let mut notes = Vec::new();
    for family in Family::ALL {
        let (case, previous) = incremental_case(family, &options);
        let outcome = run(&case, &options);
        report(&case, &outcome, &options);
        let others = (0..case.old_units)
            .filter(|&u| outcome.at[u] != previous[u])
            .count();
        let (stay_host, stay) = stay_put(&case, &previous, &options);
        notes.push(format!(
            "{}: {} other units moved, the new block went to host {}; keeping every other unit \
             and adding it to host {} would cost {} (overflow {}, cut {})",
            case.family,
            others,
            outcome.at[case.old_units],
            stay_host,
            stay.total,
            stay.overflow,
            stay.cut,
        ));
        bench_case(c, "incremental", &case, &outcome, &options);
    }
    eprintln!();
    for note in notes {
        eprintln!("{note}");
    }
    header();
    for case in tight_cases() {
        let outcome = run(&case, &options);
        report(&case, &outcome, &options);
        bench_case(c, "tight", &case, &outcome, &options);
    }
}

/// The re-plan that moves nothing: old units where they were, each new unit on the host that
/// costs least given the others. The incremental solve should never do worse than this.
fn stay_put(case: &Case, previous: &[usize], options: &Options) -> (usize, Cost) {
    let problem = &case.problem;
    let mut at = previous.to_vec();
    let mut last = 0;
    for u in case.old_units..problem.units.len() {
        at.push(0);
        let mut best = f64::INFINITY;
        for h in 0..problem.hosts.len() {
            if problem.units[u].pin.is_some_and(|p| p != h) {
                continue;
            }
            at[u] = h;
            let total = problem.cost(&at, &options.weights).total;
            if total < best {
                (best, last) = (total, h);
            }
        }
        at[u] = last;
    }
    (last, problem.cost(&at, &options.weights))
}

/// Writes every case as `{name, family, seed, pinned_fraction, weights, problem, assignment,
/// proven, solve_ms, cost}` JSON, one file per case.
fn dump(dir: &Path) {
    std::fs::create_dir_all(dir).expect("create PLACEMENT_DUMP_DIR");
    let mut options = Options::default();
    // A longer limit shows what the counts alone give (the same placements, unless the default
    // limit cut a search short).
    if let Some(ms) = std::env::var("PLACEMENT_TIME_LIMIT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        options.time_limit = Duration::from_millis(ms);
    }
    let mut cases: Vec<Case> = Vec::new();
    for (blocks, hosts) in SIZES.into_iter().chain(YARDSTICK_SIZES) {
        cases.extend(Family::ALL.map(|family| fresh_case(family, blocks, hosts)));
    }
    cases.extend(Family::ALL.map(|family| incremental_case(family, &options).0));
    cases.extend(tight_cases());
    let only = std::env::var("PLACEMENT_DUMP_FILTER").unwrap_or_default();
    cases.retain(|case| case.name.contains(&only));
    for case in &cases {
        let outcome = run(case, &options);
        let cost = case.problem.cost(&outcome.at, &options.weights);
        let json = serde_json::json!({
            "name": case.name,
            "family": case.family.name(),
            "seed": SEED,
            "pinned_fraction": case.pinned_fraction,
            "weights": { "alpha": options.weights.alpha, "beta": options.weights.beta },
            "problem": case.problem,
            "assignment": outcome.at,
            "proven": outcome.proven,
            "solve_ms": outcome.elapsed.as_secs_f64() * 1e3,
            "cost": cost,
        });
        let file = dir.join(format!("{}.json", case.name.replace('/', "_")));
        std::fs::write(&file, serde_json::to_string(&json).expect("json")).expect("write instance");
        eprintln!(
            "{}: total {} ({} ms) → {}",
            case.name,
            cost.total,
            json["solve_ms"],
            file.display()
        );
    }
}

fn main() {
    if let Some(dir) = std::env::var_os("PLACEMENT_DUMP_DIR") {
        dump(Path::new(&dir));
        return;
    }
    let mut c = Criterion::default().configure_from_args();
    benchmarks(&mut c);
    c.final_summary();
}
