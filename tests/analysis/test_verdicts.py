"""Best-LR aggregation and claim verdicts on synthetic stored results whose truth is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from muonft.analysis.aggregate import best_lr_table, runs_frame, t_ci_halfwidth
from muonft.analysis.verdicts import (
    INCONCLUSIVE,
    NO_DATA,
    NOT_REPRODUCED,
    REPRODUCED,
    claims_table,
    contrast_ci,
    verdict_of,
)
from muonft.experiments.sweep import run_sweep
from muonft.experiments.sweep_spec import parse_sweep_spec
from muonft.store import Store


def _study(tmp_path, task, ranks=(8,), variants=("lora",), seeds=(0, 1, 2)):
    s = parse_sweep_spec({
        "name": "study", "base": {"kind": "synthetic", "task": task},
        "grid": {"init": ["gpt-tiny-adamw", "gpt-tiny-muon"], "optimizer": ["adamw", "muon"],
                 "method": ["full", "lora"], "lora.rank": list(ranks),
                 "lora.variant": list(variants),
                 "lr": {"adamw/full": [1e-3, 3.16e-3, 1e-2], "muon/full": [3.16e-3, 1e-2, 3.16e-2],
                        "adamw/lora": [3.16e-3, 1e-2, 3.16e-2],
                        "muon/lora": [1e-2, 3.16e-2, 1e-1]}},
        "seeds": list(seeds), "adaptive": {"enabled": False}})
    run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)
    st = Store(tmp_path)
    return runs_frame(st), st.diagnostics()


def _verdicts(frame, diag):
    t = claims_table(frame, diag)
    return dict(zip(t.claim, t.verdict)), t


def test_contrast_ci_equals_welch_for_two_groups():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.3, 5), rng.normal(0.6, 0.1, 4)
    est, half, _ = contrast_ci([(a, 1.0), (b, -1.0)])
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert est - half == pytest.approx(ci.low) and est + half == pytest.approx(ci.high)
    assert t_ci_halfwidth(a) == pytest.approx(
        stats.t.ppf(0.975, 4) * a.std(ddof=1) / math.sqrt(5))
    assert math.isnan(contrast_ci([(a, 1.0), ([1.0], -1.0)])[1])


def test_contrast_ci_pairs_groups_that_share_their_seeds():
    import pandas as pd

    from muonft.analysis.verdicts import contrast_how

    rng = np.random.default_rng(1)
    luck = rng.normal(0, 1.0, 5)  # a seed effect both runs of a seed share
    a = pd.Series(0.5 + luck + rng.normal(0, 0.05, 5), index=[4, 3, 2, 1, 0])
    b = pd.Series(luck + rng.normal(0, 0.05, 5), index=[4, 3, 2, 1, 0])
    est, half, df = contrast_ci([(a, 1.0), (b.sort_index(), -1.0)])  # order does not matter
    ci = stats.ttest_rel(a.sort_index(), b.sort_index()).confidence_interval(0.95)
    assert est - half == pytest.approx(ci.low) and est + half == pytest.approx(ci.high)
    assert df == 4 and contrast_how([(a, 1.0), (b, -1.0)]).startswith("paired")
    welch = contrast_ci([(a.to_numpy(), 1.0), (b.to_numpy(), -1.0)])
    assert welch[0] == pytest.approx(est) and welch[1] > 5 * half  # pairing removed the luck
    other = pd.Series(b.to_numpy(), index=[5, 6, 7, 8, 9])  # different seeds: not paired
    assert contrast_ci([(a, 1.0), (other, -1.0)])[1] == pytest.approx(welch[1])
    assert contrast_how([(a, 1.0), (other, -1.0)]).startswith("Welch")


def test_a_zero_effect_with_zero_spread_is_inconclusive():
    import pandas as pd

    from muonft.analysis.verdicts import _result

    # per-seed window widths on a discrete LR grid can be identical across seeds; their
    # contrast is then 0 up to rounding with a zero-width CI
    a = pd.Series([1.05, 1.05, 1.05], index=[0, 1, 2])
    b = pd.Series([0.52, 0.52, 0.52], index=[0, 1, 2])
    c = pd.Series([0.48, 0.48, 0.48], index=[0, 1, 2])
    d = pd.Series([1.01, 1.01, 1.01], index=[0, 1, 2])
    est, half, _ = contrast_ci([(a, 0.5), (b, -0.5), (c, 0.5), (d, -0.5)])
    assert half == 0 and abs(est) < 1e-12
    assert _result("x", "", "", est, half, "").verdict == INCONCLUSIVE


def test_verdict_rule():
    assert verdict_of(0.5, 0.1) == REPRODUCED
    assert verdict_of(-0.5, 0.1) == NOT_REPRODUCED
    assert verdict_of(0.05, 0.1) == INCONCLUSIVE
    assert verdict_of(-0.5, 0.1, expected_sign=-1) == REPRODUCED
    assert verdict_of(float("nan"), 0.1) == NO_DATA
    assert verdict_of(0.5, float("nan")) == INCONCLUSIVE


def test_true_mismatch_is_reproduced(tmp_path):
    frame, diag = _study(tmp_path, "synthetic:gap=0.3,noise=0.01", ranks=(2, 64, 512),
                         variants=("lora", "rslora"))
    v, t = _verdicts(frame, diag)
    assert v["2"] == REPRODUCED
    assert t.set_index("claim").loc["2", "estimate"] == pytest.approx(0.3, abs=0.05)
    assert v["3a"] == REPRODUCED and v["3b"] == REPRODUCED
    assert v["4a"] == REPRODUCED  # rank 8 absent: the smallest rank (2) is used
    assert v["4b"] == REPRODUCED
    assert v["5 (rslora)"] == REPRODUCED  # the synthetic variant is slightly worse
    assert v["6a"] == REPRODUCED and v["6b"] == REPRODUCED
    # best LRs recovered: AdamW full optimum 10^-2.5, Muon full 10^-2
    best = best_lr_table(frame)
    full = best[(best.method == "full") & (best.pretrained == "adamw")].set_index("optimizer")
    assert full.loc["adamw", "best_lr"] == pytest.approx(3.16e-3)
    assert full.loc["muon", "best_lr"] == pytest.approx(1e-2)
    assert set(full.edge) == {""}


def test_each_mismatch_direction_has_its_own_rows(tmp_path):
    """A one-way mismatch (AdamW-pretrained → Muon hurts, the other way helps as much) cancels
    in the pooled row; the per-direction rows show both."""
    frame, diag = _study(tmp_path, "synthetic:gap=0.3,gap_muon_pretrained=-0.3,noise=0.01")
    v, t = _verdicts(frame, diag)
    est = t.set_index("claim")["estimate"]
    assert v["2.adamw"] == REPRODUCED and est["2.adamw"] == pytest.approx(0.3, abs=0.05)
    assert v["2.muon"] == NOT_REPRODUCED and est["2.muon"] == pytest.approx(-0.3, abs=0.05)
    assert abs(est["2"]) < 0.05  # pooled: the two directions cancel
    assert "[pooled over both mismatch directions]" in t.set_index("claim").loc["2", "statement"]
    assert {"2b.adamw", "2b.muon", "2c.adamw", "2c.muon", "4a.adamw", "4a.muon"} <= set(v)
    assert v["4a.adamw"] == REPRODUCED
    # with one pretrained model only, no direction rows: the pooled row is that direction
    one = claims_table(frame[frame.pretrained == "adamw"], diag)
    assert not any("." in c for c in one.claim)


def test_reversed_mismatch_is_not_reproduced(tmp_path):
    frame, diag = _study(tmp_path, "synthetic:gap=-0.3,noise=0.01,spectral_gap=-2")
    v, _ = _verdicts(frame, diag)
    assert v["2"] == NOT_REPRODUCED
    assert v["6a"] == NOT_REPRODUCED
    assert v["4b"] == NO_DATA and v["5"] == NO_DATA  # one rank, no variants


def test_no_gap_within_noise_is_inconclusive(tmp_path):
    frame, diag = _study(tmp_path, "synthetic:gap=0,noise=0.05,spectral_gap=0")
    v, t = _verdicts(frame, diag)
    assert v["2"] == INCONCLUSIVE
    row = t.set_index("claim").loc["2"]
    assert abs(row.estimate) < row.resolvable  # the gap is inside the resolvable band
    assert v["6a"] == INCONCLUSIVE


def test_diverged_counts_as_worst_and_failed_is_left_out(tmp_path):
    # diverge at lr >= 0.01 and crash at 3.16e-3: AdamW's true optimum (3.16e-3) fails, so
    # its best must be 1e-3; every Muon LR fails or diverges: flagged, smallest diverged LR.
    frame, _ = _study(tmp_path, "synthetic:diverge_lr=0.01,crash_lr=0.00316")
    best = best_lr_table(frame)
    full = best[(best.method == "full") & (best.pretrained == "adamw")].set_index("optimizer")
    assert full.loc["adamw", "best_lr"] == pytest.approx(1e-3)
    assert full.loc["adamw", "edge"] == "low"
    assert full.loc["adamw", "n_failed"] == 3 and full.loc["adamw", "n_diverged"] == 3
    assert full.loc["muon", "all_diverged"] and full.loc["muon", "n"] == 0
    assert full.loc["muon", "best_lr"] == pytest.approx(1e-2)


def _window_frame(mis_curve, mat_curve, seeds=(0, 1, 2)):
    """Full-FT runs of the AdamW optimizer on a Muon- (mismatched) and an AdamW-pretrained
    (matched) model; curves give the target per LR (zero-shot 10), plus seed noise."""
    import pandas as pd

    lrs = [1e-3, 3.16e-3, 1e-2, 3.16e-2, 1e-1]
    rows, rng = [], np.random.default_rng(0)
    for pre, curve in (("muon", mis_curve), ("adamw", mat_curve)):
        for seed in seeds:
            for lr, t in zip(lrs, curve):
                rows.append({"method": "full", "optimizer": "adamw", "pretrained": pre,
                             "seed": seed, "lr": lr, "status": "done", "higher_is_better": False,
                             "target": t + rng.normal(0, 0.01), "zero_shot": 10.0})
    return pd.DataFrame(rows)


def test_lr_window_narrows_and_moves_left():
    from muonft.analysis.verdicts import claim_lr_window

    # mismatched: one good LR at 3.16e-3; matched: good from 1e-2 to 1e-1
    w, c = claim_lr_window(_window_frame([8, 5, 8, 9, 9.5], [9, 8, 5, 5.1, 5.2]))
    assert w.claim == "2b" and w.verdict == REPRODUCED
    assert w.estimate == pytest.approx(-1, abs=0.01)
    assert c.claim == "2c" and c.verdict == REPRODUCED
    # optima between grid points (parabola in log10 lr): mismatched 8, 5, 8 → −2.5;
    # matched 8, 5, 5.1 at −2.5, −2, −1.5 → −2.25 + 6/12.4 = −1.766 (grid picks: −0.5)
    assert c.estimate == pytest.approx(-2.5003 + 1.7661, abs=0.02)
    # the same curve on both models: no change (zero variance → CI of width 0 → inconclusive)
    w, c = claim_lr_window(_window_frame([9, 8, 5, 5.1, 5.2], [9, 8, 5, 5.1, 5.2]))
    assert w.estimate == 0 and w.verdict == INCONCLUSIVE and c.verdict == INCONCLUSIVE
    # only one pretrained model: no data
    f = _window_frame([8, 5, 8, 9, 9.5], [9, 8, 5, 5.1, 5.2])
    assert claim_lr_window(f[f.pretrained == "adamw"])[0].verdict == NO_DATA


def _constrained_frame():
    """Hand-made runs (accuracy, higher is better) whose comparison is known: AdamW full 0.81,
    plain Muon full 0.71 (worse), low-rank Muon 0.812 with less forgetting, drift-budget Muon
    0.80 but forgetting more; the best LR of each cell is 1e-3 (2e-3 is worse everywhere)."""
    import json

    import pandas as pd

    schemes = {  # (optimizer, method, update_rank, max_drift, lora_muon): targets, forgetting
        ("adamw", "full", None, None, None): ([0.80, 0.81, 0.82], [0.30, 0.31, 0.32]),
        ("muon", "full", None, None, None): ([0.70, 0.71, 0.72], [0.50, 0.50, 0.50]),
        ("muon", "full", 4, None, None): ([0.811, 0.812, 0.813], [0.20, 0.21, 0.22]),
        ("muon", "full", None, 0.05, None): ([0.80, 0.80, 0.80], [0.60, 0.61, 0.62]),
        ("muon", "lora", None, None, "joint"): ([0.75, 0.76, 0.77], [0.1, 0.1, 0.1]),
    }
    rows = []
    for (opt, method, r, rho, mode), (targets, forgets) in schemes.items():
        cell = json.dumps([opt, method, r, rho, mode])
        for lr, shift in ((1e-3, 0.0), (2e-3, -0.1)):
            for seed, (t, f) in enumerate(zip(targets, forgets)):
                rows.append({"run_id": f"{cell}{lr}{seed}", "status": "done", "cell": cell,
                             "lr": lr, "seed": seed, "init": "minilm", "task": "rt-sentiment",
                             "steps": 60, "optimizer": opt, "method": method,
                             "lora.rank": 8.0 if method == "lora" else math.nan,
                             "lora.variant": "lora" if method == "lora" else None,
                             "update_rank": r, "max_drift": rho, "lora_muon": mode,
                             "pretrained": "adamw", "higher_is_better": True,
                             "target": t + shift, "test": t + shift, "forgetting": f})
    return pd.DataFrame(rows)


def test_constrained_table_compares_each_scheme_with_adamw_full():
    from muonft.analysis.aggregate import without_constrained
    from muonft.analysis.verdicts import constrained_table, scheme_of

    frame = _constrained_frame()
    t = constrained_table(frame).set_index("scheme")
    assert list(t.index) == ["Muon full", "Muon LoRA joint r8", "Muon max_drift=0.05",
                             "Muon update_rank=4"]
    assert (t.best_lr == 1e-3).all()
    # gaps are oriented as badness: the worse accuracy of plain Muon is a positive gap
    assert t.loc["Muon full", "gap"] == pytest.approx(0.10)
    assert t.loc["Muon update_rank=4", "gap"] == pytest.approx(-0.002)
    assert t.loc["Muon update_rank=4", "forgetting_gap"] == pytest.approx(-0.10)
    assert not t.loc["Muon full", "meets_target"]
    assert t.loc["Muon update_rank=4", "meets_target"]
    # within AdamW's seed CI (half-width 0.0248) but forgetting more than AdamW → misses
    assert t.loc["Muon max_drift=0.05", "within_adamw_ci"]
    assert not t.loc["Muon max_drift=0.05", "forgets_no_more"]
    assert not t.loc["Muon LoRA joint r8", "within_adamw_ci"]
    # the study's claims never see the constrained cells
    plain = without_constrained(frame)
    assert {scheme_of(r) for _, r in plain.iterrows()} == {"AdamW full", "Muon full"}
    assert constrained_table(plain).empty


def test_holm_adjustment_against_a_hand_computed_example():
    from muonft.analysis.verdicts import holm_adjust

    # sorted p: 0.01, 0.02, 0.04 (m = 3) → 0.03, max(0.03, 0.04) = 0.04, max(0.04, 0.04) = 0.04
    assert holm_adjust([0.04, 0.01, math.nan, 0.02]) == pytest.approx(
        [0.04, 0.03, math.nan, 0.04], nan_ok=True)
    assert holm_adjust([0.5]) == [0.5] and holm_adjust([]) == []
    assert holm_adjust([0.6, 0.7]) == [1.0, 1.0]  # capped at 1, monotone


def test_p_value_matches_the_interval_it_came_from():
    from muonft.analysis.verdicts import p_value_of

    half = float(stats.t.ppf(0.975, 4))  # estimate 1 with se 1, df 4
    assert p_value_of(1.0, half, 4.0) == pytest.approx(2 * stats.t.sf(1.0, 4))
    assert p_value_of(half, half, 4.0) == pytest.approx(0.05)  # CI touching 0 ⇔ p = 0.05
    assert p_value_of(0.3, 0.0, math.inf) == 0.0 and p_value_of(0.0, 0.0, math.inf) == 1.0
    assert math.isnan(p_value_of(1.0, math.nan, 4.0))


@pytest.mark.parametrize(("est", "half", "verdict"), [
    (0.001, 0.001, "equivalent"), (0.0, 0.02, "inconclusive"), (0.05, 0.01, "not equivalent"),
    (-0.05, 0.01, "not equivalent"), (0.009, 0.002, "inconclusive"), (math.nan, 0.1, "no data"),
    (0.0, 0.0, "equivalent"),
])
def test_tost_decisions(est, half, verdict):
    from muonft.analysis.verdicts import tost

    assert tost(est, half, margin=0.01) == verdict


def test_holm_and_equivalence_columns_of_the_claims_table(tmp_path):
    """Claim 5 with variants that change nothing measurable: equivalent within the margin;
    the sanity rows stay outside the Holm family."""
    frame, diag = _study(tmp_path, "synthetic:gap=0.3,noise=0.0005", variants=("lora", "rslora"))
    _, t = _verdicts(frame, diag)
    t = t.set_index("claim")
    assert t.loc["2", "holm"] == REPRODUCED and t.loc["2", "p_value"] < 0.05
    assert t.loc["3a", "holm"] == ""  # sanity row: not in the family
    assert t.loc["5 (rslora)", "equivalence"] in ("equivalent", "not equivalent",
                                                 "inconclusive")
    # the synthetic rslora is worse by exactly 0.01 nats: at the margin, never "equivalent"
    assert t.loc["5 (rslora)", "equivalence"] != "equivalent"
    assert "LoRA gap" in t.loc["4a", "equivalence"]


def test_parabola_vertex_against_hand_computed_optima():
    from muonft.analysis.verdicts import parabola_vertex

    x = np.array([0.0, 1.0, 2.0])
    # f = 1.5x² − 3.5x + 2 through (0, 2), (1, 0), (2, 1): vertex 3.5/3
    assert parabola_vertex(x, np.array([2.0, 0.0, 1.0]), 1) == (pytest.approx(7 / 6), True)
    assert parabola_vertex(x, np.array([1.0, 0.0, 1.0]), 1) == (pytest.approx(1.0), True)
    # uneven spacing: f = (x − 1.2)² through x = 0, 1, 3
    xs = np.array([0.0, 1.0, 3.0])
    assert parabola_vertex(xs, (xs - 1.2) ** 2, 1)[0] == pytest.approx(1.2)
    assert parabola_vertex(x, np.array([0.0, 1.0, 2.0]), 0) == (0.0, False)  # edge
    assert parabola_vertex(x, np.array([1.0, 1.0, 1.0]), 1) == (1.0, False)  # flat
    assert parabola_vertex(x, np.array([0.0, 0.0, np.inf]), 1) == (1.0, False)  # diverged
