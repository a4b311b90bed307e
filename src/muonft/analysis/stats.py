"""Pure statistics over seeds that the verdicts need beyond a t-interval: the optimum of a
metric between grid LRs with a seed-bootstrap interval, and the value of a second metric
(forgetting, drift) at a matched gain along one cell's LR frontier.

Inputs are plain sequences (one entry per LR, or per seed); nothing here reads the store.
Conventions: a learning-rate curve is *badness* (lower is better; a diverged run is ``inf``
or NaN and counts as worst), LRs are positive and are fitted in log₁₀; a frontier is the
cell's points (gain, value) in the order of increasing LR.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# Reasons an LR optimum falls back to the best grid point (LrOptimum.reason).
FEW_POINTS = "fewer than 3 points"
FLAT = "flat curve"
EDGE = "edge optimum"
DIVERGED_NEIGHBOUR = "non-finite neighbour"


@dataclass(frozen=True)
class LrOptimum:
    """The optimum of one seed's LR curve: ``log10_lr`` (NaN when no run finished),
    ``reliable`` (the quadratic fit was used) and ``reason`` (empty when reliable, else one of
    FEW_POINTS, FLAT, EDGE, DIVERGED_NEIGHBOUR)."""

    log10_lr: float
    reliable: bool
    reason: str = ""


def _as_float(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(values, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {a.shape}")
    return a


def lr_optimum(lrs: Sequence[float], badness: Sequence[float], *, flat_rtol: float = 1e-6
               ) -> LrOptimum:
    """The minimiser in log₁₀ LR of one seed's badness curve, between grid points.

    Let x = log₁₀ LR (sorted) and i the best grid point (lowest finite badness; ties → the
    smaller LR). The optimum is the vertex of the parabola through (x_{i−1}, f_{i−1}), (x_i, f_i),
    (x_{i+1}, f_{i+1}): with divided differences d₁ = (f_i − f_{i−1})/(x_i − x_{i−1}),
    d₂ = (f_{i+1} − f_i)/(x_{i+1} − x_i) and curvature c = (d₂ − d₁)/(x_{i+1} − x_{i−1}),
    x* = (x_{i−1} + x_i)/2 − d₁/(2c), clamped to [x_{i−1}, x_{i+1}] (so inside the grid). The
    fit is *unreliable* and x_i itself is returned, flagged with the reason, when: fewer than 3
    runs finished (FEW_POINTS); all finite values agree within ``flat_rtol`` of their scale
    (FLAT: the curve cannot locate an optimum); i is the first or last LR (EDGE: the optimum
    may lie outside the grid); or a neighbour diverged (DIVERGED_NEIGHBOUR). The fit is never
    non-convex: i is the *first* minimum, so f_{i−1} > f_i ≤ f_{i+1}, hence d₁ < 0 ≤ d₂ and
    c > 0 (a flat stretch to the right of the best moves the vertex right, toward it).
    """
    x, f = _as_float(lrs, "lrs"), _as_float(badness, "badness")
    if len(x) != len(f):
        raise ValueError(f"lrs and badness differ in length: {len(x)} vs {len(f)}")
    if len(x) and not (np.isfinite(x) & (x > 0)).all():
        raise ValueError(f"learning rates must be finite and > 0, got {x.tolist()}")
    order = np.argsort(x, kind="stable")
    x, f = np.log10(x[order]), np.where(np.isfinite(f[order]), f[order], np.inf)
    finite = np.isfinite(f)
    if not finite.any():
        return LrOptimum(math.nan, False, FEW_POINTS)
    i = int(np.argmin(f))
    best = float(x[i])
    if finite.sum() < 3:
        return LrOptimum(best, False, FEW_POINTS)
    ff = f[finite]
    if ff.max() - ff.min() <= flat_rtol * max(float(np.abs(ff).max()), 1e-300):
        return LrOptimum(best, False, FLAT)
    if i == 0 or i == len(x) - 1:
        return LrOptimum(best, False, EDGE)
    if not (finite[i - 1] and finite[i + 1]):
        return LrOptimum(best, False, DIVERGED_NEIGHBOUR)
    (x0, x1, x2), (f0, f1, f2) = x[i - 1:i + 2], f[i - 1:i + 2]
    d1, d2 = (f1 - f0) / (x1 - x0), (f2 - f1) / (x2 - x1)
    curvature = (d2 - d1) / (x2 - x0)  # > 0, see the docstring
    vertex = 0.5 * (x0 + x1) - d1 / (2 * curvature)
    return LrOptimum(float(min(max(vertex, x0), x2)), True)


def bootstrap_mean_ci(values: Sequence[float], *, level: float = 0.95, n_boot: int = 10_000,
                      seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` (NaNs dropped) and its percentile bootstrap
    interval — resample the values with replacement ``n_boot`` times (``numpy`` generator
    seeded with ``seed``, so the interval is reproducible) and take the (1 ∓ level)/2 quantiles
    of the resampled means. Fewer than 2 values: (mean, NaN, NaN) — one seed says nothing
    about the spread. Identical values give a zero-width interval (a bootstrap cannot widen a
    sample without spread; with quantised inputs that is a resolution limit, not certainty)."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    v = _as_float(values, "values")
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    if len(v) == 1:
        return float(v[0]), math.nan, math.nan
    if v.min() == v.max():
        return float(v[0]), float(v[0]), float(v[0])  # exactly, not a float-rounded neighbour
    mean = float(v.mean())
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return mean, float(lo), float(hi)


@dataclass
class SeedOptima:
    """Per-seed LR optima of one cell and the bootstrap interval of their mean (log₁₀ LR)."""

    per_seed: dict[Hashable, LrOptimum]
    mean: float
    ci_low: float
    ci_high: float
    unreliable: dict[Hashable, str] = field(default_factory=dict)  # seed → reason


def seed_optima(curves: Mapping[Hashable, tuple[Sequence[float], Sequence[float]]], *,
                level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> SeedOptima:
    """:func:`lr_optimum` of every seed's curve ``{seed: (lrs, badness)}`` and the
    :func:`bootstrap_mean_ci` of the optima over seeds (seeds resampled; seeds with no finished
    run are left out). Unreliable fits still contribute their best grid point and are listed
    in ``unreliable`` with their reason, so a report can say which seeds were quantised."""
    per_seed = {s: lr_optimum(lrs, bad) for s, (lrs, bad) in curves.items()}
    mean, lo, hi = bootstrap_mean_ci([o.log10_lr for o in per_seed.values()], level=level,
                                     n_boot=n_boot, seed=seed)
    return SeedOptima(per_seed, mean, lo, hi,
                      {s: o.reason for s, o in per_seed.items() if not o.reliable})


# --------------------------------------------------------------------------- frontiers
Frontier = tuple[Sequence[float], Sequence[float], Sequence[float]]  # (lrs, gains, values)


def _frontier_points(frontier: Frontier) -> tuple[np.ndarray, np.ndarray]:
    lrs, gains, vals = (_as_float(a, name) for a, name in
                        zip(frontier, ("lrs", "gains", "values")))
    if not len(lrs) == len(gains) == len(vals):
        raise ValueError(f"a frontier needs one gain and one value per LR, got "
                         f"{len(lrs)} LRs, {len(gains)} gains, {len(vals)} values")
    order = np.argsort(lrs, kind="stable")
    return gains[order], vals[order]


def frontier_at_gain(frontier: Frontier, target: float) -> float | None:
    """The value (forgetting, drift) of one cell at gain = ``target``, read off its frontier.

    ``frontier`` = (lrs, gains, values), one point per LR. Adjacent LRs (sorted) are joined by
    straight segments in the (gain, value) plane; on the first segment, from the smallest LR,
    whose gains bracket the target (g_i ≤ target ≤ g_{i+1} or the reverse), the value is
    v_i + (target − g_i)/(g_{i+1} − g_i)·(v_{i+1} − v_i) (v_i when g_i = g_{i+1}). The first
    crossing is the one the cell reaches on its way up in LR — past its best LR the gain falls
    again while the disruption keeps growing. A lone LR whose gain equals the target gives its
    value. A segment with a non-finite end (a diverged run) is skipped. None when no segment
    reaches the target (outside the gains the cell reached; never extrapolated).
    """
    if not math.isfinite(target):
        raise ValueError(f"target gain must be finite, got {target}")
    g, v = _frontier_points(frontier)
    ok = np.isfinite(g) & np.isfinite(v)
    for i in range(len(g)):
        if ok[i] and g[i] == target:
            return float(v[i])
        if i + 1 < len(g) and ok[i] and ok[i + 1] and \
                min(g[i], g[i + 1]) <= target <= max(g[i], g[i + 1]):
            return float(v[i] + (target - g[i]) / (g[i + 1] - g[i]) * (v[i + 1] - v[i]))
    return None


def common_gain_range(frontiers: Sequence[Frontier]) -> tuple[float, float] | None:
    """The gains every frontier reaches, [max of their smallest finite gains, min of their
    largest]; None when that range is empty (or a frontier has no finite point). A matched
    target inside it can be read off every frontier (if a frontier's gains are not contiguous
    along LR, :func:`frontier_at_gain` may still return None)."""
    lows, highs = [], []
    for fr in frontiers:
        g, v = _frontier_points(fr)
        g = g[np.isfinite(g) & np.isfinite(v)]
        if not len(g):
            return None
        lows.append(float(g.min()))
        highs.append(float(g.max()))
    if not lows or max(lows) > min(highs):
        return None
    return max(lows), min(highs)


def matched_gain_differences(a: Mapping[Hashable, Frontier], b: Mapping[Hashable, Frontier],
                             target: float) -> dict[Hashable, float]:
    """Per seed s present in both: value_a(target) − value_b(target), each read off that seed's
    frontier by :func:`frontier_at_gain` — a paired difference at matched gain (e.g. mismatched
    − matched forgetting, or LoRA − full). Seeds where either cell does not reach the target
    are left out (the caller reports how many remain)."""
    out: dict[Hashable, float] = {}
    for s in a.keys() & b.keys():
        va, vb = frontier_at_gain(a[s], target), frontier_at_gain(b[s], target)
        if va is not None and vb is not None:
            out[s] = va - vb
    return dict(sorted(out.items(), key=lambda kv: str(kv[0])))
