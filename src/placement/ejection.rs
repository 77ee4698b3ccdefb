//! Ejection chains of branch moves, found as shortest paths over hosts.
//!
//! A branch is a chain segment or subtree: the units of one host reachable from a unit without
//! crossing a given neighbour there (or a whole connected piece). Moving a branch onto the host
//! it is most connected to lowers the cut; when that overfills the host, a branch of it shifts
//! on to a third host (typically a chain boundary moving by a few blocks, which cuts nothing
//! new), and so on around a cycle of hosts until one has room. That passes capacity along a
//! row of full hosts, which single moves and pairwise swaps cannot.
//!
//! The onward steps are not enumerated depth first (exponential in the depth): they are a
//! shortest path over states (host, cpu it just received), with each host's branch moves
//! listed once and kept until a move touches that host or its neighbours. A chain is kept only
//! when its true cost drops. Deterministic: bounded by a count of work.

use super::branch;
use super::heuristic::State;
use std::collections::HashMap;
use std::time::Instant;

const EPS: f64 = 1e-9;
/// Onward steps after the first move.
const MAX_DEPTH: usize = 8;
/// Cheapest chains checked against the true cost per first move.
const VERIFIED: usize = 4;

/// One host's branch and a host it could move to.
struct BranchMove {
    /// Index into the host's branch list.
    branch: usize,
    to: usize,
    /// Change of cut and moves (not overflow) if it moved alone.
    delta: f64,
    cpu: u64,
}

/// A host's branches and their moves, valid until a unit on or next to the host moves.
struct HostMoves {
    branches: Vec<Vec<usize>>,
    moves: Vec<BranchMove>,
}

/// A state of the path search: `host` has received `cpu` from the previous step.
struct Label {
    host: usize,
    cpu: u64,
    /// Change of cost so far (cut, moves and overflow), after the first move.
    cost: f64,
    /// The label this one extends and the step taken from its host (move index there).
    parent: Option<(usize, usize)>,
}

/// Search state: the units per host, the cached branch moves, and the work left.
struct Chains<'s, 'a> {
    state: &'s mut State<'a>,
    members: Vec<Vec<usize>>,
    /// `None`: stale, list again when asked.
    cache: Vec<Option<HostMoves>>,
    /// While a chain is tried: the listings it made stale, as they were before it (a chain
    /// that fails is undone, and they are valid again).
    saved: Vec<(usize, Option<HostMoves>)>,
    /// Marks for building branches.
    mark: Vec<bool>,
    /// Units visited and labels expanded, left.
    work: u64,
}

/// Improve `state` by ejection chains until a round finds none, `rounds` pass, `work` is
/// spent, or the deadline passes. Returns the improvement.
pub fn improve(state: &mut State, rounds: usize, work: u64, deadline: Option<Instant>) -> f64 {
    let hosts = state.problem.hosts.len();
    let mut members = vec![Vec::new(); hosts];
    for (u, h) in state.at.iter().enumerate() {
        members[*h].push(u);
    }
    let n = state.problem.units.len();
    let mut chains = Chains {
        state,
        members,
        cache: (0..hosts).map(|_| None).collect(),
        saved: Vec::new(),
        mark: vec![false; n],
        work,
    };
    let mut improvement = 0.0;
    for _ in 0..rounds {
        let before = improvement;
        for h in 0..hosts {
            if chains.out_of_time(deadline) {
                return improvement;
            }
            improvement += chains.improve_host(h, deadline);
        }
        if improvement <= before + EPS {
            break;
        }
    }
    improvement
}

impl Chains<'_, '_> {
    fn out_of_time(&self, deadline: Option<Instant>) -> bool {
        self.work == 0 || deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// Try each branch move off `h` that lowers the cut, cheapest first, completing it with the
    /// cheapest chain of onward steps. Returns the gain of the chains kept.
    fn improve_host(&mut self, h: usize, deadline: Option<Instant>) -> f64 {
        let mut gain = 0.0;
        // Branch moves are listed again after every success (the host has changed); each
        // success lowers the cost, so this ends.
        'listing: loop {
            for (units, to) in self.first_moves(h) {
                if self.out_of_time(deadline) {
                    return gain;
                }
                if let Some(g) = self.try_start(&units, to) {
                    gain += g;
                    continue 'listing;
                }
            }
            return gain;
        }
    }

