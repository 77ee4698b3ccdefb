//! Generated placement instances that look like real orchestras, for benchmarks and tests.
//!
//! Every generator is a pure function of its arguments and seed (a local splitmix64, no
//! dependency), so a benchmark, a test and the offline yardstick all see the same instance.
//!
//! What a generated orchestra looks like:
//! - one unit per block; a block costs 1 core, about one in ten costs 2 (a heavier synth or
//!   a reverb), the one big mixer of a fan-in costs 2, and the last unit is always a `dac`
//!   sink costing 0 cores;
//! - about one connection in six is a stereo link (weight 2: two port-level connections);
//! - host cores start as a uniform draw from 1..=16 and are then nudged one core at a time
//!   (staying within 1..=16) until they add up to a capacity target: for seven instances in
//!   eight (drawn from the seed) the target is 10–30 % above the total cpu, so everything
//!   fits and the cut decides; for one in eight it is 90–100 % of the total cpu, an
//!   over-committed rig where some overflow cannot be avoided. Few hosts for many blocks
//!   (16 cores each at most) and pins crowding a small host also force overflow;
//! - `pinned_fraction` of the units (rounded) are pinned to uniformly random hosts; the `dac`
//!   is the first one pinned, as a sound card sits on one machine.
//!
//! [`generate_tight`] makes the same orchestras on a tight rig: the total cpu is 90–100 % of
//! the total cores, on hosts of mixed sizes or all of one size. Everything (nearly) fits, so
//! the packing, not the overflow, decides the cut: the hardest case for the heuristic.

use super::problem::{HostSlot, Problem, Unit};
use std::collections::BTreeMap;

/// Shapes of orchestras.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// One long signal chain: source → effect → … → dac.
    Chain,
    /// Voices all feeding one mixer (a unit with many inputs) → dac.
    FanIn,
    /// A fan-in tree: leaves → submixers → … → master → dac, 2–6 inputs per mixer.
    Tree,
    /// A random DAG in which every block has at most 3 inputs and at most 3 outputs, mostly
    /// wired to blocks made shortly before it (patches are local), sometimes far away.
    RandomDag,
    /// Many short voices osc → filter → gain, each into one mixer → (effects) → dac.
    ParallelVoices,
}

impl Family {
    pub const ALL: [Family; 5] = [
        Family::Chain,
        Family::FanIn,
        Family::Tree,
        Family::RandomDag,
        Family::ParallelVoices,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Family::Chain => "chain",
            Family::FanIn => "fan-in",
            Family::Tree => "tree",
            Family::RandomDag => "random-dag",
            Family::ParallelVoices => "parallel-voices",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// splitmix64: tiny, fast, and good enough to shape test instances.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5E_ED0F_0C7E_572A)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 11) as u128 * n as u128) >> 53) as usize
    }

    /// Uniform in lo..=hi.
    fn between(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Units and connections under construction; edges are merged when the problem is built.
struct Graph {
    units: Vec<Unit>,
    edges: BTreeMap<(usize, usize), u32>,
}

impl Graph {
    fn new() -> Graph {
        Graph {
            units: Vec::new(),
            edges: BTreeMap::new(),
        }
    }

    fn add(&mut self, name: String, cpu: u32) -> usize {
        self.units.push(Unit {
            blocks: vec![name],
            cpu,
            pin: None,
            previous: Vec::new(),
            previous_total: 0,
        });
        self.units.len() - 1
    }

    /// A synth or effect: 1 core, sometimes 2.
    fn block(&mut self, rng: &mut Rng, name: String) -> usize {
        let cpu = if rng.chance(0.1) { 2 } else { 1 };
        self.add(name, cpu)
    }

    fn into_problem(self, hosts: Vec<HostSlot>) -> Problem {
        Problem {
            hosts,
            units: self.units,
            edges: self
                .edges
                .into_iter()
                .map(|((a, b), w)| (a, b, w))
                .collect(),
        }
    }

    /// A connection, mono or (sometimes) stereo.
    fn connect(&mut self, rng: &mut Rng, a: usize, b: usize) {
        let weight = if rng.chance(1.0 / 6.0) { 2 } else { 1 };
        *self.edges.entry((a.min(b), a.max(b))).or_default() += weight;
    }
}

/// Host cores of the roomy rigs `generate` makes.
const ROOMY_SIZES: (u32, u32) = (1, 16);

/// How the hosts of a tight rig are sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostSizes {
    /// Cores drawn from a quarter to twice the mean, then nudged to the capacity target.
    Mixed,
    /// Every host has the same cores (interchangeable hosts, as in a rack of one model).
    Equal,
}

impl HostSizes {
    pub const ALL: [HostSizes; 2] = [HostSizes::Mixed, HostSizes::Equal];

