#!/usr/bin/env python3
"""Offline optimality yardstick for the placement solver: the exact MIP, solved with HiGHS.

Not part of the build or CI. It reads instances dumped by the placement benchmark:

    PLACEMENT_DUMP_DIR=/tmp/placement-instances cargo bench --bench placement
    pip install highspy
    python3 scripts/placement_yardstick.py /tmp/placement-instances --max-units 300 --time-limit 60

Each instance file is JSON: {"name", "problem" (the serde form of `placement::Problem`),
"assignment" (our host per unit), "cost" (ours), "weights": {"alpha", "beta"}, ...}.

The model, for units u, hosts h and edges e = (a, b, w):
    x[u,h] ∈ {0,1},  Σ_h x[u,h] = 1,  x[u,pin(u)] = 1 for pinned units
    o[h] ≥ 0,        o[h] ≥ Σ_u cpu[u]·x[u,h] − cores[h]
    z[e,h] ≥ 0,      z[e,h] ≥ x[a,h] − x[b,h],  z[e,h] ≥ x[b,h] − x[a,h]   (cut_e = ½ Σ_h z[e,h])
    minimize  alpha·Σ_h o[h] + Σ_e w_e·½·Σ_h z[e,h] + beta·Σ_{u,h} moved_u(h)·x[u,h]
where moved_u(h) = previous_total[u] − (blocks of u previously on h), plus (unless --plain)
valid rows that tighten the relaxation for units with many neighbours (see build_lp). Our
assignment is given to HiGHS as a starting solution unless --no-start.

Prints one row per instance: our cost, HiGHS's best, the proven lower bound (HiGHS's, or the
structural bound of `combinatorial_bound` where that is higher), and the gaps. Instances above
--max-units get the structural bound only.

Tight instances (`tight-mixed/…`, `tight-equal/…`: total cpu 90–100 % of the cores) are dumped
with the others; `PLACEMENT_DUMP_FILTER=tight` dumps only them. HiGHS takes minutes on them, so
`--solutions DIR` keeps its results and `--known DIR` compares a later dump against those
instead of solving again (the instances must be the same):

    python3 scripts/placement_yardstick.py before/ --max-units 500 --time-limit 30 --solutions highs/
    python3 scripts/placement_yardstick.py after/ --known highs/
"""

import argparse
import glob
import json
import math
import os
import sys
import time

import numpy as np

try:
    import highspy
except ImportError:  # pragma: no cover - an offline tool
    sys.exit("placement_yardstick needs HiGHS: pip install highspy")


def load_instances(paths):
    files = []
    for p in paths:
        if os.path.isdir(p):
            files.extend(sorted(glob.glob(os.path.join(p, "*.json"))))
        else:
            files.append(p)
    for f in files:
        with open(f) as fh:
            inst = json.load(fh)
        inst.setdefault("name", os.path.splitext(os.path.basename(f))[0])
        yield inst


def moved_if_on(unit, h):
    stay = sum(n for (ph, n) in unit.get("previous", []) if ph == h)
    return unit.get("previous_total", 0) - stay


def our_cost(problem, at, alpha, beta):
    """Recomputes the cost of an assignment exactly as `Problem::cost` does."""
    load = [0] * len(problem["hosts"])
    for u, unit in enumerate(problem["units"]):
        load[at[u]] += unit["cpu"]
    overflow = sum(max(0, l - h["cores"]) for l, h in zip(load, problem["hosts"]))
    cut = sum(w for (a, b, w) in problem["edges"] if at[a] != at[b])
    moved = sum(moved_if_on(unit, at[u]) for u, unit in enumerate(problem["units"]))
    return overflow, cut, moved, alpha * overflow + cut + beta * moved


