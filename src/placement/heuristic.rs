//! Heuristic placement for orchestras too large to prove: a greedy construction along the
//! connection graph, Fiduccia–Mattheyses refinement (best move first, negative moves allowed,
//! rolled back to the best prefix), pairwise swaps for full hosts, and a large-neighbourhood
//! search that re-solves small groups of hosts exactly. Deterministic: every loop is bounded
//! by counts; the deadline only cuts a search short.

use super::exact;
use super::problem::{HostSlot, Problem, Unit};
use super::Weights;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Instant;

const EPS: f64 = 1e-9;

/// A complete assignment with the bookkeeping that makes move gains cheap.
pub struct State<'a> {
    pub problem: &'a Problem,
    pub weights: Weights,
    pub adjacency: Vec<Vec<(usize, u32)>>,
    pub at: Vec<usize>,
    pub load: Vec<u64>,
    /// `links[u * hosts + h]`: weight of `u`'s connections to units on `h`, kept current by
    /// `apply` so a move's gain costs O(1).
    links: Vec<u32>,
    /// Units the search may move: all, or in an incremental re-plan only those near a change.
    pub movable: Vec<bool>,
}

impl<'a> State<'a> {
    pub fn new(problem: &'a Problem, weights: &Weights, at: Vec<usize>) -> State<'a> {
        let hosts = problem.hosts.len();
        let mut load = vec![0u64; hosts];
        for (u, h) in at.iter().enumerate() {
            load[*h] += problem.units[u].cpu as u64;
        }
        let adjacency = problem.adjacency();
        let mut links = vec![0u32; problem.units.len() * hosts];
        for (u, neighbours) in adjacency.iter().enumerate() {
            for (v, w) in neighbours {
                links[u * hosts + at[*v]] += w;
            }
        }
        let movable = vec![true; problem.units.len()];
        State {
            problem,
            weights: *weights,
            adjacency,
            at,
            load,
            links,
            movable,
        }
    }

    pub fn total(&self) -> f64 {
        self.problem.cost(&self.at, &self.weights).total
    }

    fn overflow(&self, h: usize, load: u64) -> u64 {
        load.saturating_sub(self.problem.hosts[h].cores as u64)
    }

    /// Weight of `u`'s connections to units on `h`.
    fn link(&self, u: usize, h: usize) -> u32 {
        self.links[u * self.problem.hosts.len() + h]
    }

    /// Change of total cost if `u` moved to `to` (negative is better).
    pub fn move_delta(&self, u: usize, to: usize) -> f64 {
        let from = self.at[u];
        if from == to {
            return 0.0;
        }
        let unit = &self.problem.units[u];
        let cpu = unit.cpu as u64;
        let cut = self.link(u, from) as f64 - self.link(u, to) as f64;
        let over = (self.overflow(to, self.load[to] + cpu) as f64
            - self.overflow(to, self.load[to]) as f64)
            + (self.overflow(from, self.load[from] - cpu) as f64
                - self.overflow(from, self.load[from]) as f64);
        let moved = unit.moved_if_on(to) as f64 - unit.moved_if_on(from) as f64;
        cut + self.weights.alpha * over + self.weights.beta * moved
    }

    pub fn apply(&mut self, u: usize, to: usize) {
        let from = self.at[u];
        if from == to {
            return;
        }
        let cpu = self.problem.units[u].cpu as u64;
        self.load[from] -= cpu;
        self.load[to] += cpu;
        self.at[u] = to;
        let hosts = self.problem.hosts.len();
        for &(v, w) in &self.adjacency[u] {
            self.links[v * hosts + from] -= w;
            self.links[v * hosts + to] += w;
        }
    }

    /// Hosts worth trying for `u`: its neighbours' hosts, its previous host, and the host with
    /// the most free cores (room for a move that only relieves an overflow).
    fn targets(&self, u: usize) -> Vec<usize> {
        let unit = &self.problem.units[u];
        if unit.pin.is_some() || !self.movable[u] {
            return Vec::new();
        }
        let mut t: Vec<usize> = self.adjacency[u].iter().map(|(v, _)| self.at[*v]).collect();
        t.extend(unit.previous_host());
        t.push(self.roomiest());
        t.sort_unstable();
        t.dedup();
        t.retain(|h| *h != self.at[u]);
        t
    }

    pub(super) fn roomiest(&self) -> usize {
        (0..self.problem.hosts.len())
            .max_by_key(|&h| {
                (
                    self.problem.hosts[h].cores as i64 - self.load[h] as i64,
                    std::cmp::Reverse(h),
                )
            })
            .expect("at least one host")
    }

    /// The best move of `u`: (delta, target).
    fn best_move(&self, u: usize) -> Option<(f64, usize)> {
        self.targets(u)
            .into_iter()
            .map(|h| (self.move_delta(u, h), h))
            .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
    }
}

/// Greedy construction: pinned units first, then depth-first along connections (subtrees and
/// chains stay contiguous). Each unit goes where it adds least; ties go to its previous host,
/// then — if it has placed neighbours — to the fullest host that still fits (fill hosts one by
/// one), else to the emptiest (start a new region).
pub fn construct(problem: &Problem, weights: &Weights) -> Vec<usize> {
    construct_around(problem, weights, &vec![None; problem.units.len()])
}

/// `construct`, with some units already placed (`fixed`): an incremental start.
pub fn construct_around(
    problem: &Problem,
    weights: &Weights,
    fixed: &[Option<usize>],
) -> Vec<usize> {
    let n = problem.units.len();
    let adjacency = problem.adjacency();
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    let mut seeds: Vec<usize> = (0..n).collect();
    seeds.sort_by_key(|&u| {
        let unit = &problem.units[u];
        (
            unit.pin.is_none(),
            unit.previous.is_empty(),
            std::cmp::Reverse(adjacency[u].len()),
            u,
        )
    });
    for seed in seeds {
        if seen[seed] {
            continue;
        }
        let mut stack = vec![seed];
        while let Some(u) = stack.pop() {
            if seen[u] {
                continue;
            }
            seen[u] = true;
            order.push(u);
            // Visit heavier links last-pushed, so they come next.
            let mut next: Vec<(u32, usize)> = adjacency[u]
                .iter()
                .filter(|(v, _)| !seen[*v])
                .map(|(v, w)| (*w, *v))
                .collect();
            next.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
            stack.extend(next.into_iter().map(|(_, v)| v));
        }
    }
    const UNSET: usize = usize::MAX;
    let mut at: Vec<usize> = fixed.iter().map(|f| f.unwrap_or(UNSET)).collect();
    let mut load = vec![0u64; problem.hosts.len()];
    for (u, h) in at.iter().enumerate() {
        if *h != UNSET {
            load[*h] += problem.units[u].cpu as u64;
        }
    }
    for u in order.into_iter().filter(|u| fixed[*u].is_none()) {
        let unit = &problem.units[u];
        let candidates: Vec<usize> = match unit.pin {
            Some(p) => vec![p],
            None => (0..problem.hosts.len()).collect(),
        };
        let has_placed_neighbour = adjacency[u].iter().any(|(v, _)| at[*v] != UNSET);
        let previous = unit.previous_host();
        let best = candidates
            .into_iter()
            .map(|h| {
                let cores = problem.hosts[h].cores as u64;
                let over = |l: u64| l.saturating_sub(cores) as f64;
                let cut: u32 = adjacency[u]
                    .iter()
                    .filter(|(v, _)| at[*v] != UNSET && at[*v] != h)
                    .map(|(_, w)| *w)
                    .sum();
                let delta = weights.alpha * (over(load[h] + unit.cpu as u64) - over(load[h]))
                    + cut as f64
                    + weights.beta * unit.moved_if_on(h) as f64;
                let free = cores as i64 - load[h] as i64;
                let fill = if has_placed_neighbour { free } else { -free };
                (delta, previous != Some(h), fill, h)
            })
            .min_by(|a, b| {
                a.0.total_cmp(&b.0)
                    .then(a.1.cmp(&b.1))
                    .then(a.2.cmp(&b.2))
                    .then(a.3.cmp(&b.3))
            })
            .expect("a candidate host");
        at[u] = best.3;
        load[best.3] += unit.cpu as u64;
    }
    at
}

/// A candidate move in the FM heap, best (lowest delta) first.
#[derive(PartialEq)]
struct Candidate {
    delta: f64,
    unit: usize,
    to: usize,
}

impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .delta
            .total_cmp(&self.delta)
            .then(other.unit.cmp(&self.unit))
            .then(other.to.cmp(&self.to))
    }
}