    pub fn name(self) -> &'static str {
        match self {
            HostSizes::Mixed => "mixed",
            HostSizes::Equal => "equal",
        }
    }
}

/// An orchestra of `blocks` units (exactly) on `hosts` hosts (at least 1).
pub fn generate(
    family: Family,
    blocks: usize,
    hosts: usize,
    seed: u64,
    pinned_fraction: f64,
) -> Problem {
    let hosts = hosts.max(1);
    let mut rng = family_rng(family, seed);
    let mut g = orchestra(family, blocks, &mut rng);
    let cpu: u64 = g.units.iter().map(|u| u.cpu as u64).sum();
    let cores = draw_cores(&mut rng, hosts, ROOMY_SIZES);
    let headroom = if rng.chance(1.0 / 8.0) {
        0.9 + 0.1 * rng.unit()
    } else {
        1.1 + 0.2 * rng.unit()
    };
    let target = (cpu as f64 * headroom).round() as u64;
    let host_slots = nudge(&mut rng, cores, target, ROOMY_SIZES);
    pin(&mut g.units, &mut rng, hosts, pinned_fraction);
    g.into_problem(host_slots)
}

/// The orchestra `generate` makes, on a tight rig: its total cpu is 90–100 % of the total
/// cores (drawn from the seed), on hosts of `sizes`. Where equal hosts cannot hit that range
/// (a whole core per host is a coarse step on few blocks), blocks get a second core until they
/// do.
pub fn generate_tight(
    family: Family,
    blocks: usize,
    hosts: usize,
    seed: u64,
    sizes: HostSizes,
    pinned_fraction: f64,
) -> Problem {
    let hosts = hosts.max(1);
    let mut rng = family_rng(family, seed ^ 0x7167_4854);
    let mut g = orchestra(family, blocks, &mut rng);
    let fraction = 0.9 + 0.1 * rng.unit();
    let mut cpu: u64 = g.units.iter().map(|u| u.cpu as u64).sum();
    let host_slots = match sizes {
        HostSizes::Mixed => {
            let target = ((cpu as f64 / fraction).round() as u64).clamp(cpu, cpu * 10 / 9);
            // From a quarter to twice the mean host (4..=16 on ten blocks a host), so that the
            // target is always reachable.
            let mean = target.div_ceil(hosts as u64).max(1) as u32;
            let sizes = (mean.div_ceil(4), 2 * mean);
            let cores = draw_cores(&mut rng, hosts, sizes);
            nudge(&mut rng, cores, target, sizes)
        }
        HostSizes::Equal => {
            let each = ((cpu as f64 / fraction / hosts as f64).round() as u64)
                .max(cpu.div_ceil(hosts as u64))
                .max(1);
            let cores = each * hosts as u64;
            // Too coarse a step: give single-core blocks a second core until within range.
            let mut singles: Vec<usize> = (0..g.units.len())
                .filter(|&u| g.units[u].cpu == 1)
                .collect();
            while cpu * 10 < cores * 9 && !singles.is_empty() {
                let u = singles.swap_remove(rng.below(singles.len()));
                g.units[u].cpu = 2;
                cpu += 1;
            }
            (0..hosts)
                .map(|h| HostSlot {
                    name: format!("host{h}"),
                    cores: each as u32,
                })
                .collect()
        }
    };
    pin(&mut g.units, &mut rng, hosts, pinned_fraction);
    g.into_problem(host_slots)
}

