"""analysis.stats against hand-computed examples, including the degenerate cases (one seed, a
flat curve, all picks equal, zero variance, unreached gains)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from muonft.analysis.stats import (
    DIVERGED_NEIGHBOUR,
    EDGE,
    FEW_POINTS,
    FLAT,
    bootstrap_mean_ci,
    common_gain_range,
    frontier_at_gain,
    lr_optimum,
    matched_gain_differences,
    seed_optima,
)

LRS = [1e-3, 1e-2, 1e-1]  # log10: −3, −2, −1


# --------------------------------------------------------------------------- lr_optimum
def test_lr_optimum_is_the_vertex_of_the_parabola_through_the_best_three_points():
    # f = 1.5u² − 0.5u with u = x + 2 passes through (−3, 2), (−2, 0), (−1, 1): vertex u = 1/6
    opt = lr_optimum(LRS, [2.0, 0.0, 1.0])
    assert opt.reliable and opt.reason == ""
    assert opt.log10_lr == pytest.approx(-2 + 1 / 6)
    assert lr_optimum(LRS, [1.0, 0.0, 1.0]).log10_lr == pytest.approx(-2.0)
    # a true parabola on an uneven grid (and given unsorted) is recovered exactly
    lrs = [1e-1, 1e-4, 1e-2, 1.0]
    f = [(math.log10(lr) + 1.8) ** 2 for lr in lrs]
    assert lr_optimum(lrs, f).log10_lr == pytest.approx(-1.8)


def test_lr_optimum_moves_with_the_curve_between_grid_points():
    """Both seeds pick the same grid LR; the fitted optima differ (no quantisation)."""
    a, b = lr_optimum(LRS, [2.0, 0.0, 1.0]), lr_optimum(LRS, [1.0, 0.0, 2.0])
    assert a.log10_lr == pytest.approx(-2 + 1 / 6) and b.log10_lr == pytest.approx(-2 - 1 / 6)


@pytest.mark.parametrize(("bad", "best", "reason"), [
    ([1.0, 1.0, 1.0], -3.0, FLAT),  # ties go to the smaller LR
    ([0.5, 0.5 * (1 + 1e-9), 0.5], -3.0, FLAT),  # flat up to rounding
    ([0.0, 1.0, 2.0], -3.0, EDGE),
    ([2.0, 1.0, 0.0], -1.0, EDGE),
    ([2.0, 0.0, math.inf], -2.0, FEW_POINTS),  # a diverged run leaves 2 finished
    ([2.0, math.nan, 1.0], -1.0, FEW_POINTS),
    ([math.nan, math.nan, math.nan], math.nan, FEW_POINTS),
])
def test_lr_optimum_flags_unreliable_fits_and_returns_the_best_grid_point(bad, best, reason):
    opt = lr_optimum(LRS, bad)
    assert not opt.reliable and opt.reason == reason
    assert opt.log10_lr == pytest.approx(best, nan_ok=True)


def test_lr_optimum_with_few_points_or_a_diverged_neighbour():
    one = lr_optimum([1e-2], [0.3])
    assert (one.log10_lr, one.reason) == (pytest.approx(-2.0), FEW_POINTS)
    two = lr_optimum([1e-3, 1e-2], [0.5, 0.3])
    assert (two.log10_lr, two.reason) == (pytest.approx(-2.0), FEW_POINTS)
    four = lr_optimum([1e-3, 1e-2, 1e-1, 1.0], [3.0, 1.0, 0.0, math.inf])
    assert (four.log10_lr, four.reason) == (pytest.approx(-1.0), DIVERGED_NEIGHBOUR)


def test_lr_optimum_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        lr_optimum(LRS, [1.0, 2.0])
    with pytest.raises(ValueError, match="must be finite and > 0"):
        lr_optimum([0.0, 1e-2, 1e-1], [1.0, 0.0, 1.0])


# --------------------------------------------------------------------------- bootstrap
def test_bootstrap_of_two_values_spans_them():
    """Resampled means of {1, 3} are 1, 2, 3 with probabilities ¼, ½, ¼: the 95% interval is
    [1, 3]."""
    assert bootstrap_mean_ci([1.0, 3.0]) == (2.0, 1.0, 3.0)


def test_bootstrap_quantiles_against_the_exact_resampling_distribution():
    """Means of resamples of {0, 0, 3} = number of 3s drawn, Binomial(3, ⅓): P = 8/27, 12/27,
    6/27, 1/27 for 0..3, cumulative 0.296, 0.741, 0.963, 1 — so the 50% interval is [0, 2] and
    the 95% one [0, 3]."""
    assert bootstrap_mean_ci([0.0, 0.0, 3.0], level=0.5) == (1.0, 0.0, 2.0)
    assert bootstrap_mean_ci([0.0, 0.0, 3.0], level=0.95) == (1.0, 0.0, 3.0)


def test_bootstrap_degenerate_cases_and_reproducibility():
    m, lo, hi = bootstrap_mean_ci([0.7])  # one seed: no spread to resample
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)
    assert bootstrap_mean_ci([0.1, 0.1, 0.1]) == (0.1, 0.1, 0.1)  # zero variance
    assert all(math.isnan(v) for v in bootstrap_mean_ci([]))
    assert bootstrap_mean_ci([1.0, math.nan, 3.0]) == (2.0, 1.0, 3.0)  # NaN dropped
    v = np.random.default_rng(5).normal(size=7)
    assert bootstrap_mean_ci(v, seed=3) == bootstrap_mean_ci(v, seed=3)
    assert bootstrap_mean_ci(v, seed=3) != bootstrap_mean_ci(v, seed=4)
    _, lo50, hi50 = bootstrap_mean_ci(v, level=0.5)
    _, lo95, hi95 = bootstrap_mean_ci(v, level=0.95)
    assert lo95 < lo50 < v.mean() < hi50 < hi95
    with pytest.raises(ValueError, match="level must be in"):
        bootstrap_mean_ci(v, level=1.0)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_mean_ci(v, n_boot=0)


# --------------------------------------------------------------------------- seed_optima
def test_seed_optima_all_picks_equal_give_a_zero_width_interval_at_the_vertex():
    res = seed_optima({s: (LRS, [2.0, 0.0, 1.0]) for s in range(3)})
    assert res.mean == pytest.approx(-2 + 1 / 6)
    assert res.ci_low == res.ci_high == res.mean and res.unreliable == {}


def test_seed_optima_same_grid_pick_different_optima_give_a_real_interval():
    res = seed_optima({0: (LRS, [2.0, 0.0, 1.0]), 1: (LRS, [1.0, 0.0, 2.0])})
    assert res.mean == pytest.approx(-2.0)
    assert (res.ci_low, res.ci_high) == (pytest.approx(-2 - 1 / 6), pytest.approx(-2 + 1 / 6))


def test_seed_optima_one_seed_and_unreliable_seeds():
    one = seed_optima({7: (LRS, [2.0, 0.0, 1.0])})
    assert one.mean == pytest.approx(-2 + 1 / 6) and math.isnan(one.ci_low)
    res = seed_optima({0: (LRS, [1.0, 0.0, 1.0]), 1: (LRS, [1.0, 1.0, 1.0]),
                       2: (LRS, [0.0, 1.0, 2.0])})
    assert res.unreliable == {1: FLAT, 2: EDGE}
    assert res.mean == pytest.approx(-8 / 3)  # (−2 − 3 − 3)/3: unreliable seeds at their grid pick


# --------------------------------------------------------------------------- frontiers
# LRs 1e-3..1: the gain rises to 0.9 at 1e-1 and falls back, forgetting keeps growing
FRONT = ([1e-3, 1e-2, 1e-1, 1.0], [0.1, 0.5, 0.9, 0.4], [0.0, 0.2, 0.6, 1.0])


@pytest.mark.parametrize(("target", "value"), [
    (0.7, 0.4),  # between 1e-2 (0.5, 0.2) and 1e-1 (0.9, 0.6): halfway
    (0.45, 0.175),  # first crossing (1e-3 → 1e-2), not the one past the best LR (0.96)
    (0.5, 0.2),  # exactly a grid point
    (0.1, 0.0),
    (0.9, 0.6),
    (0.95, None),  # beyond the gains reached: never extrapolated
    (0.05, None),
])
def test_frontier_at_gain_interpolates_between_adjacent_lrs(target, value):
    got = frontier_at_gain(FRONT, target)
    assert got == (pytest.approx(value) if value is not None else None)
    shuffled = tuple([a[i] for i in (2, 0, 3, 1)] for a in FRONT)
    assert frontier_at_gain(shuffled, target) == got  # LR order, not input order


def test_frontier_degenerate_cases():
    assert frontier_at_gain(([1e-2], [0.3], [0.8]), 0.3) == 0.8  # one LR, matching gain
    assert frontier_at_gain(([1e-2], [0.3], [0.8]), 0.4) is None
    # equal gains at two LRs: the smaller LR's value
    assert frontier_at_gain(([1e-3, 1e-2], [0.5, 0.5], [0.1, 0.3]), 0.5) == 0.1
    # a diverged LR in between: no interpolation across it
    diverged = ([1e-3, 1e-2, 1e-1], [0.1, math.nan, 0.9], [0.0, math.nan, 0.6])
    assert frontier_at_gain(diverged, 0.5) is None
    assert frontier_at_gain(diverged, 0.9) == 0.6
    with pytest.raises(ValueError, match="one gain and one value per LR"):
        frontier_at_gain(([1e-3, 1e-2], [0.1], [0.0, 0.1]), 0.1)
    with pytest.raises(ValueError, match="target gain must be finite"):
        frontier_at_gain(FRONT, math.nan)


def test_common_gain_range():
    other = ([1e-3, 1e-2], [0.2, 0.6], [0.0, 0.1])
    assert common_gain_range([FRONT, other]) == (0.2, 0.6)
    assert common_gain_range([FRONT, ([1e-3], [0.95], [0.1])]) is None  # disjoint
    assert common_gain_range([FRONT, ([1e-3], [math.nan], [0.1])]) is None


def test_matched_gain_differences_are_paired_by_seed():
    mismatched = {0: FRONT, 1: ([1e-3, 1e-2], [0.2, 0.8], [0.1, 0.7]),
                  2: ([1e-3, 1e-2], [0.0, 0.3], [0.0, 0.1])}  # seed 2 never reaches 0.7
    matched = {0: ([1e-3, 1e-2], [0.3, 0.9], [0.0, 0.3]),
               1: ([1e-3, 1e-2], [0.6, 0.8], [0.2, 0.4]), 2: FRONT, 3: FRONT}
    diffs = matched_gain_differences(mismatched, matched, 0.7)
    # seed 0: 0.4 − 0.2; seed 1: (0.1 + 5/6·0.6 = 0.6) − (0.2 + ½·0.2 = 0.3)
    assert diffs == {0: pytest.approx(0.2), 1: pytest.approx(0.3)}
    assert matched_gain_differences(mismatched, matched, 2.0) == {}