def build_lp(problem, alpha, beta, strengthen=True):
    hosts, units, edges = problem["hosts"], problem["units"], problem["edges"]
    H, U, E = len(hosts), len(units), len(edges)
    nx, no = U * H, H
    ncol = nx + no + E * H

    def x(u, h):
        return u * H + h

    def o(h):
        return nx + h

    def z(e, h):
        return nx + no + e * H + h

    cost = np.zeros(ncol)
    lower = np.zeros(ncol)
    upper = np.full(ncol, highspy.kHighsInf)
    upper[:nx] = 1.0
    for u, unit in enumerate(units):
        for h in range(H):
            cost[x(u, h)] = beta * moved_if_on(unit, h)
        pin = unit.get("pin")
        if pin is not None:
            upper[x(u, 0) : x(u, 0) + H] = 0.0
            lower[x(u, pin)] = upper[x(u, pin)] = 1.0
    cost[nx : nx + no] = alpha
    for e, (a, b, w) in enumerate(edges):
        cost[z(e, 0) : z(e, 0) + H] = w / 2.0

    starts, index, value, rlo, rhi = [0], [], [], [], []

    def row(entries, lo, hi):
        for c, v in entries:
            index.append(c)
            value.append(v)
        starts.append(len(index))
        rlo.append(lo)
        rhi.append(hi)

    inf = highspy.kHighsInf
    for u in range(U):
        row([(x(u, h), 1.0) for h in range(H)], 1.0, 1.0)
    for h in range(H):
        row([(o(h), 1.0)] + [(x(u, h), -float(units[u]["cpu"])) for u in range(U) if units[u]["cpu"]],
            -float(hosts[h]["cores"]), inf)
    for e, (a, b, _) in enumerate(edges):
        for h in range(H):
            row([(z(e, h), 1.0), (x(a, h), -1.0), (x(b, h), 1.0)], 0.0, inf)
            row([(z(e, h), 1.0), (x(a, h), 1.0), (x(b, h), -1.0)], 0.0, inf)
    if strengthen:
        # Neighbours sharing u's host fit in what u leaves of it (plus overflow):
        #   Σ_{e=(u,v)} cpu_v·(x[u,h] + x[v,h] − z[e,h])/2 ≤ (cores_h − cpu_u)·x[u,h] + o[h],
        # where (x[u,h] + x[v,h] − z[e,h])/2 is 1 exactly when both are on h. Valid for every
        # optimal integer solution, and it is what bounds a mixer with many inputs: the plain
        # relaxation spreads every unit evenly over the hosts and sees no cut at all.
        incident = [[] for _ in range(U)]
        for e, (a, b, _) in enumerate(edges):
            incident[a].append((e, b))
            incident[b].append((e, a))
        for u in range(U):
            around = sum(units[v]["cpu"] for _, v in incident[u])
            for h in range(H):
                room = hosts[h]["cores"] - units[u]["cpu"]
                if around <= room or units[u].get("pin") not in (None, h):
                    continue
                coef = {x(u, h): -float(room), o(h): -1.0}
                for e, v in incident[u]:
                    c = units[v]["cpu"] / 2.0
                    coef[x(u, h)] += c
                    coef[x(v, h)] = coef.get(x(v, h), 0.0) + c
                    coef[z(e, h)] = coef.get(z(e, h), 0.0) - c
                row(sorted(coef.items()), -inf, 0.0)

    lp = highspy.HighsLp()
    lp.num_col_ = ncol
    lp.num_row_ = len(rlo)
    lp.col_cost_ = cost
    lp.col_lower_ = lower
    lp.col_upper_ = upper
    lp.row_lower_ = np.array(rlo, dtype=float)
    lp.row_upper_ = np.array(rhi, dtype=float)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
    lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
    lp.a_matrix_.value_ = np.array(value, dtype=float)
    lp.integrality_ = [highspy.HighsVarType.kInteger] * nx + [highspy.HighsVarType.kContinuous] * (ncol - nx)

    def start(at):
        """Column values of the MIP for an assignment."""
        col = np.zeros(ncol)
        load = [0] * H
        for u, h in enumerate(at):
            col[x(u, h)] = 1.0
            load[h] += units[u]["cpu"]
        for h in range(H):
            col[o(h)] = max(0, load[h] - hosts[h]["cores"])
        for e, (a, b, _) in enumerate(edges):
            if at[a] != at[b]:
                col[z(e, at[a])] = col[z(e, at[b])] = 1.0
        return col

    return lp, start