fn family_rng(family: Family, seed: u64) -> Rng {
    Rng::new(seed ^ (family as u64).wrapping_mul(0xA24B_AED4_963E_E407))
}

/// The units and connections of one orchestra of `family`, the dac last.
fn orchestra(family: Family, blocks: usize, rng: &mut Rng) -> Graph {
    let mut g = Graph::new();
    if blocks > 0 {
        let body = blocks - 1;
        let outputs = match family {
            Family::Chain => chain(&mut g, rng, body),
            Family::FanIn => fan_in(&mut g, rng, body),
            Family::Tree => tree(&mut g, rng, body),
            Family::RandomDag => random_dag(&mut g, rng, body),
            Family::ParallelVoices => parallel_voices(&mut g, rng, body),
        };
        let dac = g.add("dac".to_string(), 0);
        for out in outputs {
            g.connect(rng, out, dac);
        }
    }
    g
}

/// Returns the units that feed the dac.
fn chain(g: &mut Graph, rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut last = None;
    for i in 0..n {
        let name = if i == 0 {
            "src".to_string()
        } else {
            format!("fx{i}")
        };
        let u = g.block(rng, name);
        if let Some(prev) = last {
            g.connect(rng, prev, u);
        }
        last = Some(u);
    }
    last.into_iter().collect()
}

fn fan_in(g: &mut Graph, rng: &mut Rng, n: usize) -> Vec<usize> {
    if n <= 1 {
        return (0..n).map(|i| g.block(rng, format!("voice{i}"))).collect();
    }
    let voices: Vec<usize> = (0..n - 1)
        .map(|i| g.block(rng, format!("voice{i}")))
        .collect();
    let mixer = g.add("mixer".to_string(), 2);
    for v in voices {
        g.connect(rng, v, mixer);
    }
    vec![mixer]
}

/// Top-down, breadth first: every node taken from the queue gets 2–6 inputs while the budget
/// lasts, so the leaves end up on the last levels as in a real mixing tree.
fn tree(g: &mut Graph, rng: &mut Rng, n: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let master = g.add("master".to_string(), 1);
    let mut made = 1;
    let mut queue = std::collections::VecDeque::from([master]);
    let mut children_of: Vec<(usize, Vec<usize>)> = Vec::new();
    while made < n {
        let Some(parent) = queue.pop_front() else {
            break;
        };
        let k = rng.between(2, 6).min(n - made);
        let mut children = Vec::with_capacity(k);
        for _ in 0..k {
            let c = g.block(rng, format!("n{}", g.units.len()));
            children.push(c);
            queue.push_back(c);
        }
        made += k;
        children_of.push((parent, children));
    }
    for (parent, children) in children_of {
        let inner = g.units[parent].blocks[0] != "master";
        if inner {
            g.units[parent].blocks[0] = format!("sub{parent}");
        }
        for c in children {
            g.connect(rng, c, parent);
        }
    }
    for u in 0..g.units.len() {
        if g.units[u].blocks[0].starts_with('n') {
            g.units[u].blocks[0] = format!("leaf{u}");
        }
    }
    vec![master]
}

const DAG_DEGREE: usize = 3;

