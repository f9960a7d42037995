"""Per-layer bit allocation from a sensitivity table: costs, the budget solver, allocation files.

The problem: each layer's keys and each layer's values (a *group*) take one width b from a set
(the measured widths plus the base width, 8 bits by default, whose cost is 0 by definition: the
sensitivity of a cell is its cost over the all-base baseline). A choice costs `cost[g][b]` (KL or
Δ NLL, measured by tq_ort.quality.sensitivity with every other group at the base width) and
`kv_heads * row_bytes(head_dim, b)` bytes per token. Minimise the summed cost subject to the bytes
per token staying within the budget, counted as `tq-ort eval` counts compression
(`bits/value = 8 * bytes per token / (2 * sum(kv_heads * head_dim))`, the per-row scale included,
rings of a recent window not: they are a fixed cost outside the allocation).

Solver: exact, a multiple-choice knapsack solved by dynamic programming over the row bytes in units
of their greatest common divisor (SmolLM2: 60 groups x 4 widths x ~500 units, milliseconds). A greedy
marginal-cost (or Lagrangian) solver is optimal only where the budget falls on a vertex of the convex
hull of the cost curves; between vertices it leaves bytes unused or takes a worse mix, and the problem
is small enough that there is no reason to approximate. Ties go to the wider width and to the
allocation using more of the budget, in a fixed group order, so the same table and budget always give
the same allocation. The cost model assumes the groups' costs add up (they are measured one at a
time); costs are made non-increasing in the width (a cell cheaper than a wider one of the same group
takes the wider one's cost: a wider code does not hurt, and a cell below it is measurement noise).
"""
from __future__ import annotations

import hashlib
import json
import math
from functools import reduce
from pathlib import Path

import numpy as np

from ..codec import row_bytes

FORMAT_SENSITIVITY = "tq-ort sensitivity v1"
FORMAT_ALLOCATION = "tq-ort allocation v1"
METRICS = ("kl", "nll")
KINDS = ("key", "value")


def layer_dims(sens: dict) -> list[dict]:
    """[{layer, kv_heads, head_dim}] of a sensitivity record, in layer order."""
    return sorted(sens["layers"], key=lambda L: L["layer"])


def bits_per_value(layers: list[dict], widths: dict[tuple[int, str], int]) -> float:
    """Bits per cached value of the allocation {(layer, 'key'|'value'): bits} over `layers` (row bytes
    with their scale, as bytes_of / tq-ort eval count them)."""
    tq = sum(L["kv_heads"] * row_bytes(L["head_dim"], widths[(L["layer"], k)]) for L in layers for k in KINDS)
    return 8 * tq / sum(2 * L["kv_heads"] * L["head_dim"] for L in layers)


def cost_table(sens: dict, metric: str = "kl") -> dict[tuple[int, str], dict[int, float]]:
    """{(layer, kind): {bits: cost}} over the baseline, made non-increasing in the width (base width: 0)."""
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
    base = int(sens["base_bits"])
    raw: dict[tuple[int, str], dict[int, float]] = {}
    for c in sens["cells"]:
        raw.setdefault((c["layer"], c["kind"]), {})[int(c["bits"])] = float(c["cost"][metric])
    table = {}
    for g in sorted(raw):
        costs, worst = {base: 0.0}, 0.0
        for b in sorted(raw[g], reverse=True):  # widest first: a narrower width costs at least as much
            if b >= base:
                continue
            worst = max(worst, raw[g][b])
            costs[b] = worst
        table[g] = dict(sorted(costs.items()))
    return table


def solve(groups: list[tuple[int, str]], choices: dict[tuple[int, str], dict[int, tuple[int, float]]],
          capacity: int) -> tuple[dict[tuple[int, str], int], float, int]:
    """Exact multiple-choice knapsack: one width per group, summed bytes <= capacity, least summed cost.

    choices[g] = {bits: (bytes, cost)}. Returns ({group: bits}, cost, bytes). ValueError when even the
    narrowest widths exceed the capacity."""
    if not groups:
        return {}, 0.0, 0
    unit = reduce(math.gcd, (w for g in groups for w, _ in choices[g].values()))
    cap = capacity // unit
    least = sum(min(w for w, _ in choices[g].values()) for g in groups)
    if least > capacity:
        raise ValueError(f"bits budget: the narrowest widths already take {least} bytes per token; the budget "
                         f"allows {capacity}")
    inf = math.inf
    dp = np.full(cap + 1, inf)
    dp[0] = 0.0
    picks = np.zeros((len(groups), cap + 1), dtype=np.int16)  # index into the group's widths, widest first
    for gi, g in enumerate(groups):
        opts = sorted(choices[g].items(), key=lambda kv: -kv[0])  # widest first: ties keep the wider width
        best = np.full(cap + 1, inf)
        arg = np.zeros(cap + 1, dtype=np.int16)
        for j, (_, (w, c)) in enumerate(opts):
            u = w // unit
            if u > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[u:] = dp[:cap + 1 - u] + c
            better = cand < best
            best[better], arg[better] = cand[better], j
        dp, picks[gi] = best, arg
    # least cost; among equal costs the one using the most of the budget
    finite = np.isfinite(dp)
    lowest = dp[finite].min()
    c = int(np.flatnonzero(finite & (dp == lowest))[-1])
    total_units = c
    out = {}
    for gi in range(len(groups) - 1, -1, -1):
        g = groups[gi]
        opts = sorted(choices[g].items(), key=lambda kv: -kv[0])
        bits, (w, _) = opts[int(picks[gi, c])]
        out[g] = bits
        c -= w // unit
    assert c == 0
    return dict(sorted(out.items())), float(lowest), total_units * unit