def solve(inst, time_limit, use_start, threads, strengthen=True):
    """(our cost terms, HiGHS's best, its bound, status, seconds, HiGHS's assignment or None)."""
    problem, at = inst["problem"], inst["assignment"]
    alpha, beta = inst["weights"]["alpha"], inst["weights"]["beta"]
    ours = our_cost(problem, at, alpha, beta)
    if abs(ours[3] - inst["cost"]["total"]) > 1e-6:
        sys.exit(f"{inst['name']}: our cost recomputed as {ours[3]}, the dump says {inst['cost']['total']}")
    lp, start = build_lp(problem, alpha, beta, strengthen)
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", float(time_limit))
    h.setOptionValue("threads", threads)
    integral = float(alpha).is_integer() and float(beta).is_integer()
    if integral:
        # Every cost term is then an integer: a bound within 1 of the incumbent proves it.
        h.setOptionValue("mip_abs_gap", 0.999)
    h.setOptionValue("mip_rel_gap", 0.0)
    h.passModel(lp)
    if use_start:
        sol = highspy.HighsSolution()
        sol.col_value = start(at)
        h.setSolution(sol)
    began = time.monotonic()
    h.run()
    elapsed = time.monotonic() - began
    info = h.getInfo()
    best = info.objective_function_value if info.primal_solution_status else math.inf
    bound = info.mip_dual_bound
    if integral and math.isfinite(bound):
        bound = math.ceil(bound - 1e-6)
    status = h.modelStatusToString(h.getModelStatus())
    found = None
    if info.primal_solution_status:
        H = len(problem["hosts"])
        col = h.getSolution().col_value
        found = [max(range(H), key=lambda k: col[u * H + k]) for u in range(len(problem["units"]))]
    return ours, best, bound, status, elapsed, found


def combinatorial_bound(problem, alpha):
    """A bound from the problem's structure alone, for sizes the MIP cannot prove.

    Forced overflow: alpha·max(0, Σ cpu − Σ cores). Star bound: for a unit m on host h, the
    connections of m that are not cut lead to neighbours on h; those fit in the cores h has
    left after its pins and m (fractional knapsack), or each extra core costs alpha ≥ the best
    weight per core a neighbour brings. So cost ≥ max over m of min over h of (Σ w around m −
    that knapsack). For a fan-in every connection touches the mixer and this bound is tight.
    Returns max(forced overflow, star bound), or the forced overflow alone when alpha is too
    small for the star argument.
    """
    units, hosts, edges = problem["units"], problem["hosts"], problem["edges"]
    forced = alpha * max(0, sum(u["cpu"] for u in units) - sum(h["cores"] for h in hosts))
    around = [[] for _ in units]
    for a, b, w in edges:
        around[a].append((b, w))
        around[b].append((a, w))
    if any(w > alpha * units[v]["cpu"] for nb in around for v, w in nb if units[v]["cpu"] > 0):
        return forced
    pinned_cpu = [0] * len(hosts)
    for u in units:
        if u.get("pin") is not None:
            pinned_cpu[u["pin"]] += u["cpu"]
    star = 0.0
    for m, unit in enumerate(units):
        total = sum(w for _, w in around[m])
        if total <= star:
            continue
        worst = total
        for h in range(len(hosts)):
            if unit.get("pin") not in (None, h):
                continue
            room = hosts[h]["cores"] - pinned_cpu[h] - (unit["cpu"] if unit.get("pin") is None else 0)
            kept = sum(w for v, w in around[m] if units[v].get("pin") == h)
            free = [(w, units[v]["cpu"]) for v, w in around[m] if units[v].get("pin") is None]
            kept += sum(w for w, c in free if c == 0)
            left = max(room, 0)
            for w, c in sorted((item for item in free if item[1] > 0), key=lambda i: -i[0] / i[1]):
                if left <= 0:
                    break
                take = min(1.0, left / c)
                kept += take * w
                left -= take * c
            worst = min(worst, total - kept)
        star = max(star, worst)
    return max(forced, star)