/// Fiduccia–Mattheyses passes: repeatedly make the best move of an unlocked unit (even a
/// worsening one), lock it, and finally keep the best prefix. Returns the improvement.
pub fn refine(state: &mut State, passes: usize, deadline: Option<Instant>) -> f64 {
    let n = state.problem.units.len();
    let mut improvement = 0.0;
    for _ in 0..passes {
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let mut locked = vec![false; n];
        let mut heap = BinaryHeap::new();
        for u in 0..n {
            if let Some((delta, to)) = state.best_move(u) {
                heap.push(Candidate { delta, unit: u, to });
            }
        }
        let mut moves: Vec<(usize, usize)> = Vec::new();
        let (mut running, mut best, mut best_len) = (0.0f64, 0.0f64, 0usize);
        // Give up on a pass after this many moves without a new best.
        let patience = 25 + n / 20;
        while let Some(c) = heap.pop() {
            if locked[c.unit] {
                continue;
            }
            // Gains go stale as loads and neighbours move: re-evaluate lazily.
            let Some((delta, to)) = state.best_move(c.unit) else {
                continue;
            };
            if delta > c.delta + EPS || to != c.to {
                heap.push(Candidate {
                    delta,
                    unit: c.unit,
                    to,
                });
                continue;
            }
            let from = state.at[c.unit];
            state.apply(c.unit, to);
            locked[c.unit] = true;
            moves.push((c.unit, from));
            running += delta;
            if running < best - EPS {
                best = running;
                best_len = moves.len();
            }
            if moves.len() - best_len > patience {
                break;
            }
            for &(v, _) in &state.adjacency[c.unit] {
                if !locked[v] {
                    if let Some((delta, to)) = state.best_move(v) {
                        heap.push(Candidate { delta, unit: v, to });
                    }
                }
            }
        }
        for &(u, from) in moves[best_len..].iter().rev() {
            state.apply(u, from);
        }
        if best > -EPS {
            break;
        }
        improvement -= best;
    }
    improvement
}