def allocate(sens: dict, budget: float, *, metric: str = "kl", max_bits: int | None = None) -> dict:
    """The allocation record (FORMAT_ALLOCATION) of budget `budget` bits/value from sensitivity record `sens`."""
    if sens.get("format") != FORMAT_SENSITIVITY:
        raise ValueError(f"sensitivity file: format {sens.get('format')!r}; expected {FORMAT_SENSITIVITY!r} "
                         "(written by tq-ort calibrate)")
    if not isinstance(budget, (int, float)) or not math.isfinite(budget) or budget <= 0:
        raise ValueError(f"--bits-budget {budget!r}: expected a positive number of bits per value (e.g. 3.5)")
    layers = layer_dims(sens)
    table = cost_table(sens, metric)
    dims = {L["layer"]: L for L in layers}
    groups = [(L["layer"], k) for L in layers for k in KINDS]
    missing = [g for g in groups if g not in table]
    if missing:
        raise ValueError(f"sensitivity file: no measurement for {missing[:4]}{'...' if len(missing) > 4 else ''}: "
                         "run tq-ort calibrate over every layer, keys and values")
    choices = {g: {b: (dims[g[0]]["kv_heads"] * row_bytes(dims[g[0]]["head_dim"], b), c)
                   for b, c in table[g].items() if max_bits is None or b <= max_bits} for g in groups}
    values = sum(2 * L["kv_heads"] * L["head_dim"] for L in layers)
    capacity = int(math.floor(budget * values / 8 + 1e-9))
    lo = bits_per_value(layers, {g: min(choices[g]) for g in groups})
    if capacity < sum(min(w for w, _ in choices[g].values()) for g in groups):
        raise ValueError(f"--bits-budget {budget}: below the narrowest measured widths ({lo:.3f} bits/value with "
                         f"the row scales); expected >= {lo:.3f}")
    widths, cost, used = solve(groups, choices, capacity)
    layer_bits = [[L["layer"], widths[(L["layer"], "key")], widths[(L["layer"], "value")]] for L in layers]
    spec = ",".join(f"{L}:K{k}V{v}" for L, k, v in layer_bits)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:6]
    return {
        "format": FORMAT_ALLOCATION,
        "tag": f"alloc{budget:g}b-{digest}",
        "budget_bits": budget,
        "bits_per_value": 8 * used / values,
        "bytes_per_token": used,
        "predicted_cost": {metric: cost},
        "metric": metric,
        "layer_bits": layer_bits,
        "spec": spec,
        "widths_used": {k: dict(sorted(_count(widths[(L["layer"], k)] for L in layers).items())) for k in KINDS},
        "solver": "exact multiple-choice knapsack (dynamic programming over row bytes); costs made non-increasing "
                  "in the width; ties to the wider width",
        "sensitivity": {k: sens.get(k) for k in ("model", "texts", "settings", "widths", "base_bits", "seed",
                                                 "recent_window", "tokens_digest", "library", "date", "command")},
    }


def _count(xs) -> dict[int, int]:
    out: dict[int, int] = {}
    for x in xs:
        out[x] = out.get(x, 0) + 1
    return out


def read_json(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} {p}: no such file")
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {p}: not JSON ({e})") from None
    if not isinstance(d, dict):
        raise ValueError(f"{what} {p}: expected a JSON object, found a {type(d).__name__}")
    return d


def allocation_from_sensitivity(path: str | Path, budget: float, metric: str = "kl") -> dict:
    """allocate() over the sensitivity file at `path`; the record names the file and its sha256."""
    sens = read_json(path, "--sensitivity")
    rec = allocate(sens, budget, metric=metric)
    rec["sensitivity"]["path"] = str(path)
    rec["sensitivity"]["sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return rec


def load_allocation(path: str | Path) -> tuple[tuple[tuple[int, int, int], ...], str]:
    """(layer_bits, tag) of an allocation file (written by tq-ort calibrate --bits-budget)."""
    rec = read_json(path, "--layer-bits")
    if rec.get("format") != FORMAT_ALLOCATION or not isinstance(rec.get("layer_bits"), list):
        raise ValueError(f"--layer-bits {path}: format {rec.get('format')!r}; expected an allocation file "
                         f"({FORMAT_ALLOCATION!r}, from tq-ort calibrate --bits-budget) or an inline spec "
                         "like 0:K8V8,-1:K4V3")
    try:
        lb = tuple((int(L), int(k), int(v)) for L, k, v in rec["layer_bits"])
    except (TypeError, ValueError):
        raise ValueError(f"--layer-bits {path}: layer_bits must be [[layer, key_bits, value_bits], ...]") from None
    return lb, str(rec.get("tag", ""))
