//! The cells bound of the exact search: what the unplaced units must still cut because the
//! subtrees hanging off a host do not all fit in its free cores (the packing bound of Delling
//! et al., "Exact combinatorial branch-and-bound for graph bisection", with capacities).
//!
//! Every unplaced unit next to a placed one roots a cell on the host it is most linked to;
//! the other unplaced units join the cells by breadth-first search, so each cell is a tree
//! of connections hanging off its host. A cell not wholly on its host cuts one of its tree's
//! connections at least; one whose cpu, beyond what it keeps on its host, needs `p` other hosts
//! cuts `p` of them (the tree then spans `p + 1` hosts). And whatever it keeps on its host,
//! every piece of it must fit on some host: a knapsack over each cell's tree gives the least
//! weight it cuts when the piece holding its root takes at most `k` cores of the host (or when
//! that piece goes elsewhere, cutting the root's connections too). Per host, its free cores
//! are shared out among its cells at the least total cost (a small knapsack). Cells share no
//! unit, so their trees share no connection; the connections that root the cells are left out
//! of each unit's cheapest increment, which counts the rest of its connections to placed
//! units. That holds when nothing more overflows; otherwise the cost is at least `alpha` above
//! the cheapest increments, and the bound is the lesser of the two.

use super::problem::Problem;
use super::Weights;

const NONE: usize = usize::MAX;

/// A tree of unplaced units hanging off a host.
struct Cell {
    host: usize,
    cpu: u64,
    /// Lightest connection of its tree, and the weight of its root's connections to the host.
    lightest: u32,
    root_weight: u32,
    root: usize,
}

/// Scratch for the bound, kept across calls so that a search allocates once.
pub struct Cells {
    /// Per unit: its cell, or `NONE`.
    cell: Vec<usize>,
    cells: Vec<Cell>,
    /// Per unit: the unit of its cell it was reached from, and that connection's weight.
    parent: Vec<(usize, u32)>,
    /// Per unit, by cores `s` up to `span`: the least weight its subtree (in its cell's tree)
    /// cuts when the piece holding the unit takes `s` cores and every other piece fits on a
    /// host; then, per cell root, the least for `s` or fewer.
    pieces: Vec<f64>,
    merged: Vec<f64>,
    span: usize,
    queue: Vec<usize>,
    /// Per host: least cost of its cells so far, by cores of it they keep.
    table: Vec<f64>,
    next: Vec<f64>,
    /// Hosts with free cores, most first.
    roomiest: Vec<usize>,
    /// Free cores of the other hosts, most first, summed: `reach[k]` is what `k` hosts hold.
    reach: Vec<u64>,
}

/// What a partial assignment looks like to the bound: host per unit (`usize::MAX` when
/// unplaced), `links[u * hosts + h]` (weight of `u`'s connections to placed units on `h`),
/// `placed_links[u]` (to placed units anywhere) and the free cores per host.
pub struct Partial<'a> {
    pub at: &'a [usize],
    pub links: &'a [u32],
    pub placed_links: &'a [u32],
    pub free: &'a [u64],
}

impl Cells {
    pub fn new(problem: &Problem) -> Cells {
        Cells {
            cell: vec![NONE; problem.units.len()],
            cells: Vec::new(),
            parent: vec![(NONE, 0); problem.units.len()],
            pieces: Vec::new(),
            merged: Vec::new(),
            span: 0,
            queue: Vec::new(),
            table: Vec::new(),
            next: Vec::new(),
            roomiest: Vec::new(),
            reach: Vec::new(),
        }
    }