/// Blocks in topological order; each takes 1–3 inputs among earlier blocks with a free output,
/// nine times in ten from the last 12 blocks, else from anywhere.
fn random_dag(g: &mut Graph, rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut outs = vec![0usize; n];
    for i in 0..n {
        let u = g.block(rng, format!("b{i}"));
        if i == 0 {
            continue;
        }
        let wanted = rng.between(1, DAG_DEGREE);
        let mut inputs: Vec<usize> = Vec::with_capacity(wanted);
        for _ in 0..wanted * 4 {
            if inputs.len() == wanted {
                break;
            }
            let from = if rng.chance(0.9) {
                i - 1 - rng.below(i.min(12))
            } else {
                rng.below(i)
            };
            if outs[from] < DAG_DEGREE && !inputs.contains(&from) {
                inputs.push(from);
            }
        }
        for from in inputs {
            outs[from] += 1;
            g.connect(rng, from, u);
        }
    }
    // The dac (in-degree ≤ 3 too) listens to the latest blocks that still have a free output.
    (0..n)
        .rev()
        .filter(|&b| outs[b] < DAG_DEGREE)
        .take(DAG_DEGREE.min(n))
        .collect()
}

/// Voices of osc → filter → gain into one mixer; blocks left over become effects after it.
fn parallel_voices(g: &mut Graph, rng: &mut Rng, n: usize) -> Vec<usize> {
    if n < 4 {
        return chain(g, rng, n);
    }
    let voices = (n - 1) / 3;
    let mut gains = Vec::with_capacity(voices);
    for v in 0..voices {
        let osc = g.block(rng, format!("osc{v}"));
        let filter = g.block(rng, format!("filter{v}"));
        let gain = g.add(format!("gain{v}"), 1);
        g.connect(rng, osc, filter);
        g.connect(rng, filter, gain);
        gains.push(gain);
    }
    let mixer = g.add("mixer".to_string(), 2);
    for gain in gains {
        g.connect(rng, gain, mixer);
    }
    let mut last = mixer;
    for e in 0..n - 1 - 3 * voices {
        let fx = g.block(rng, format!("fx{e}"));
        g.connect(rng, last, fx);
        last = fx;
    }
    vec![last]
}

/// Cores per host drawn uniformly from `sizes`, before `nudge` fits them to a total.
fn draw_cores(rng: &mut Rng, hosts: usize, sizes: (u32, u32)) -> Vec<u32> {
    (0..hosts)
        .map(|_| rng.between(sizes.0 as usize, sizes.1 as usize) as u32)
        .collect()
}

/// Nudges random hosts one core at a time, within `sizes`, until the cores add up to `target`
/// (clamped to what the sizes allow).
fn nudge(rng: &mut Rng, mut cores: Vec<u32>, target: u64, sizes: (u32, u32)) -> Vec<HostSlot> {
    let hosts = cores.len();
    let target = target.clamp(sizes.0 as u64 * hosts as u64, sizes.1 as u64 * hosts as u64);
    let mut total: u64 = cores.iter().map(|&c| c as u64).sum();
    while total != target {
        let h = rng.below(hosts);
        if total < target && cores[h] < sizes.1 {
            cores[h] += 1;
            total += 1;
        } else if total > target && cores[h] > sizes.0 {
            cores[h] -= 1;
            total -= 1;
        }
    }
    cores
        .into_iter()
        .enumerate()
        .map(|(h, cores)| HostSlot {
            name: format!("host{h}"),
            cores,
        })
        .collect()
}

/// Pins `round(fraction · units)` distinct units to random hosts, the dac (last unit) first.
fn pin(units: &mut [Unit], rng: &mut Rng, hosts: usize, fraction: f64) {
    let n = units.len();
    let count = ((fraction.clamp(0.0, 1.0) * n as f64).round() as usize).min(n);
    if count == 0 {
        return;
    }
    // A partial Fisher–Yates over the other units picks the rest without repeats.
    let mut order: Vec<usize> = (0..n - 1).collect();
    let mut chosen = vec![n - 1];
    for i in 0..count - 1 {
        let j = i + rng.below(order.len() - i);
        order.swap(i, j);
        chosen.push(order[i]);
    }
    for u in chosen {
        units[u].pin = Some(rng.below(hosts));
    }
}