    /// Branch moves off `h` that lower cut and moves on their own, cheapest first.
    fn first_moves(&mut self, h: usize) -> Vec<(Vec<usize>, usize)> {
        let listed = self.moves(h);
        let mut starts: Vec<&BranchMove> = listed.moves.iter().filter(|m| m.delta < -EPS).collect();
        starts.sort_by(|a, b| {
            a.delta
                .total_cmp(&b.delta)
                .then(a.cpu.cmp(&b.cpu))
                .then(a.branch.cmp(&b.branch))
                .then(a.to.cmp(&b.to))
        });
        starts
            .into_iter()
            .map(|m| (listed.branches[m.branch].clone(), m.to))
            .collect()
    }

    /// Move `units` to `to`, then relieve `to` along the cheapest path found. Keeps the moves
    /// and returns the gain when the total cost drops; otherwise undoes everything.
    fn try_start(&mut self, units: &[usize], to: usize) -> Option<f64> {
        let from = self.state.at[units[0]];
        self.saved.clear();
        let first = self.apply(units, to);
        if first < -EPS {
            return Some(-first);
        }
        for path in self.cheapest_paths(to, first) {
            let mut total = first;
            let mut done: Vec<(Vec<usize>, usize)> = Vec::new();
            for (branch, next) in path {
                if branch
                    .iter()
                    .any(|u| self.state.at[*u] != self.state.at[branch[0]])
                {
                    break;
                }
                let back = self.state.at[branch[0]];
                total += self.apply(&branch, next);
                done.push((branch, back));
            }
            if total < -EPS {
                return Some(-total);
            }
            for (branch, back) in done.into_iter().rev() {
                self.apply(&branch, back);
            }
        }
        self.apply(units, from);
        for (h, listed) in std::mem::take(&mut self.saved) {
            self.cache[h] = listed;
        }
        None
    }

    /// Paths of onward steps from `start` (overfull after a first move costing `first`) whose
    /// estimated total is negative, cheapest first: each a list of (branch, target host).
    fn cheapest_paths(&mut self, start: usize, first: f64) -> Vec<Vec<(Vec<usize>, usize)>> {
        let mut labels = vec![Label {
            host: start,
            cpu: 0,
            cost: 0.0,
            parent: None,
        }];
        let mut best: HashMap<(usize, u64), f64> = HashMap::new();
        let mut frontier = vec![0];
        for _ in 0..MAX_DEPTH {
            let mut next = Vec::new();
            for l in frontier {
                if self.work == 0 {
                    break;
                }
                self.expand(&mut labels, l, first, &mut best, &mut next);
            }
            frontier = next;
        }
        let mut ends: Vec<(f64, usize)> = (1..labels.len())
            .map(|l| (first + labels[l].cost, l))
            .filter(|(total, _)| *total < -EPS)
            .collect();
        ends.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        ends.into_iter()
            .take(VERIFIED)
            .map(|(_, l)| self.path_to(&labels, l))
            .collect()
    }

    /// Extend label `l` by every move off its host (if that host is overfull) to a host not yet
    /// on its path, keeping each new state only if it is the cheapest way there so far.
    fn expand(
        &mut self,
        labels: &mut Vec<Label>,
        l: usize,
        first: f64,
        best: &mut HashMap<(usize, u64), f64>,
        next: &mut Vec<usize>,
    ) {
        let (x, received, cost) = (labels[l].host, labels[l].cpu, labels[l].cost);
        let load_x = self.state.load[x] + received;
        let need = self.excess(x, load_x);
        if need == 0 {
            return;
        }
        let on_path = self.hosts_on_path(labels, l);
        let alpha = self.state.weights.alpha;
        self.moves(x);
        let listed = self.listed(x);
        let mut found = Vec::new();
        for (i, m) in listed.moves.iter().enumerate() {
            // Of moves to the same host with the same cpu the path search sees only the
            // cheapest, the first listed.
            let repeat =
                i > 0 && (listed.moves[i - 1].to, listed.moves[i - 1].cpu) == (m.to, m.cpu);
            if repeat || m.cpu == 0 || on_path.contains(&m.to) {
                continue;
            }
            let load_y = self.state.load[m.to];
            let left = self.excess(m.to, load_y + m.cpu);
            let over = (self.excess(x, load_x - m.cpu) as f64 - need as f64)
                + (left as f64 - self.excess(m.to, load_y) as f64);
            let c = cost + m.delta + alpha * over;
            // At best the rest of the chain removes the overflow it leaves on the target (and
            // finds one more lighter boundary); hopeless chains stop here.
            if first + c - alpha * left as f64 > 1.0 + EPS {
                continue;
            }
            let key = (m.to, m.cpu);
            if best.get(&key).is_none_or(|b| c < *b - EPS) {
                best.insert(key, c);
                found.push((m.to, m.cpu, c, i));
            }
        }
        let spent = 1 + listed.moves.len() as u64;
        self.work = self.work.saturating_sub(spent);
        for (host, cpu, cost, i) in found {
            next.push(labels.len());
            labels.push(Label {
                host,
                cpu,
                cost,
                parent: Some((l, i)),
            });
        }
    }

