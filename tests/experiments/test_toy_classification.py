"""The classification toy (claim 1 in its exact, published form): references against a
closed-form optimum, the CLI contract, and the implicit biases themselves."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from muonft.cli import main
from muonft.experiments.toy_classification import (
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
    iterations here, and rising), each beating the other optimizers on its own norm."""
    res = run_classification_toy(0, steps=20000)["optimizers"]
    for opt, norm in (("signgd", "linf"), ("muon", "spectral")):
        final = res[opt][f"margin_ratio_{norm}"]
        assert final >= 0.95
        curve = [v for _, v in res[opt]["curves"][f"margin_ratio_{norm}"]]
        assert curve[-1] > curve[len(curve) // 2] > curve[0]
        others = [res[o][f"margin_ratio_{norm}"] for o in res if o != opt]
        assert final > max(others) - 0.01
