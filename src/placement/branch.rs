//! Branches: the chain segments and subtrees around a unit on its host, which the ejection
//! searches move to another host as one piece.

use super::heuristic::State;

/// Largest branch moved in one step.
pub const MAX_BRANCH: usize = 16;

/// A branch and what finding it cost.
pub struct Grown {
    /// Sorted units, or `None` when the piece is too large or holds a unit that may not move.
    pub branch: Option<Vec<usize>>,
    /// Units visited.
    pub units: u64,
    /// Connections scanned.
    pub scanned: u64,
}

/// The units on `u`'s host connected to `u` other than through `avoid`. `mark` is scratch
/// (all false, and left so); `free(x)` says whether `x` may move.
pub fn grow(
    state: &State,
    mark: &mut [bool],
    u: usize,
    avoid: Option<usize>,
    free: impl Fn(usize) -> bool,
) -> Grown {
    let h = state.at[u];
    let mut branch = vec![u];
    let mut scanned = 0u64;
    mark[u] = true;
    if let Some(a) = avoid {
        mark[a] = true;
    }
    let mut ok = true;
    let mut i = 0;
    while i < branch.len() && ok {
        let x = branch[i];
        i += 1;
        scanned += state.adjacency[x].len() as u64;
        for &(v, _) in &state.adjacency[x] {
            if mark[v] || state.at[v] != h {
                continue;
            }
            mark[v] = true;
            branch.push(v);
            if branch.len() > MAX_BRANCH {
                ok = false;
                break;
            }
        }
    }
    for x in &branch {
        mark[*x] = false;
    }
    if let Some(a) = avoid {
        mark[a] = false;
    }
    let units = branch.len() as u64;
    let branch = (ok && branch.iter().all(|x| free(*x))).then(|| {
        branch.sort_unstable();
        branch
    });
    Grown {
        branch,
        units,
        scanned,
    }
}

/// Every branch holding `u` on its host: for each neighbour `p` there, what hangs off `u`
/// away from `p`; and `u`'s whole piece. Also returns the `Grown` costs, summed.
pub fn around(
    state: &State,
    mark: &mut [bool],
    u: usize,
    free: impl Fn(usize) -> bool,
) -> (Vec<Vec<usize>>, u64, u64) {
    let h = state.at[u];
    let inside: Vec<usize> = state.adjacency[u]
        .iter()
        .filter(|(v, _)| state.at[*v] == h)
        .map(|(v, _)| *v)
        .collect();
    let (mut units, mut scanned) = (0, 0);
    let mut out: Vec<Vec<usize>> = Vec::new();
    for p in inside.iter().map(|p| Some(*p)).chain([None]) {
        let grown = grow(state, mark, u, p, &free);
        units += grown.units;
        scanned += grown.scanned;
        if let Some(branch) = grown.branch {
            if !out.contains(&branch) {
                out.push(branch);
            }
        }
    }
    (out, units, scanned)
}