    /// Drop the listing of `h`, keeping the one from before the chain being tried.
    fn stale(&mut self, h: usize) {
        if !self.saved.iter().any(|(s, _)| *s == h) {
            self.saved.push((h, self.cache[h].take()));
        } else {
            self.cache[h] = None;
        }
    }

    fn excess(&self, h: usize, load: u64) -> u64 {
        load.saturating_sub(self.state.problem.hosts[h].cores as u64)
    }

    fn hosts_on_path(&self, labels: &[Label], mut l: usize) -> Vec<usize> {
        let mut hosts = vec![labels[l].host];
        while let Some((p, _)) = labels[l].parent {
            hosts.push(labels[p].host);
            l = p;
        }
        hosts
    }

    /// The steps leading to label `l`, first step first.
    fn path_to(&mut self, labels: &[Label], mut l: usize) -> Vec<(Vec<usize>, usize)> {
        let mut steps = Vec::new();
        while let Some((p, i)) = labels[l].parent {
            let listed = self.moves(labels[p].host);
            let m = &listed.moves[i];
            steps.push((listed.branches[m.branch].clone(), m.to));
            l = p;
        }
        steps.reverse();
        steps
    }

    /// The branch moves of host `h`, listed now if stale.
    fn moves(&mut self, h: usize) -> &HostMoves {
        if self.cache[h].is_none() {
            let listed = self.list_moves(h);
            self.cache[h] = Some(listed);
        }
        self.listed(h)
    }

    /// The branch moves of host `h`, already listed.
    fn listed(&self, h: usize) -> &HostMoves {
        self.cache[h].as_ref().expect("listed before")
    }

    /// Every branch of `h` and its moves, by target host, cpu, then cheapest first.
    fn list_moves(&mut self, h: usize) -> HostMoves {
        let mut seeds = self.members[h].clone();
        seeds.sort_unstable();
        let mut branches: Vec<Vec<usize>> = Vec::new();
        for u in seeds {
            for b in self.branches_at(u) {
                branches.push(b);
            }
        }
        branches.sort();
        branches.dedup();
        let roomiest = self.state.roomiest();
        let mut moves: Vec<BranchMove> = Vec::new();
        for (i, b) in branches.iter().enumerate() {
            moves.extend(self.moves_of(i, b, roomiest));
        }
        moves.sort_by(|a, b| {
            (a.to, a.cpu)
                .cmp(&(b.to, b.cpu))
                .then(a.delta.total_cmp(&b.delta))
                .then(branches[a.branch].len().cmp(&branches[b.branch].len()))
                .then(a.branch.cmp(&b.branch))
        });
        HostMoves { branches, moves }
    }

    /// Branches containing `u` on its host (see `branch::around`), none pinned or held still.
    fn branches_at(&mut self, u: usize) -> Vec<Vec<usize>> {
        let unit = &self.state.problem.units[u];
        if unit.pin.is_some() || !self.state.movable[u] {
            return Vec::new();
        }
        let state = &*self.state;
        let free = |x: usize| state.movable[x] && state.problem.units[x].pin.is_none();
        let (branches, _, scanned) = branch::around(state, &mut self.mark, u, free);
        self.work = self.work.saturating_sub(scanned);
        branches
    }

