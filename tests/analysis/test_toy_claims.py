"""Claim 1 rows from hand-made toy.json documents: 1a is "not discriminating" when GD ends at
Muon's point, 1d (the LoRA rank-1 statement) has its own verdict and equivalence test."""

from __future__ import annotations

import math

import pytest

from muonft.analysis.verdicts import (
    INCONCLUSIVE,
    NO_DATA,
    NOT_DISCRIMINATING,
    NOT_REPRODUCED,
    REPRODUCED,
    toy_claims,
)


def _seed(gd_dist: float, r1: float, full: float, spectral_gap_muon: float = 0.0) -> dict:
    opt = {name: {"spectral_gap": 0.1, "maxnorm_gap": 0.1, "stable_rank": 3.0,
                  "dist_to_frobenius": 0.4} for name in ("signgd", "adam")}
    opt["muon"] = {"spectral_gap": spectral_gap_muon, "maxnorm_gap": 0.7, "stable_rank": 2.9,
                   "dist_to_frobenius": 2e-6}
    opt["gd"] = {"spectral_gap": 0.0, "maxnorm_gap": 0.7, "stable_rank": 2.9,
                 "dist_to_frobenius": gd_dist}
    return {"optimizers": opt, "lora": {"ranks": [1, 2], "by_rank": {
        "1": {"adam_vs_muon_dist": r1}, "2": {"adam_vs_muon_dist": 0.5}},
        "full": {"adam_vs_muon_dist": full}}}


def _doc(seeds: list[dict]) -> dict:
    return {**seeds[0], "seeds": seeds}


def _rows(doc: dict) -> dict:
    return toy_claims(doc).set_index("claim").to_dict("index")


def test_1a_is_not_discriminating_when_gd_ends_at_muons_point():
    rows = _rows(_doc([_seed(2e-5, 0.4, 0.45), _seed(3e-5, 0.45, 0.5),
                       _seed(1e-5, 0.42, 0.46)]))
    assert rows["1a"]["verdict"] == NOT_DISCRIMINATING
    assert "GD ends at Muon's point" in rows["1a"]["measured"]
    assert rows["1a"]["estimate"] == pytest.approx(0.1)  # the number itself is still reported
    assert rows["1b"]["verdict"] == REPRODUCED  # 1b is untouched


def test_1a_keeps_its_verdict_when_gd_ends_elsewhere():
    # one seed where GD stops 0.2 away from X⁺Y: not the same point, so 1a is a real test
    rows = _rows(_doc([_seed(2e-5, 0.4, 0.45, 0.01), _seed(0.2, 0.45, 0.5, 0.02),
                       _seed(1e-5, 0.42, 0.46, 0.0)]))
    assert rows["1a"]["verdict"] == REPRODUCED  # 0.1 − muon gaps (0.01, 0.02, 0), tight
    doc = _doc([_seed(2e-5, 0.4, 0.45), _seed(3e-5, 0.45, 0.5)])
    for s in doc["seeds"]:
        del s["optimizers"]["gd"]
    assert _rows(doc)["1a"]["verdict"] != NOT_DISCRIMINATING  # no GD run: nothing to compare


def test_1d_verdict_and_equivalence():
    # full − r1 = 0.05, 0.05, 0.04: positive beyond its CI; r1 ≈ 0.43 is far from 0
    rows = _rows(_doc([_seed(2e-5, 0.40, 0.45), _seed(2e-5, 0.45, 0.50),
                       _seed(2e-5, 0.42, 0.46)]))
    d = rows["1d"]
    assert d["verdict"] == REPRODUCED and d["estimate"] == pytest.approx(0.14 / 3)
    assert d["equivalence"] == "r=1 distance not equivalent"
    assert "r=1 0.423" in d["measured"]
    # rank-1 updates nearly equal (r1 ≈ 0.01 ± tiny) and farther apart in full fine-tuning
    rows = _rows(_doc([_seed(2e-5, 0.010, 0.3), _seed(2e-5, 0.012, 0.35),
                       _seed(2e-5, 0.011, 0.32)]))
    assert rows["1d"]["verdict"] == REPRODUCED
    assert rows["1d"]["equivalence"] == "r=1 distance equivalent"
    # rank 1 farther apart than full fine-tuning on every seed
    rows = _rows(_doc([_seed(2e-5, 0.50, 0.40), _seed(2e-5, 0.52, 0.41),
                       _seed(2e-5, 0.49, 0.40)]))
    assert rows["1d"]["verdict"] == NOT_REPRODUCED


def test_1d_degenerate_cases():
    one = _rows(_seed(2e-5, 0.4, 0.45))  # a single seed: no interval
    assert one["1d"]["verdict"] == INCONCLUSIVE and math.isnan(one["1d"]["resolvable"])
    assert one["1d"]["equivalence"] == "r=1 distance inconclusive"
    s = _seed(2e-5, 0.4, 0.45)
    del s["lora"]["by_rank"]["1"]
    assert _rows(s)["1d"]["verdict"] == NO_DATA