/// Pairwise swaps: for a unit drawn to another host, exchange it with a unit there when the
/// pair together lowers the cost (what single moves cannot do between full hosts).
pub fn swaps(state: &mut State, deadline: Option<Instant>) -> f64 {
    let n = state.problem.units.len();
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); state.problem.hosts.len()];
    for u in 0..n {
        members[state.at[u]].push(u);
    }
    let mut improvement = 0.0;
    for u in 0..n {
        if state.problem.units[u].pin.is_some() || !state.movable[u] {
            continue;
        }
        if u.is_multiple_of(64) && deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        let a = state.at[u];
        let here = state.link(u, a);
        let mut drawn: Vec<(u32, usize)> = state
            .targets(u)
            .into_iter()
            .map(|b| (state.link(u, b), b))
            .filter(|(w, _)| *w > here)
            .collect();
        drawn.sort_by(|x, y| y.0.cmp(&x.0).then(x.1.cmp(&y.1)));
        let mut best: Option<(f64, usize, usize)> = None;
        for (_, b) in drawn.into_iter().take(3) {
            for &v in &members[b] {
                if state.problem.units[v].pin.is_some() || !state.movable[v] {
                    continue;
                }
                let d1 = state.move_delta(u, b);
                state.apply(u, b);
                let d2 = state.move_delta(v, a);
                state.apply(u, a);
                let delta = d1 + d2;
                if delta < -EPS && best.is_none_or(|(bd, _, _)| delta < bd) {
                    best = Some((delta, v, b));
                }
            }
        }
        if let Some((delta, v, b)) = best {
            state.apply(u, b);
            state.apply(v, a);
            members[a].retain(|x| *x != u);
            members[b].retain(|x| *x != v);
            members[b].push(u);
            members[a].push(v);
            improvement -= delta;
        }
    }
    improvement
}

/// Per unit, the representative of its chain segment: the units of one host joined by
/// connections whose two ends have at most two connections each (a voice's osc → filter →
/// gain, a run of a chain) are one segment.
fn segments(state: &State) -> Vec<usize> {
    let n = state.problem.units.len();
    let mut parent: Vec<usize> = (0..n).collect();
    fn root(parent: &mut [usize], mut u: usize) -> usize {
        while parent[u] != u {
            parent[u] = parent[parent[u]];
            u = parent[u];
        }
        u
    }
    let thin = |u: usize| state.adjacency[u].len() <= 2;
    for &(a, b, _) in &state.problem.edges {
        if state.at[a] == state.at[b] && thin(a) && thin(b) {
            let (ra, rb) = (root(&mut parent, a), root(&mut parent, b));
            parent[ra.max(rb)] = ra.min(rb);
        }
    }
    (0..n).map(|u| root(&mut parent, u)).collect()
}