    /// Moves of `branch` (number `index` of its host) to each host it is connected to, and to
    /// `roomiest`, with their change of cut and moves.
    fn moves_of(&mut self, index: usize, branch: &[usize], roomiest: usize) -> Vec<BranchMove> {
        let from = self.state.at[branch[0]];
        for x in branch {
            self.mark[*x] = true;
        }
        // Weight from the branch to units outside it, per host.
        let mut outside: Vec<(usize, f64)> = Vec::new();
        let mut moved_here = 0.0;
        for &x in branch {
            self.work = self
                .work
                .saturating_sub(self.state.adjacency[x].len() as u64);
            for &(v, w) in &self.state.adjacency[x] {
                if self.mark[v] {
                    continue;
                }
                let hv = self.state.at[v];
                match outside.iter_mut().find(|(h, _)| *h == hv) {
                    Some((_, s)) => *s += w as f64,
                    None => outside.push((hv, w as f64)),
                }
            }
            moved_here += self.state.problem.units[x].moved_if_on(from) as f64;
        }
        for x in branch {
            self.mark[*x] = false;
        }
        let units = &self.state.problem.units;
        let cpu: u64 = branch.iter().map(|x| units[*x].cpu as u64).sum();
        let weight_to = |h: usize| {
            outside
                .iter()
                .find(|(o, _)| *o == h)
                .map_or(0.0, |(_, s)| *s)
        };
        let stay = weight_to(from);
        let beta = self.state.weights.beta;
        let mut targets: Vec<usize> = outside.iter().map(|(h, _)| *h).collect();
        targets.push(roomiest);
        targets.sort_unstable();
        targets.dedup();
        targets
            .into_iter()
            .filter(|to| *to != from)
            .map(|to| {
                let moved_there: f64 = branch
                    .iter()
                    .map(|x| units[*x].moved_if_on(to) as f64)
                    .sum();
                BranchMove {
                    branch: index,
                    to,
                    delta: stay - weight_to(to) + beta * (moved_there - moved_here),
                    cpu,
                }
            })
            .collect()
    }

