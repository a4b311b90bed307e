"""The classification toy (claim 1 in its exact, published form): references against a
closed-form optimum, the CLI contract, and the implicit biases themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from muonft.cli import main
from muonft.experiments.toy_classification import (
    distance_to_optimal_set,
    margins,
    max_margin_conic,
    max_margin_linf,
    run_classification_toy,
)


def test_references_on_a_case_with_a_closed_form_optimum():
    """Two classes, x = ±e₁: the margin is v₁ = W₀₁ − W₁₁. Under |W_ab| ≤ 1 it is at most 2;
    under σ_max(W) ≤ 1 (or ‖W‖_F ≤ 1) at most ‖(1, −1)‖·‖W e₁‖ ≤ √2."""
    X, y = np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([0, 1])
    g, W = max_margin_linf(X, y, 2)
    assert g == pytest.approx(2.0) and margins(W, X, y).min() == pytest.approx(2.0)
    for which in ("spectral", "fro"):
        g, W = max_margin_conic(X, y, 2, which)
        assert g == pytest.approx(math.sqrt(2), rel=1e-4)
        assert np.linalg.norm(W, 2 if which == "spectral" else "fro") <= 1 + 1e-4


def test_references_on_three_classes_where_the_three_norms_differ():
    """x_c = e_c (X = I, 3 classes): margins are W_cc − W_jc. ℓ∞: W = 2I − 1 gives 2, the
    most any pair allows. The mean margin is ⟨W, 3I − 11ᵀ⟩/6, and 3I − 11ᵀ has singular values
    3, 3, 0: at most σ₁(W)·6/6 = 1 (reached by W = I − 11ᵀ/3) and ‖W‖_F·√18/6 = 1/√2 (reached
    by W ∝ 3I − 11ᵀ)."""
    X, y = np.eye(3), np.arange(3)
    g, W = max_margin_linf(X, y, 3)
    assert g == pytest.approx(2.0)
    assert margins(W, X, y).min() == pytest.approx(2.0) and np.abs(W).max() <= 1 + 1e-9
    for which, value in (("spectral", 1.0), ("fro", 1 / math.sqrt(2))):
        g, W = max_margin_conic(X, y, 3, which)
        assert g == pytest.approx(value, rel=1e-4), which
        assert margins(W, X, y).min() == pytest.approx(value, rel=1e-4)
        assert np.linalg.norm(W, 2 if which == "spectral" else "fro") <= 1 + 1e-4


def test_distance_to_the_max_margin_set_on_the_three_class_case():
    """Same case. ℓ∞: the set is the one point 2I − 1, so I is √6/3 from it. Spectral: every
    I − 11ᵀ/3 + c·11ᵀ/3 with |c| ≤ 1 is optimal (11ᵀ does not change a margin), a set, not a
    point (I itself is in it). Frobenius: the one point (3I − 11ᵀ)/√18; I/√3 is 0.606 from it."""
    X, y = np.eye(3), np.arange(3)
    one, eye = np.ones((3, 3)), np.eye(3)
    assert distance_to_optimal_set(2 * eye - one, X, y, "linf", 2.0) < 1e-3
    assert distance_to_optimal_set(eye, X, y, "linf", 2.0) == pytest.approx(math.sqrt(6) / 3,
                                                                             rel=1e-3)
    for c in (0.0, 0.5, -0.9):
        assert distance_to_optimal_set(eye - (1 - c) * one / 3, X, y, "spectral", 1.0) < 1e-3
    assert distance_to_optimal_set(eye, X, y, "spectral", 1.0) < 1e-3  # c = 1
    assert distance_to_optimal_set(np.diag([1.0, 1.0, 0.0]), X, y, "spectral", 1.0) > 0.1
    assert distance_to_optimal_set(3 * eye - one, X, y, "fro", 1 / math.sqrt(2)) < 1e-3
    # the set is relaxed by the solver slack (margins ≥ γ*(1 − 1e-5)): a cap of radius
    # ≈ √(2·1e-5) ≈ 0.0045 around the point, so the distance is 0.6058 less up to that
    assert 0.6058 - 0.006 < distance_to_optimal_set(eye, X, y, "fro", 1 / math.sqrt(2)) < 0.6058


def test_cli_contract(tmp_path, capsys):
    out = tmp_path / "toy"
    assert main(["toy", "--problem", "classification", "--seed", "3", "--steps", "200",
                 "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "toy.json").read_text())
    assert doc["problem"] == "classification"
    for opt in ("signgd", "muon", "gd"):
        assert {"margin_ratio_linf", "margin_ratio_spectral"} <= set(doc["optimizers"][opt])
        assert 0 < doc["optimizers"][opt]["margin_ratio_spectral"] <= 1 + 1e-6
    assert {"linf_margin", "spectral_margin"} <= set(doc["references"])
    assert (out / "toy_classification.png").exists()
    assert main(["toy", "--problem", "ranking", "--out", str(out)]) == 2


def test_each_optimizer_approaches_its_own_norms_max_margin():
    """SignGD → the ℓ∞ max-margin value, Muon → the spectral one (≥ 0.95 after 20,000
    iterations here, and rising), each clearly ahead of the other optimizers on its own norm
    (by ≥ 0.1 at the default 6 classes: the toy tells Muon from GD)."""
    res = run_classification_toy(0, steps=20000)["optimizers"]
    for opt, norm in (("signgd", "linf"), ("muon", "spectral")):
        final = res[opt][f"margin_ratio_{norm}"]
        assert final >= 0.95
        curve = [v for _, v in res[opt]["curves"][f"margin_ratio_{norm}"]]
        assert curve[-1] > curve[len(curve) // 2] > curve[0]
        others = [res[o][f"margin_ratio_{norm}"] for o in res if o != opt]
        assert final > max(others) + 0.1
        # its direction is near the set of its norm's max-margin directions, the others' not
        near = res[opt][f"set_distance_{norm}"]
        assert near < 0.2 and near < min(res[o][f"set_distance_{norm}"] for o in res
                                         if o != opt) - 0.1