/// Units on a group of hosts, as a problem of its own: one unit per segment there (see
/// `segments`; without them every unit is its own), their connections between segments, the
/// group's cores, their pins and previous hosts mapped into the group. Connections leaving the
/// group cost the same wherever inside it the units go, and those inside a segment are never
/// cut, so the sub-problem is exact for moves of whole segments. Returns the members of each
/// of its units.
fn subproblem(
    state: &State,
    group: &[usize],
    segment: Option<&[usize]>,
) -> (Problem, Vec<Vec<usize>>) {
    let of = |u: usize| segment.map_or(u, |s| s[u]);
    let local_host: BTreeMap<usize, usize> =
        group.iter().enumerate().map(|(i, h)| (*h, i)).collect();
    // Per unit of the whole problem, its unit here (by its segment's representative), or
    // `OUTSIDE`: a plain array, as this runs for every group and every connection is looked up.
    const OUTSIDE: usize = usize::MAX;
    let mut local_unit = vec![OUTSIDE; state.problem.units.len()];
    let mut members: Vec<Vec<usize>> = Vec::new();
    for u in (0..state.problem.units.len()).filter(|u| local_host.contains_key(&state.at[*u])) {
        let slot = &mut local_unit[of(u)];
        if *slot == OUTSIDE {
            *slot = members.len();
            members.push(Vec::new());
        }
        members[*slot].push(u);
    }
    let units = members
        .iter()
        .map(|part| {
            let mut unit = Unit {
                blocks: Vec::new(),
                cpu: 0,
                pin: None,
                previous: Vec::new(),
                previous_total: 0,
            };
            for &u in part {
                let fine = &state.problem.units[u];
                unit.cpu += fine.cpu;
                // Units the search may not move are pinned where they are (a pinned unit is on
                // its host, and a segment is on one host: its pins agree).
                if fine.pin.is_some() || !state.movable[u] {
                    unit.pin = Some(local_host[&state.at[u]]);
                }
                for (h, c) in &fine.previous {
                    let Some(&l) = local_host.get(h) else {
                        continue;
                    };
                    match unit.previous.iter_mut().find(|(k, _)| *k == l) {
                        Some((_, n)) => *n += c,
                        None => unit.previous.push((l, *c)),
                    }
                }
                unit.previous_total += fine.previous_total;
            }
            unit
        })
        .collect();
    // In the original order (the search's tie-breaks follow it); connections inside a
    // segment are never cut, and parallel ones between two segments simply add up.
    let mut edges = Vec::new();
    for (a, b, w) in &state.problem.edges {
        // A segment is on one host: its representative is in the group exactly when it is.
        let (i, j) = (local_unit[of(*a)], local_unit[of(*b)]);
        if i != OUTSIDE && j != OUTSIDE && i != j {
            edges.push((i, j, *w));
        }
    }
    let problem = Problem {
        hosts: group
            .iter()
            .map(|h| HostSlot {
                name: state.problem.hosts[*h].name.clone(),
                cores: state.problem.hosts[*h].cores,
            })
            .collect(),
        units,
        edges,
    };
    (problem, members)
}