    /// Least cost the `unplaced` units still add (cut, move and overflow), or 0 when the
    /// bound does not apply (the unplaced cpu does not fit in the free cores, or a pinned unit
    /// is unplaced).
    pub fn bound(
        &mut self,
        problem: &Problem,
        adjacency: &[Vec<(usize, u32)>],
        partial: &Partial,
        unplaced: &[usize],
        weights: &Weights,
    ) -> f64 {
        let hosts = problem.hosts.len();
        let cpu: u64 = unplaced.iter().map(|&u| problem.units[u].cpu as u64).sum();
        let room: u64 = partial.free.iter().sum();
        if cpu > room || unplaced.iter().any(|&u| problem.units[u].pin.is_some()) {
            return 0.0;
        }
        // Roots: each unplaced unit next to placed ones, on the host it is most linked to.
        self.cells.clear();
        self.queue.clear();
        for &u in unplaced {
            self.cell[u] = NONE;
            if partial.placed_links[u] == 0 {
                continue;
            }
            let row = &partial.links[u * hosts..(u + 1) * hosts];
            let host = (0..hosts)
                .max_by_key(|&h| (row[h], std::cmp::Reverse(partial.free[h])))
                .expect("a host");
            self.cell[u] = self.cells.len();
            self.cells.push(Cell {
                host,
                cpu: 0,
                lightest: row[host],
                root_weight: row[host],
                root: u,
            });
            self.parent[u] = (NONE, 0);
            self.queue.push(u);
        }
        let mut i = 0;
        while i < self.queue.len() {
            let x = self.queue[i];
            i += 1;
            let c = self.cell[x];
            self.cells[c].cpu += problem.units[x].cpu as u64;
            for &(v, w) in &adjacency[x] {
                if partial.at[v] == NONE && self.cell[v] == NONE && w > 0 {
                    self.cell[v] = c;
                    self.cells[c].lightest = self.cells[c].lightest.min(w);
                    self.parent[v] = (x, w);
                    self.queue.push(v);
                }
            }
        }
        self.subtrees(problem, partial.free);
        // Each unit's cheapest increment without its cell's root connections, and the least
        // increment with them (for the overflowing alternative).
        let (mut without_roots, mut cheapest) = (0.0, 0.0);
        for &u in unplaced {
            let unit = &problem.units[u];
            let row = &partial.links[u * hosts..(u + 1) * hosts];
            let root = (self.cell[u] != NONE && partial.placed_links[u] > 0)
                .then(|| self.cells[self.cell[u]].host);
            let (mut best, mut best_all) = (f64::INFINITY, f64::INFINITY);
            for h in 0..hosts {
                let moved = unit.moved_if_on(h) as f64 * weights.beta;
                let cut = partial.placed_links[u] - row[h];
                best_all = best_all.min(cut as f64 + moved);
                let kept = match root {
                    Some(r) if r != h => cut - row[r],
                    _ => cut,
                };
                best = best.min(kept as f64 + moved);
            }
            without_roots += best;
            cheapest += best_all;
        }
        let overflowing = cheapest + weights.alpha;
        self.roomiest.clear();
        self.roomiest
            .extend((0..hosts).filter(|&h| partial.free[h] > 0));
        self.roomiest
            .sort_unstable_by_key(|&h| std::cmp::Reverse(partial.free[h]));
        let mut packing = 0.0;
        for h in 0..hosts {
            packing += self.host(h, partial.free);
            if without_roots + packing >= overflowing {
                return overflowing;
            }
        }
        without_roots + packing
    }

    /// Fills `pieces`: children before parents (the queue backwards), each unit's table is
    /// merged into its parent's, the connection between them cut or not (a knapsack over the
    /// cores of the parent's piece); pieces hold at most the free cores of the roomiest host.
    fn subtrees(&mut self, problem: &Problem, free: &[u64]) {
        let span = free.iter().copied().max().unwrap_or(0) as usize;
        let width = span + 1;
        self.span = span;
        self.pieces
            .resize(problem.units.len() * width, f64::INFINITY);
        for &x in &self.queue {
            let row = &mut self.pieces[x * width..(x + 1) * width];
            row.fill(f64::INFINITY);
            let cpu = problem.units[x].cpu as usize;
            if cpu <= span {
                row[cpu] = 0.0;
            }
        }
        self.merged.resize(width, f64::INFINITY);
        for i in (0..self.queue.len()).rev() {
            let x = self.queue[i];
            let (p, w) = self.parent[x];
            let child = &self.pieces[x * width..(x + 1) * width];
            let cut_off = child.iter().copied().fold(f64::INFINITY, f64::min) + w as f64;
            if p != NONE {
                let merged = &mut self.merged;
                merged.fill(f64::INFINITY);
                let parent = &self.pieces[p * width..(p + 1) * width];
                for (a, &pa) in parent.iter().enumerate().filter(|(_, c)| c.is_finite()) {
                    merged[a] = merged[a].min(pa + cut_off);
                    for (b, &cb) in child[..width - a].iter().enumerate() {
                        merged[a + b] = merged[a + b].min(pa + cb);
                    }
                }
                self.pieces[p * width..(p + 1) * width].copy_from_slice(merged);
            } else {
                // A cell root: the least for `s` cores or fewer.
                let row = &mut self.pieces[x * width..(x + 1) * width];
                for s in 1..width {
                    row[s] = row[s].min(row[s - 1]);
                }
            }
        }
    }