def pct(ours, ref):
    if not math.isfinite(ref):  # also NaN: no MIP was run
        return "—"
    if ref <= 0:
        return "0.0" if ours <= 0 else "∞"
    return f"{100.0 * (ours - ref) / ref:.1f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="+", help="instance files or directories of *.json")
    ap.add_argument("--time-limit", type=float, default=60.0, help="seconds per instance (default 60)")
    ap.add_argument("--max-units", type=int, default=300,
                    help="larger instances get only the structural bound, no MIP (default 300)")
    ap.add_argument("--bounds-only", action="store_true", help="no MIP at all: structural bounds only")
    ap.add_argument("--filter", default="", help="only instances whose name contains this")
    ap.add_argument("--no-start", action="store_true", help="do not give HiGHS our assignment")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--plain", action="store_true", help="the model as above without the neighbour-room rows")
    ap.add_argument("--solutions", metavar="DIR", help="write HiGHS's assignment per instance here")
    ap.add_argument("--known", metavar="DIR",
                    help="take HiGHS's best and bound from a --solutions DIR of an earlier run instead of solving")
    args = ap.parse_args()
    highspy.Highs()  # HiGHS prints its banner once, on the first construction: before the table.

    print("| instance | units | hosts | ours (ovf/cut/moved) | HiGHS best | proven bound | status | s "
          "| ours over best % | ours over bound % |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for inst in load_instances(args.paths):
        problem = inst["problem"]
        units, hosts = len(problem["units"]), len(problem["hosts"])
        if args.filter not in inst["name"]:
            continue
        alpha, beta = inst["weights"]["alpha"], inst["weights"]["beta"]
        structural = combinatorial_bound(problem, alpha)
        if float(alpha).is_integer() and float(beta).is_integer():
            structural = math.ceil(structural - 1e-6)
        known = os.path.join(args.known or "", inst["name"].replace("/", "_") + ".highs.json")
        if args.known and os.path.exists(known):
            with open(known) as fh:
                earlier = json.load(fh)
            overflow, cut, moved, total = our_cost(problem, inst["assignment"], alpha, beta)
            best, bound, elapsed = earlier["objective"], earlier["bound"], 0.0
            status = f"known: {earlier['status']}"
            if structural > bound:
                bound, status = structural, status + ", structural bound"
        elif units > args.max_units or args.bounds_only:
            # Too big for the MIP: only the structural bound.
            overflow, cut, moved, total = our_cost(problem, inst["assignment"], alpha, beta)
            best, bound, status, elapsed = math.nan, structural, "structural bound only", 0.0
        else:
            ours, best, bound, status, elapsed, found = solve(
                inst, args.time_limit, not args.no_start, args.threads, not args.plain)
            overflow, cut, moved, total = ours
            if args.solutions and found is not None:
                os.makedirs(args.solutions, exist_ok=True)
                out = os.path.join(args.solutions, inst["name"].replace("/", "_") + ".highs.json")
                with open(out, "w") as fh:
                    json.dump({"name": inst["name"], "assignment": found, "objective": best, "bound": bound,
                               "status": status}, fh)
            if structural > bound:
                bound, status = structural, status + ", structural bound"
        if total <= bound + 1e-9:
            status = "optimal" if status in ("Optimal", "known: Optimal") else "optimal (structural bound)"
        print(f"| {inst['name']} | {units} | {hosts} | {total:g} ({overflow}/{cut}/{moved}) | {best:g} | {bound:g} "
              f"| {status} | {elapsed:.1f} | {pct(total, best)} | {pct(total, bound)} |", flush=True)

if __name__ == "__main__":
    main()
