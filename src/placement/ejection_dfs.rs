//! Ejection chains searched depth first, a few ways at each step: slower than the path
//! search of `ejection`, but a step may leave two hosts to relieve (the one it came from, if
//! the branch was not enough, and the one it filled), which a single path cannot. On random
//! patches and parallel voices that finds chains the path search misses, so medium orchestras,
//! which have the time, run both. Deterministic: bounded by a count of unit moves.

use super::branch;
use super::heuristic::State;
use std::time::Instant;

const EPS: f64 = 1e-9;
/// Steps after the first move that may pass surplus on.
const MAX_DEPTH: usize = 5;
/// Ways to relieve a host tried at each step, best first.
const FANOUT: usize = 3;

/// A branch and one host it could move to.
struct BranchMove {
    units: Vec<usize>,
    to: usize,
    /// Change of cut and moves (not overflow) if it moved.
    delta: f64,
    cpu: u64,
}

/// Search state: the units per host and what has moved in the chain being built.
struct Chains<'s, 'a> {
    state: &'s mut State<'a>,
    members: Vec<Vec<usize>>,
    in_chain: Vec<bool>,
    /// Marks for building branches.
    mark: Vec<bool>,
    /// Unit moves and branch visits left.
    work: u64,
}

/// Improve `state` by ejection chains until a round finds none, `rounds` pass, `work` unit moves
/// are spent, or the deadline passes. Returns the improvement.
pub fn improve(state: &mut State, rounds: usize, work: u64, deadline: Option<Instant>) -> f64 {
    let n = state.problem.units.len();
    let mut members = vec![Vec::new(); state.problem.hosts.len()];
    for u in 0..n {
        members[state.at[u]].push(u);
    }
    let mut chains = Chains {
        state,
        members,
        in_chain: vec![false; n],
        mark: vec![false; n],
        work,
    };
    let mut improvement = 0.0;
    for _ in 0..rounds {
        let mut improved = false;
        for u in 0..n {
            if chains.work == 0 || (u % 32 == 0 && deadline.is_some_and(|d| Instant::now() >= d)) {
                return improvement;
            }
            if let Some(gain) = chains.start_at(u) {
                improvement += gain;
                improved = true;
            }
        }
        if !improved {
            break;
        }
    }
    improvement
}

impl Chains<'_, '_> {
    /// Try every branch rooted at boundary unit `u` that lowers the cut: move it, and relieve
    /// the host it fills. Returns the gain of the first chain that pays.
    fn start_at(&mut self, u: usize) -> Option<f64> {
        let from = self.state.at[u];
        let boundary = self.state.adjacency[u]
            .iter()
            .any(|(v, _)| self.state.at[*v] != from);
        if !boundary || !self.state.movable[u] || self.state.problem.units[u].pin.is_some() {
            return None;
        }
        let mut starts: Vec<BranchMove> = self
            .branches_at(u)
            .into_iter()
            .flat_map(|b| self.moves_of(b))
            .filter(|m| m.delta < -EPS)
            .collect();
        starts.sort_by(|a, b| a.delta.total_cmp(&b.delta).then(a.cpu.cmp(&b.cpu)));
        for m in starts.into_iter().take(FANOUT) {
            if self.work == 0 {
                return None;
            }
            let (back, true_delta) = self.apply(&m.units, m.to);
            if true_delta < -EPS {
                self.clear_chain(&m.units);
                return Some(-true_delta);
            }
            if let Some(total) = self.relieve(&[m.to], 1, true_delta, m.delta) {
                self.clear_chain(&m.units);
                return Some(-total);
            }
            self.undo(&m.units, &back);
        }
        None
    }