/// The same problem with `assignment` as the previous placement: unit `u` was wholly on
/// `assignment[u]`. Units past the end of `assignment` (added since) get no previous host.
pub fn with_previous(problem: &Problem, assignment: &[usize]) -> Problem {
    let mut next = problem.clone();
    for (u, unit) in next.units.iter_mut().enumerate() {
        match assignment.get(u) {
            Some(&h) => {
                let n = unit.blocks.len() as u32;
                unit.previous = vec![(h, n)];
                unit.previous_total = n;
            }
            None => {
                unit.previous = Vec::new();
                unit.previous_total = 0;
            }
        }
    }
    next
}

/// The same problem plus one new unit (1 core, unpinned, no previous host) connected to one or
/// two existing units: a live edit that adds a block. Existing units keep their `previous`.
pub fn one_block_change(problem: &Problem, seed: u64) -> Problem {
    let mut rng = Rng::new(seed ^ 0x0B10_C4ED);
    let mut next = problem.clone();
    let n = next.units.len();
    let name = (0..)
        .map(|i| format!("added{i}"))
        .find(|c| !next.units.iter().any(|u| u.blocks.contains(c)));
    next.units.push(Unit {
        blocks: vec![name.expect("an unused name")],
        cpu: 1,
        pin: None,
        previous: Vec::new(),
        previous_total: 0,
    });
    if n > 0 {
        let first = rng.below(n);
        let mut neighbours = vec![first];
        if n > 1 && rng.chance(0.5) {
            // A second neighbour near the first: an insert into an existing patch.
            let second = (first + 1 + rng.below(n.min(8) - 1)) % n;
            neighbours.push(second);
        }
        for v in neighbours {
            next.edges.push((v, n, 1));
        }
        next.edges.sort_unstable();
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [(usize, usize); 6] =
        [(1, 1), (2, 2), (10, 2), (100, 10), (1000, 100), (2000, 200)];

    fn degrees(p: &Problem) -> (Vec<usize>, Vec<usize>) {
        // Generators always connect an earlier unit to a later one (dac last).
        let mut ins = vec![0; p.units.len()];
        let mut outs = vec![0; p.units.len()];
        for &(a, b, _) in &p.edges {
            outs[a] += 1;
            ins[b] += 1;
        }
        (ins, outs)
    }

    #[test]
    fn sizes_are_exact_and_edges_well_formed() {
        for family in Family::ALL {
            for (blocks, hosts) in SIZES {
                let p = generate(family, blocks, hosts, 7, 0.1);
                assert_eq!(p.units.len(), blocks, "{family} {blocks}");
                assert_eq!(p.hosts.len(), hosts, "{family} {blocks}");
                assert!(
                    p.hosts.iter().all(|h| (1..=16).contains(&h.cores)),
                    "{family} {blocks}"
                );
                let dac = p.units.last().unwrap();
                assert_eq!((dac.blocks[0].as_str(), dac.cpu), ("dac", 0));
                assert!(p.units[..blocks - 1]
                    .iter()
                    .all(|u| (1..=2).contains(&u.cpu)));
                assert!(
                    p.edges
                        .windows(2)
                        .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)),
                    "sorted, merged"
                );
                assert!(p
                    .edges
                    .iter()
                    .all(|&(a, b, w)| a < b && b < blocks && (1..=2).contains(&w)));
                let mut names: Vec<&String> = p.units.iter().flat_map(|u| &u.blocks).collect();
                names.sort();
                names.dedup();
                assert_eq!(names.len(), blocks, "block names are unique");
                assert!(p
                    .units
                    .iter()
                    .all(|u| u.previous.is_empty() && u.previous_total == 0));
            }
        }
    }

    #[test]
    fn connected_when_more_than_one_block() {
        for family in [
            Family::Chain,
            Family::FanIn,
            Family::Tree,
            Family::ParallelVoices,
        ] {
            let p = generate(family, 300, 30, 3, 0.0);
            assert!(
                p.edges.len() >= p.units.len() - 1,
                "{family}: a spanning tree at least"
            );
            let mut reached = vec![false; p.units.len()];
            let adj = p.adjacency();
            let mut stack = vec![p.units.len() - 1];
            while let Some(u) = stack.pop() {
                if !std::mem::replace(&mut reached[u], true) {
                    stack.extend(adj[u].iter().map(|(v, _)| *v));
                }
            }
            assert!(
                reached.iter().all(|r| *r),
                "{family}: everything reaches the dac"
            );
        }
    }

    #[test]
    fn shapes_match_their_family() {
        let fan = generate(Family::FanIn, 100, 10, 1, 0.0);
        let (ins, _) = degrees(&fan);
        assert_eq!(
            *ins.iter().max().unwrap(),
            98,
            "one mixer hears every voice"
        );
        let chain = generate(Family::Chain, 100, 10, 1, 0.0);
        assert_eq!(chain.edges.len(), 99);
        assert!(chain.edges.iter().all(|&(a, b, _)| b == a + 1));
        let tree = generate(Family::Tree, 500, 10, 1, 0.0);
        assert_eq!(tree.edges.len(), 499, "a tree");
        // Tree units are made parent first, so here an edge is (parent, input).
        let (parents, inputs) = degrees(&tree);
        assert!(
            parents[1..].iter().all(|&p| p == 1),
            "every node but the master has one parent"
        );
        assert!(
            inputs[1..].iter().all(|&i| i <= 6),
            "a submixer has at most 6 inputs"
        );
        assert!(inputs[0] <= 7, "the master: at most 6 inputs and the dac");
        let voices = generate(Family::ParallelVoices, 100, 10, 1, 0.0);
        assert_eq!(
            voices
                .units
                .iter()
                .filter(|u| u.blocks[0].starts_with("osc"))
                .count(),
            32
        );
        assert!(
            voices.units.iter().any(|u| u.blocks[0] == "fx0"),
            "the leftover blocks are effects"
        );
    }

    #[test]
    fn random_dag_degrees_are_bounded() {
        for seed in 0..20 {
            let p = generate(Family::RandomDag, 500, 20, seed, 0.1);
            let (ins, outs) = degrees(&p);
            assert!(
                ins.iter().all(|&d| d <= DAG_DEGREE),
                "seed {seed}: in-degree"
            );
            assert!(
                outs.iter().all(|&d| d <= DAG_DEGREE),
                "seed {seed}: out-degree"
            );
            assert!(
                ins[1..].iter().filter(|&&d| d == 0).count() < 50,
                "seed {seed}: mostly connected"
            );
        }
    }

    #[test]
    fn deterministic_per_seed_and_different_across_seeds() {
        for family in Family::ALL {
            let a = generate(family, 200, 20, 42, 0.15);
            assert_eq!(a, generate(family, 200, 20, 42, 0.15), "{family}");
            assert_ne!(a, generate(family, 200, 20, 43, 0.15), "{family}");
            assert_eq!(one_block_change(&a, 5), one_block_change(&a, 5));
        }
    }

    #[test]
    fn pins_are_in_range_and_counted() {
        for family in Family::ALL {
            for (seed, fraction) in [(1, 0.0), (2, 0.1), (3, 0.2)] {
                let p = generate(family, 1000, 100, seed, fraction);
                let pinned: Vec<usize> = p.units.iter().filter_map(|u| u.pin).collect();
                assert_eq!(
                    pinned.len(),
                    (fraction * 1000.0_f64).round() as usize,
                    "{family} {fraction}"
                );
                assert!(pinned.iter().all(|&h| h < 100));
                if fraction > 0.0 {
                    assert!(
                        p.units.last().unwrap().pin.is_some(),
                        "the dac is pinned first"
                    );
                }
            }
        }
    }

    #[test]
    fn capacity_mostly_covers_the_cpu() {
        let mut roomy = 0;
        for seed in 0..64 {
            let p = generate(Family::RandomDag, 1000, 100, seed, 0.1);
            let cpu: u64 = p.units.iter().map(|u| u.cpu as u64).sum();
            let cores: u64 = p.hosts.iter().map(|h| h.cores as u64).sum();
            assert!(
                cores * 10 >= cpu * 9 - 10,
                "seed {seed}: at most ~10 % short"
            );
            assert!(
                cores * 10 <= cpu * 13 + 10,
                "seed {seed}: at most ~30 % spare"
            );
            roomy += (cores >= cpu) as usize;
        }
        assert!(
            (48..64).contains(&roomy),
            "most seeds have room, some are over-committed: {roomy}"
        );
    }

    #[test]
    fn tight_rigs_hold_90_to_100_percent_cpu() {
        for family in Family::ALL {
            for sizes in HostSizes::ALL {
                for (blocks, hosts) in [(30, 4), (60, 8), (150, 15), (500, 40), (7, 3)] {
                    for seed in 0..8 {
                        let p = generate_tight(family, blocks, hosts, seed, sizes, 0.1);
                        let what =
                            format!("{family} {} {blocks}x{hosts} seed {seed}", sizes.name());
                        assert_eq!((p.units.len(), p.hosts.len()), (blocks, hosts), "{what}");
                        let cpu: u64 = p.units.iter().map(|u| u.cpu as u64).sum();
                        let cores: u64 = p.hosts.iter().map(|h| h.cores as u64).sum();
                        assert!(
                            cpu * 10 >= cores * 9 && cpu <= cores,
                            "{what}: cpu {cpu} of {cores} cores"
                        );
                        assert!(p.hosts.iter().all(|h| h.cores > 0), "{what}");
                        if sizes == HostSizes::Equal {
                            assert!(
                                p.hosts.iter().all(|h| h.cores == p.hosts[0].cores),
                                "{what}"
                            );
                        }
                        let pinned = p.units.iter().filter(|u| u.pin.is_some()).count();
                        assert_eq!(pinned, (blocks as f64 * 0.1).round() as usize, "{what}");
                    }
                }
            }
        }
        let mixed = generate_tight(Family::Tree, 150, 15, 1, HostSizes::Mixed, 0.1);
        let sizes: std::collections::BTreeSet<u32> = mixed.hosts.iter().map(|h| h.cores).collect();
        assert!(sizes.len() > 3, "mixed hosts differ: {sizes:?}");
        assert_eq!(
            generate_tight(Family::Tree, 150, 15, 1, HostSizes::Mixed, 0.1),
            mixed,
            "deterministic"
        );
    }

    #[test]
    fn with_previous_and_one_block_change() {
        let p = generate(Family::Tree, 100, 10, 9, 0.1);
        let at: Vec<usize> = (0..p.units.len()).map(|u| u % 10).collect();
        let prev = with_previous(&p, &at);
        assert_eq!(prev.cost(&at, &Default::default()).moved, 0);
        assert!(prev
            .units
            .iter()
            .zip(&at)
            .all(|(u, &h)| u.previous == vec![(h, 1)] && u.previous_total == 1));

        let changed = one_block_change(&prev, 4);
        assert_eq!(changed.units.len(), p.units.len() + 1);
        let added = changed.units.last().unwrap();
        assert!(added.previous.is_empty() && added.pin.is_none() && added.cpu == 1);
        let links = changed
            .edges
            .iter()
            .filter(|e| e.1 == p.units.len())
            .count();
        assert!((1..=2).contains(&links));
        assert!(changed
            .edges
            .windows(2)
            .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)));
        assert_eq!(
            changed.units[..p.units.len()],
            prev.units[..],
            "existing units keep their previous"
        );

        // The other order: change first, then the old assignment as previous.
        let again = with_previous(&one_block_change(&p, 4), &at);
        assert_eq!(again, changed);
    }
}