    /// Least cut the cells of host `h` make when its free cores are shared out among them.
    fn host(&mut self, h: usize, free: &[u64]) -> f64 {
        if !self.cells.iter().any(|c| c.host == h) {
            return 0.0;
        }
        // What the `k` roomiest other hosts hold (`roomiest` is sorted by free cores).
        self.reach.clear();
        self.reach.push(0);
        for &g in &self.roomiest {
            if g != h {
                let last = *self.reach.last().expect("reach starts at 0");
                self.reach.push(last + free[g]);
            }
        }
        // Other hosts a cell needs for `x` cores (infinite when they cannot hold them).
        let needed = |reach: &[u64], x: u64| match reach.iter().position(|&r| r >= x) {
            Some(k) => k as f64,
            None => f64::INFINITY,
        };
        let room = free[h] as usize;
        self.table.clear();
        self.table.resize(room + 1, f64::INFINITY);
        self.table[0] = 0.0;
        let span = self.span;
        for cell in &self.cells {
            if cell.host != h {
                continue;
            }
            let (cpu, lightest) = (cell.cpu, cell.lightest as f64);
            let least = &self.pieces[cell.root * (span + 1)..(cell.root + 1) * (span + 1)];
            // Off the host, the root's connections to it are cut, and its pieces still fit.
            let off = cell.root_weight as f64 + least[span];
            self.next.clear();
            self.next.resize(room + 1, f64::INFINITY);
            for used in 0..=room {
                if self.table[used].is_infinite() {
                    continue;
                }
                let keep_max = (cpu as usize).min(room - used);
                for keep in 0..=keep_max {
                    let cost = if keep as u64 == cpu {
                        0.0
                    } else {
                        // On the host, the root's piece takes `keep` cores at most.
                        let tree = off.min(least[keep.min(span)]);
                        tree.max(needed(&self.reach, cpu - keep as u64) * lightest)
                    };
                    let total = self.table[used] + cost;
                    if total < self.next[used + keep] {
                        self.next[used + keep] = total;
                    }
                }
            }
            std::mem::swap(&mut self.table, &mut self.next);
        }
        self.table.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::brute;
    use crate::placement::generate::{generate_tight, Family, HostSizes};

    /// The bound (plus what is already placed) never exceeds the best completion of a partial
    /// assignment, found by brute force.
    #[test]
    fn never_above_the_best_completion() {
        let weights = Weights::default();
        let mut positive = 0;
        for case in brute::partial_cases(&weights) {
            let problem = &case.problem;
            let hosts = problem.hosts.len();
            let adjacency = problem.adjacency();
            let mut links = vec![0u32; problem.units.len() * hosts];
            let mut placed_links = vec![0u32; problem.units.len()];
            for (u, around) in adjacency.iter().enumerate() {
                for &(v, w) in around.iter().filter(|(v, _)| case.at[*v] != NONE) {
                    links[u * hosts + case.at[v]] += w;
                    placed_links[u] += w;
                }
            }
            let partial = Partial {
                at: &case.at,
                links: &links,
                placed_links: &placed_links,
                free: &case.free,
            };
            let bound =
                Cells::new(problem).bound(problem, &adjacency, &partial, &case.unplaced, &weights);
            case.assert_below_best(bound);
            positive += (bound > 0.0) as usize;
        }
        assert!(positive > 50, "{positive} positive");
    }

    #[test]
    fn subtrees_that_do_not_fit_are_cut() {
        // A root on a host with one free core and three one-core leaves hanging off it: two
        // leaves go elsewhere, two connections are cut.
        let mut problem = generate_tight(Family::FanIn, 4, 3, 1, HostSizes::Equal, 0.0);
        for unit in &mut problem.units {
            unit.cpu = 1;
            unit.pin = None;
        }
        problem.edges = vec![(0, 3, 1), (1, 3, 1), (2, 3, 1)];
        for host in &mut problem.hosts {
            host.cores = 2;
        }
        let adjacency = problem.adjacency();
        let at = [NONE, NONE, NONE, 0];
        let mut links = vec![0u32; 4 * 3];
        for u in 0..3 {
            links[u * 3] = 1;
        }
        let partial = Partial {
            at: &at,
            links: &links,
            placed_links: &[1, 1, 1, 0],
            free: &[1, 2, 2],
        };
        let bound = Cells::new(&problem).bound(
            &problem,
            &adjacency,
            &partial,
            &[0, 1, 2],
            &Weights::default(),
        );
        assert_eq!(bound, 2.0);
    }
}
