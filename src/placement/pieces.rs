//! The pieces bound of the exact search: what the unplaced units must still cut because a
//! connected group of them cannot share one host.
//!
//! Collapse the placed units of each host into one node per host and look at the connected
//! components of the unplaced units together with those host nodes (a pinned unit hangs on its
//! host's node). A component that touches `k` hosts, or whose cpu needs `k` hosts' free cores,
//! ends up in at least `k` pieces, and a connected graph in `k` pieces cuts at least `k − 1`
//! connections. A component may instead squeeze into fewer hosts, but each host it does without
//! leaves at least one core of overflow (every host counted has a free core), at `alpha` each.
//! Components share no connection, and overflow caused by several of them on one host is at
//! least the sum of what each would cause alone, so the bounds add up.

use super::problem::Problem;

/// Scratch for the bound, kept across calls so that a search allocates once.
pub struct Pieces {
    parent: Vec<usize>,
    /// Per component root: cpu of its unplaced units, host nodes, their free cores, and
    /// whether it holds an unplaced unit.
    cpu: Vec<u64>,
    hosts_in: Vec<u64>,
    free_in: Vec<u64>,
    has_unit: Vec<bool>,
    touched: Vec<bool>,
    /// Hosts with free cores, most first.
    roomiest: Vec<usize>,
    /// Lightest connection (what one cut costs at least).
    lightest: u32,
}

impl Pieces {
    pub fn new(problem: &Problem) -> Pieces {
        let size = problem.units.len() + problem.hosts.len();
        Pieces {
            parent: vec![0; size],
            cpu: vec![0; size],
            hosts_in: vec![0; size],
            free_in: vec![0; size],
            has_unit: vec![false; size],
            touched: vec![false; problem.hosts.len()],
            roomiest: Vec::with_capacity(problem.hosts.len()),
            lightest: problem
                .edges
                .iter()
                .map(|e| e.2)
                .filter(|w| *w > 0)
                .min()
                .unwrap_or(0),
        }
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.find(a), self.find(b));
        if ra != rb {
            self.parent[ra.max(rb)] = ra.min(rb);
        }
    }

    /// Least cut and overflow the `unplaced` units still add, given the host of each placed
    /// unit (`at`, `usize::MAX` when unplaced) and the hosts' free cores.
    pub fn bound(
        &mut self,
        problem: &Problem,
        adjacency: &[Vec<(usize, u32)>],
        at: &[usize],
        unplaced: &[usize],
        free: &[u64],
        alpha: f64,
    ) -> f64 {
        let n = problem.units.len();
        let hosts = problem.hosts.len();
        for &u in unplaced {
            self.parent[u] = u;
        }
        for h in 0..hosts {
            self.parent[n + h] = n + h;
            self.touched[h] = false;
        }
        for &u in unplaced {
            if let Some(p) = problem.units[u].pin {
                self.touched[p] = true;
                self.union(u, n + p);
            }
            for &(v, w) in &adjacency[u] {
                if w == 0 {
                    continue;
                }
                if at[v] == usize::MAX {
                    self.union(u, v);
                } else {
                    self.touched[at[v]] = true;
                    self.union(u, n + at[v]);
                }
            }
        }
        for x in unplaced.iter().copied().chain(n..n + hosts) {
            let r = self.find(x);
            (self.cpu[r], self.hosts_in[r]) = (0, 0);
            (self.free_in[r], self.has_unit[r]) = (0, false);
        }
        for &u in unplaced {
            let r = self.find(u);
            self.cpu[r] += problem.units[u].cpu as u64;
            self.has_unit[r] = true;
        }
        for (h, room) in free.iter().enumerate() {
            if self.touched[h] {
                let r = self.find(n + h);
                self.hosts_in[r] += 1;
                self.free_in[r] += room;
            }
        }
        // Hosts by free cores, most first: the fewest a component can make do with.
        let mut roomiest = std::mem::take(&mut self.roomiest);
        roomiest.clear();
        roomiest.extend((0..hosts).filter(|&h| free[h] > 0));
        roomiest.sort_by_key(|&h| std::cmp::Reverse(free[h]));
        let lightest = self.lightest as f64;
        let mut total = 0.0;
        // Each component once, at its root (a unit or a host node).
        for x in unplaced.iter().copied().chain(n..n + hosts) {
            if self.parent[x] == x && self.has_unit[x] {
                self.has_unit[x] = false;
                total += self.component(x, n, &roomiest, free, lightest, alpha);
            }
        }
        self.roomiest = roomiest;
        total
    }

    /// The bound of the component rooted at `r`: over how many further hosts it uses, the
    /// cheapest of its cuts (pieces − 1) and the overflow it leaves.
    fn component(
        &mut self,
        r: usize,
        n: usize,
        roomiest: &[usize],
        free: &[u64],
        lightest: f64,
        alpha: f64,
    ) -> f64 {
        let own = self.hosts_in[r];
        let mut room = self.free_in[r];
        let cpu = self.cpu[r];
        let mut extra = 0u64;
        let cost = |pieces: u64, room: u64| {
            pieces.saturating_sub(1) as f64 * lightest + cpu.saturating_sub(room) as f64 * alpha
        };
        // With no host yet, it needs one at least.
        let mut best = if own > 0 {
            cost(own, room)
        } else {
            f64::INFINITY
        };
        for &h in roomiest {
            if room >= cpu && own + extra > 0 {
                break;
            }
            if self.touched[h] && self.find(n + h) == r {
                continue;
            }
            extra += 1;
            room += free[h];
            best = best.min(cost(own + extra, room));
        }
        if best.is_infinite() {
            // Not one host has a free core: it overflows wherever it goes.
            best = cost(1, 0);
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::brute;
    use crate::placement::generate::{generate_tight, Family, HostSizes};
    use crate::placement::Weights;

    /// The bound (plus what is already placed) never exceeds the best completion of a partial
    /// assignment, found by brute force.
    #[test]
    fn never_above_the_best_completion() {
        let weights = Weights::default();
        let cases = brute::partial_cases(&weights);
        for case in &cases {
            let problem = &case.problem;
            let bound = Pieces::new(problem).bound(
                problem,
                &problem.adjacency(),
                &case.at,
                &case.unplaced,
                &case.free,
                weights.alpha,
            );
            case.assert_below_best(bound);
        }
        assert!(cases.len() > 100);
    }

    #[test]
    fn a_chain_over_full_hosts_cuts_once_per_extra_host() {
        // Nine one-core units in a chain on three hosts of three cores: three pieces, two cuts.
        let mut problem = generate_tight(Family::Chain, 9, 3, 1, HostSizes::Equal, 0.0);
        for unit in &mut problem.units {
            unit.cpu = 1;
        }
        for host in &mut problem.hosts {
            host.cores = 3;
        }
        for edge in &mut problem.edges {
            edge.2 = 1;
        }
        let adjacency = problem.adjacency();
        let at = vec![usize::MAX; 9];
        let unplaced: Vec<usize> = (0..9).collect();
        let bound =
            Pieces::new(&problem).bound(&problem, &adjacency, &at, &unplaced, &[3, 3, 3], 100.0);
        assert_eq!(bound, 2.0);
    }
}