    /// Move `units` to `to`; returns the true cost change. Marks stale the moves of every host
    /// the units or their neighbours sit on.
    fn apply(&mut self, units: &[usize], to: usize) -> f64 {
        let mut delta = 0.0;
        for &u in units {
            let from = self.state.at[u];
            if from == to {
                continue;
            }
            delta += self.state.move_delta(u, to);
            self.state.apply(u, to);
            self.members[from].retain(|x| *x != u);
            self.members[to].push(u);
            self.stale(from);
            self.stale(to);
            for i in 0..self.state.adjacency[u].len() {
                self.stale(self.state.at[self.state.adjacency[u][i].0]);
            }
        }
        self.work = self.work.saturating_sub(units.len() as u64);
        delta
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::generate::{generate, Family};
    use crate::placement::heuristic;
    use crate::placement::problem::{HostSlot, Problem, Unit};
    use crate::placement::Weights;

    fn unit(cpu: u32, pin: Option<usize>) -> Unit {
        Unit {
            blocks: Vec::new(),
            cpu,
            pin,
            previous: Vec::new(),
            previous_total: 0,
        }
    }

    /// A chain of 13 units on three full hosts (no core to spare anywhere):
    /// C: 0–2 | B: 3–5 | A: 6 (2 cores) | B: 7–8 | C: 9–10 | A: 11–12, cut 5.
    /// Moving unit 6 onto B joins B's two segments (cut −2) but overfills B by 2; B passes
    /// 7–8 on to C, C passes 9–10 on to A (each a boundary shift, cut ±0), where 6 left room.
    fn full_row() -> (Problem, Vec<usize>) {
        let (a, b, c) = (0, 1, 2);
        let cores = [4, 5, 5];
        let mut units: Vec<Unit> = (0..13).map(|u| unit(1 + (u == 6) as u32, None)).collect();
        units[0].pin = Some(c);
        units[12].pin = Some(a);
        let problem = Problem {
            hosts: cores
                .iter()
                .enumerate()
                .map(|(h, cores)| HostSlot {
                    name: format!("h{h}"),
                    cores: *cores,
                })
                .collect(),
            units,
            edges: (0..12).map(|u| (u, u + 1, 1)).collect(),
        };
        let at = vec![c, c, c, b, b, b, a, b, b, c, c, a, a];
        (problem, at)
    }

    /// Every single move and every pairwise swap of a state, and whether any improves.
    fn improving_move_or_swap(state: &mut State) -> bool {
        let (n, hosts) = (state.problem.units.len(), state.problem.hosts.len());
        let free: Vec<usize> = (0..n)
            .filter(|u| state.problem.units[*u].pin.is_none())
            .collect();
        for &u in &free {
            if (0..hosts).any(|h| state.move_delta(u, h) < -EPS) {
                return true;
            }
            for &v in &free {
                let (hu, hv) = (state.at[u], state.at[v]);
                if hu == hv {
                    continue;
                }
                let first = state.move_delta(u, hv);
                state.apply(u, hv);
                let second = state.move_delta(v, hu);
                state.apply(u, hu);
                if first + second < -EPS {
                    return true;
                }
            }
        }
        false
    }

    #[test]
    fn a_segment_move_relieved_around_full_hosts_is_found() {
        let (problem, at) = full_row();
        let weights = Weights::default();
        let mut state = State::new(&problem, &weights, at);
        assert_eq!(problem.cost(&state.at, &weights).cut, 5);
        assert_eq!(problem.cost(&state.at, &weights).overflow, 0);
        assert!(
            !improving_move_or_swap(&mut state),
            "no single move or swap helps: the chain is needed"
        );
        let gain = improve(&mut state, 4, 100_000, None);
        let cost = problem.cost(&state.at, &weights);
        assert!(gain >= 2.0 - EPS, "gain {gain}");
        assert_eq!(cost.overflow, 0);
        assert!(cost.cut <= 3, "cut {}", cost.cut);
        assert!(problem.pins_hold(&state.at));
    }

    /// Generated chains, trees, patches and voices from a greedy start (refined or not).
    fn starts() -> Vec<(Problem, Vec<usize>)> {
        let weights = Weights::default();
        let mut out = Vec::new();
        for family in Family::ALL {
            for (seed, blocks, hosts) in [(1, 60, 6), (2, 120, 12), (3, 200, 20)] {
                let problem = generate(family, blocks, hosts, seed, 0.15);
                let at = heuristic::construct(&problem, &weights);
                let mut state = State::new(&problem, &weights, at.clone());
                heuristic::refine(&mut state, 4, None);
                let refined = state.at.clone();
                out.push((problem.clone(), at));
                out.push((problem, refined));
            }
        }
        out
    }

    #[test]
    fn never_worse_pins_hold_and_deterministic() {
        let weights = Weights::default();
        for (problem, at) in starts() {
            let before = problem.cost(&at, &weights).total;
            let mut state = State::new(&problem, &weights, at.clone());
            let gain = improve(&mut state, 4, 200_000, None);
            let after = problem.cost(&state.at, &weights).total;
            assert!(after <= before + EPS, "{before} -> {after}");
            assert!(
                (before - after - gain).abs() < 1e-6,
                "gain {gain} is what changed"
            );
            assert!(problem.pins_hold(&state.at));
            let mut again = State::new(&problem, &weights, at);
            improve(&mut again, 4, 200_000, None);
            assert_eq!(again.at, state.at, "same result every run");
        }
    }

    #[test]
    fn units_held_still_stay() {
        let weights = Weights::default();
        let (problem, at) = full_row();
        let mut state = State::new(&problem, &weights, at.clone());
        // Unit 6 may not move: the only chain that helps starts with it.
        state.movable[6] = false;
        improve(&mut state, 4, 100_000, None);
        assert_eq!(state.at[6], at[6]);
        for (problem, at) in starts().into_iter().step_by(5) {
            let mut state = State::new(&problem, &weights, at.clone());
            for u in (0..problem.units.len()).step_by(3) {
                state.movable[u] = false;
            }
            improve(&mut state, 4, 100_000, None);
            for u in (0..problem.units.len()).step_by(3) {
                assert_eq!(state.at[u], at[u], "unit {u} is held still");
            }
        }
    }

    #[test]
    fn work_budget_bounds_the_search() {
        let weights = Weights::default();
        let (problem, at) = full_row();
        let mut state = State::new(&problem, &weights, at.clone());
        assert_eq!(improve(&mut state, 4, 0, None), 0.0, "no work, no change");
        assert_eq!(state.at, at);
    }
}