/// Groups of 2–5 hosts to re-solve: pairs joined by the most cut weight, grown by the host
/// most connected to the group while the group stays small enough to solve (`max_units` units
/// of the sub-problem, one per segment), in up to `variants` ways per pair.
fn groups(
    state: &State,
    max_units: usize,
    segment: Option<&[usize]>,
    variants: usize,
) -> Vec<Vec<usize>> {
    let hosts = state.problem.hosts.len();
    let mut between: BTreeMap<(usize, usize), u64> = BTreeMap::new();
    for &(a, b, w) in &state.problem.edges {
        let (ha, hb) = (state.at[a], state.at[b]);
        if ha != hb {
            *between.entry((ha.min(hb), ha.max(hb))).or_default() += w as u64;
        }
    }
    // Units of the sub-problem each host brings: its segments.
    let mut count = vec![0usize; hosts];
    for (u, h) in state.at.iter().enumerate() {
        count[*h] += segment.is_none_or(|s| s[u] == u) as usize;
    }
    // Overloaded hosts pair with the roomiest one as well.
    for h in 0..hosts {
        if state.load[h] > state.problem.hosts[h].cores as u64 {
            let r = state.roomiest();
            if r != h {
                *between.entry((h.min(r), h.max(r))).or_default() += 1;
            }
        }
    }
    // Hosts joined by cut weight, to grow groups without rescanning every connection.
    let mut host_links: Vec<Vec<(usize, u64)>> = vec![Vec::new(); hosts];
    for (&(a, b), &w) in &between {
        host_links[a].push((b, w));
        host_links[b].push((a, w));
    }
    let mut pairs: Vec<((usize, usize), u64)> = between.into_iter().collect();
    pairs.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut out = Vec::new();
    for ((a, b), _) in pairs {
        // Each variant leaves out the hosts the earlier ones grew by first: where every host is
        // linked to one hub (voices into a mixer), the strongest links would otherwise pick the
        // same few hosts for every group.
        let mut left_out: Vec<usize> = Vec::new();
        for _ in 0..variants {
            let mut group = vec![a, b];
            let mut size = count[a] + count[b];
            if size > max_units {
                break;
            }
            while group.len() < 5 {
                let mut pull: BTreeMap<usize, u64> = BTreeMap::new();
                for g in &group {
                    for &(h, w) in &host_links[*g] {
                        if !group.contains(&h) && !left_out.contains(&h) {
                            *pull.entry(h).or_default() += w;
                        }
                    }
                }
                let next = pull
                    .iter()
                    .filter(|(h, _)| size + count[**h] <= max_units)
                    .max_by_key(|(h, w)| (**w, std::cmp::Reverse(**h)))
                    .map(|(h, _)| *h);
                match next {
                    Some(h) => {
                        size += count[h];
                        group.push(h);
                    }
                    None => break,
                }
            }
            let Some(&first) = group.get(2) else {
                // Grown by nothing: no variant differs.
                if !out.contains(&group) {
                    out.push(group);
                }
                break;
            };
            left_out.push(first);
            group.sort_unstable();
            if !out.contains(&group) {
                out.push(group);
            }
        }
    }
    out
}

/// Units in the groups of hosts re-solved: small groups are mostly proved within their nodes,
/// large ones find what needs three or more hosts to change at once.
pub const SMALL_GROUP_UNITS: usize = 24;
pub const LARGE_GROUP_UNITS: usize = 36;