    /// Hosts in `pending` may be overfull after a chain whose true cost change so far is
    /// `running` (its cut and moves part `cut_moved`): move a branch off the first overfull
    /// one, onward if need be. On success the moves stay applied and the chain's total change
    /// is returned.
    fn relieve(
        &mut self,
        pending: &[usize],
        depth: usize,
        running: f64,
        cut_moved: f64,
    ) -> Option<f64> {
        if depth > MAX_DEPTH {
            return None;
        }
        let excess = |s: &Self, h: usize| {
            s.state.load[h].saturating_sub(s.state.problem.hosts[h].cores as u64)
        };
        let (i, h) = pending
            .iter()
            .enumerate()
            .find(|(_, h)| excess(self, **h) > 0)
            .map(|(i, h)| (i, *h))?;
        let need = excess(self, h);
        let seeds: Vec<usize> = self.members[h]
            .iter()
            .copied()
            .filter(|u| !self.in_chain[*u])
            .collect();
        let mut options: Vec<BranchMove> = Vec::new();
        for u in seeds {
            for b in self.branches_at(u) {
                options.extend(
                    self.moves_of(b)
                        .into_iter()
                        .filter(|m| cut_moved + m.delta < -EPS),
                );
            }
        }
        // Cheapest first; of those, the ones leaving the least surplus to pass on.
        let left = |s: &Self, m: &BranchMove| {
            let cores = s.state.problem.hosts[m.to].cores as u64;
            need.saturating_sub(m.cpu) + (s.state.load[m.to] + m.cpu).saturating_sub(cores)
        };
        options.sort_by(|a, b| {
            a.delta
                .total_cmp(&b.delta)
                .then(left(self, a).cmp(&left(self, b)))
                .then(a.cpu.cmp(&b.cpu))
                .then(a.units.cmp(&b.units))
                .then(a.to.cmp(&b.to))
        });
        options.dedup_by(|a, b| a.units == b.units && a.to == b.to);
        for m in options.into_iter().take(FANOUT) {
            if self.work == 0 {
                return None;
            }
            let (back, true_delta) = self.apply(&m.units, m.to);
            let total = running + true_delta;
            if total < -EPS {
                self.clear_chain(&m.units);
                return Some(total);
            }
            // Still to relieve: this host if the branch was not enough, its target, the rest.
            let mut next = vec![h, m.to];
            next.extend(pending[i + 1..].iter().filter(|p| **p != h && **p != m.to));
            if let Some(total) = self.relieve(&next, depth + 1, total, cut_moved + m.delta) {
                self.clear_chain(&m.units);
                return Some(total);
            }
            self.undo(&m.units, &back);
        }
        None
    }

    /// Branches containing `u` on its host (see `branch::around`), none pinned, held still
    /// or already moved in this chain.
    fn branches_at(&mut self, u: usize) -> Vec<Vec<usize>> {
        let (state, in_chain) = (&*self.state, &self.in_chain);
        let free =
            |x: usize| state.movable[x] && state.problem.units[x].pin.is_none() && !in_chain[x];
        let (branches, units, _) = branch::around(state, &mut self.mark, u, free);
        self.work = self.work.saturating_sub(units);
        branches
    }

    /// Moves of `branch` to each other host it is connected to, with their cut/move change.
    fn moves_of(&mut self, branch: Vec<usize>) -> Vec<BranchMove> {
        let from = self.state.at[branch[0]];
        for x in &branch {
            self.mark[*x] = true;
        }
        // Weight from the branch to units outside it, per host.
        let mut outside: Vec<(usize, f64)> = Vec::new();
        let mut moved_here = 0.0;
        for &x in &branch {
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
        for x in &branch {
            self.mark[*x] = false;
        }
        let cpu: u64 = branch
            .iter()
            .map(|x| self.state.problem.units[*x].cpu as u64)
            .sum();
        let stay = outside
            .iter()
            .find(|(h, _)| *h == from)
            .map_or(0.0, |(_, s)| *s);
        let beta = self.state.weights.beta;
        let mut targets: Vec<usize> = outside.iter().map(|(h, _)| *h).collect();
        targets.push(self.state.roomiest());
        targets.sort_unstable();
        targets.dedup();
        targets
            .into_iter()
            .filter(|to| *to != from)
            .map(|to| {
                let join = outside
                    .iter()
                    .find(|(h, _)| *h == to)
                    .map_or(0.0, |(_, s)| *s);
                let moved_there: f64 = branch
                    .iter()
                    .map(|x| self.state.problem.units[*x].moved_if_on(to) as f64)
                    .sum();
                BranchMove {
                    units: branch.clone(),
                    to,
                    delta: stay - join + beta * (moved_there - moved_here),
                    cpu,
                }
            })
            .collect()
    }

    /// Move `units` to `to`; returns their previous hosts and the true cost change.
    fn apply(&mut self, units: &[usize], to: usize) -> (Vec<usize>, f64) {
        let mut back = Vec::with_capacity(units.len());
        let mut delta = 0.0;
        for &u in units {
            let from = self.state.at[u];
            back.push(from);
            delta += self.state.move_delta(u, to);
            self.state.apply(u, to);
            self.members[from].retain(|x| *x != u);
            self.members[to].push(u);
            self.in_chain[u] = true;
        }
        self.work = self.work.saturating_sub(units.len() as u64);
        (back, delta)
    }

    fn undo(&mut self, units: &[usize], back: &[usize]) {
        for (&u, &from) in units.iter().zip(back).rev() {
            let to = self.state.at[u];
            self.state.apply(u, from);
            self.members[to].retain(|x| *x != u);
            self.members[from].push(u);
            self.in_chain[u] = false;
        }
    }

    fn clear_chain(&mut self, units: &[usize]) {
        for u in units {
            self.in_chain[*u] = false;
        }
    }
}
