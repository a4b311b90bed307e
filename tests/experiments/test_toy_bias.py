import json

import numpy as np
import pytest

from muonft.cli import main
from muonft.experiments.toy_bias import (
    make_problem,
    max_norm,
    min_frobenius,
    min_max_norm,
    min_spectral_norm,
    references,
    spectral_norm,
    summarize,
    train,
    train_lora,
)


def _random_feasible(p, rng, scale):
    """A random interpolant: the min-Frobenius one plus a random null-space component."""
    X = p.X
    null = np.eye(X.shape[1]) - np.linalg.pinv(X) @ X
    return min_frobenius(p) + null @ rng.standard_normal((X.shape[1], p.Y.shape[1])) * scale


@pytest.mark.parametrize("seed", [0, 1])
def test_references_are_feasible_and_optimal(seed):
    p = make_problem(8, 16, 4, seed)
    Wm, Ws, Wf = min_max_norm(p), min_spectral_norm(p), min_frobenius(p)
    for W in (Wm, Ws, Wf):
        assert np.abs(p.X @ W - p.Y).max() < 1e-6
    rng = np.random.default_rng(seed)
    for _ in range(200):
        W = _random_feasible(p, rng, scale=rng.uniform(0.01, 1.0))
        assert max_norm(W) >= max_norm(Wm) - 1e-6
        assert spectral_norm(W) >= spectral_norm(Ws) - 1e-5
        assert np.linalg.norm(W) >= np.linalg.norm(Wf) - 1e-9
    # the min-Frobenius interpolant is also a min-spectral-norm one (W_F ⟂ every null direction)
    assert spectral_norm(Wf) <= spectral_norm(Ws) * (1 + 1e-5)


def test_every_optimizer_interpolates():
    p = make_problem(8, 16, 4, 3)
    for name in ("gd", "signgd", "adam", "muon", "muon_ns5"):
        tr = train(name, p)
        assert tr.rel_loss <= 1e-10, name


def test_implicit_bias_orders_the_norms_over_seeds():
    """SignGD ends with a smaller max-norm than Muon; Muon with a smaller spectral norm."""
    for seed in range(4):
        p = make_problem(10, 20, 5, seed)
        refs = references(p)
        sign = summarize(train("signgd", p).W, refs)
        muon = summarize(train("muon", p).W, refs)
        gd = summarize(train("gd", p).W, refs)
        assert sign["maxnorm_gap"] < muon["maxnorm_gap"]
        assert sign["maxnorm_gap"] < gd["maxnorm_gap"]
        assert muon["spectral_gap"] < 1e-4  # Muon reaches a minimum-spectral-norm interpolant
        assert muon["spectral_gap"] < sign["spectral_gap"]
        # Muon's updates stay in the row space of X: it lands on the pseudo-inverse solution
        assert muon["dist_to_frobenius"] < 1e-4


def test_lora_toy_reaches_low_rank_target():
    p = make_problem(8, 16, 4, 0)
    W0 = min_frobenius(p)
    rng = np.random.default_rng(1)
    shift = rng.standard_normal((16, 1)) @ rng.standard_normal((1, 4))
    from muonft.experiments.toy_bias import Problem

    p2 = Problem(p.X, p.X @ (W0 + shift))
    for name in ("adam", "muon"):
        tr = train_lora(name, p2, W0, rank=1)
        assert tr.rel_loss <= 1e-10
        assert np.linalg.matrix_rank(tr.W - W0, tol=1e-6) == 1
    with pytest.raises(ValueError, match="rank must be in"):
        train_lora("muon", p2, W0, rank=0)


@pytest.mark.parametrize(
    ("n", "d", "k", "msg"),
    [(20, 20, 3, "need n < d"), (0, 5, 3, "n must be a positive integer"),
     (2, 5, -1, "k must be a positive integer")],
)
def test_bad_sizes(n, d, k, msg):
    with pytest.raises(ValueError, match=msg):
        make_problem(n, d, k)


def test_cli_writes_contract(tmp_path, capsys):
    out = tmp_path / "toy"
    rc = main(["toy", "--seed", "0", "--out", str(out), "--n", "8", "--d", "16", "--k", "4"])
    assert rc == 0
    doc = json.loads((out / "toy.json").read_text())
    assert set(doc["optimizers"]) == {"gd", "signgd", "adam", "muon", "muon_ns5"}
    for r in doc["optimizers"].values():
        for key in ("dist_to_maxnorm", "dist_to_spectral", "dist_to_frobenius", "max_norm",
                    "spectral_norm"):
            assert isinstance(r[key], float)
    assert {"maxnorm", "spectral", "frobenius"} <= set(doc["references"])
    assert doc["lora"]["ranks"] and "by_rank" in doc["lora"]
    for f in ("toy_norms.png", "toy_trajectories.png", "toy_lora.png"):
        assert (out / f).stat().st_size > 1000


def test_cli_bad_sizes_one_line_exit_2(tmp_path, capsys):
    assert main(["toy", "--n", "50", "--d", "40", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n < d" in err[0]
    assert not (tmp_path / "x").exists()