/// Large-neighbourhood search: re-solve groups of hosts exactly, keep what improves, until a
/// round improves nothing, `rounds` or the node budget run out, or the deadline passes. With
/// `contract`, each chain segment of a host moves as one unit (see `segments`).
/// `node_budget` bounds the branch-and-bound work of the whole search (so the result does not
/// depend on the machine's speed).
pub fn neighbourhoods(
    state: &mut State,
    rounds: usize,
    max_units: usize,
    contract: bool,
    mut node_budget: u64,
    deadline: Option<Instant>,
) -> f64 {
    // Incremental re-plans (some units held still) keep to small groups.
    let holding_still = state.movable.iter().any(|m| !m);
    let max_units = if holding_still {
        max_units.min(SMALL_GROUP_UNITS)
    } else {
        max_units
    };
    const GROUP_NODES: u64 = 3_000;
    let mut improvement = 0.0;
    for _ in 0..rounds {
        let mut improved = false;
        // Searches of contracted groups are small: they can afford more groups.
        let variants = if contract { 3 } else { 1 };
        let segment = contract.then(|| segments(state));
        for group in groups(state, max_units, segment.as_deref(), variants) {
            if node_budget == 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                return improvement;
            }
            // Segments as they are now (an earlier group may have moved some).
            let segment = contract.then(|| segments(state));
            let (sub, members) = subproblem(state, &group, segment.as_deref());
            if !members.iter().flatten().any(|u| state.movable[*u]) {
                continue;
            }
            if sub.edges.is_empty()
                && sub.hosts.iter().zip(0..).all(|(h, i)| {
                    members
                        .iter()
                        .flatten()
                        .filter(|u| state.at[**u] == group[i])
                        .map(|u| state.problem.units[*u].cpu as u64)
                        .sum::<u64>()
                        <= h.cores as u64
                })
            {
                continue;
            }
            let local_host: BTreeMap<usize, usize> =
                group.iter().enumerate().map(|(i, h)| (*h, i)).collect();
            let incumbent: Vec<usize> = members
                .iter()
                .map(|part| local_host[&state.at[part[0]]])
                .collect();
            let before = sub.cost(&incumbent, &state.weights).total;
            let found = exact::solve(
                &sub,
                &state.weights,
                &incumbent,
                GROUP_NODES.min(node_budget),
                deadline,
                // Contracted segments are often twins (whole voices into one mixer): the
                // symmetry of twins and the cells bound keep those searches small.
                if contract {
                    exact::Scope::Whole
                } else {
                    exact::Scope::Part
                },
            );
            node_budget = node_budget.saturating_sub(found.nodes);
            if found.total < before - EPS {
                for (i, part) in members.iter().enumerate() {
                    for u in part {
                        state.apply(*u, group[found.assignment[i]]);
                    }
                }
                improvement += before - found.total;
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    improvement
}

/// Where an incremental re-plan starts: every unit on its previous host (pins permitting),
/// new units placed greedily around them. `None` when nothing was placed before.
pub fn incremental_start(problem: &Problem, weights: &Weights) -> Option<Vec<usize>> {
    if problem.units.iter().all(|u| u.previous.is_empty()) {
        return None;
    }
    let fixed: Vec<Option<usize>> = problem
        .units
        .iter()
        .map(|u| match u.pin {
            Some(p) => Some(p),
            None => u
                .previous_host()
                .filter(|_| u.moved_if_on(u.previous_host().unwrap_or(0)) == 0),
        })
        .collect();
    Some(construct_around(problem, weights, &fixed))
}

/// Units an incremental re-plan may move: those that are new or were split, units within two
/// connections of them, and units on hosts that are over their cores. `None` when that is
/// most of the orchestra (then everything may move).
pub fn changed_region(state: &State) -> Option<Vec<bool>> {
    let problem = state.problem;
    let n = problem.units.len();
    let mut movable = vec![false; n];
    let mut frontier: Vec<usize> = (0..n)
        .filter(|&u| {
            let unit = &problem.units[u];
            unit.previous_total == 0 || unit.previous_host().is_none_or(|h| unit.moved_if_on(h) > 0)
        })
        .collect();
    // Overloaded hosts join the region only when some of their overflow could be avoided: in
    // an over-committed rig the unavoidable overflow is no reason to move anything.
    let overflow: u64 = (0..problem.hosts.len())
        .map(|h| state.load[h].saturating_sub(problem.hosts[h].cores as u64))
        .sum();
    let unavoidable = super::lower_bound(
        problem,
        &Weights {
            alpha: 1.0,
            beta: 0.0,
        },
    );
    if overflow as f64 > unavoidable + 1e-9 {
        for u in 0..n {
            if state.load[state.at[u]] > problem.hosts[state.at[u]].cores as u64 {
                frontier.push(u);
            }
        }
    }
    for _ in 0..=2 {
        let mut next = Vec::new();
        for u in frontier {
            if !movable[u] {
                movable[u] = true;
                next.extend(state.adjacency[u].iter().map(|(v, _)| *v));
            }
        }
        frontier = next;
    }
    let count = movable.iter().filter(|m| **m).count();
    (count * 3 <= n).then_some(movable)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::generate::{generate_tight, Family, HostSizes};

    #[test]
    fn contracted_groups_move_whole_voices() {
        // Tight voices on four equal hosts: re-solving groups unit by unit stops one above the
        // optimum, which packs whole voices differently; with each voice's chain one unit the
        // groups' searches find it.
        let problem = generate_tight(Family::ParallelVoices, 30, 4, 9, HostSizes::Equal, 0.0);
        let weights = Weights::default();
        let mut state = State::new(&problem, &weights, construct(&problem, &weights));
        refine(&mut state, 8, None);
        let large = LARGE_GROUP_UNITS;
        neighbourhoods(&mut state, 6, large, false, 1_000_000, None);
        let plain = state.total();

        let segment = segments(&state);
        for (u, s) in segment.iter().enumerate() {
            assert_eq!(state.at[u], state.at[*s], "a segment sits on one host");
        }
        let mixer = (0..problem.units.len())
            .find(|&u| problem.units[u].blocks[0] == "mixer")
            .expect("a mixer");
        assert!(
            (0..problem.units.len()).all(|u| (u == mixer) == (segment[u] == segment[mixer])),
            "the hub stays a unit of its own"
        );

        neighbourhoods(&mut state, 6, large, true, 1_000_000, None);
        let optimum = exact::solve(
            &problem,
            &weights,
            &state.at,
            u64::MAX,
            None,
            exact::Scope::Whole,
        );
        assert!(optimum.proven);
        assert!(plain > optimum.total + 0.5, "plain groups: {plain}");
        assert_eq!(state.total(), optimum.total);
        assert!(problem.pins_hold(&state.at));
    }
}
