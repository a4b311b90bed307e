"""The implicit-bias toy on separable multiclass linear classification (claim 1, exact form).

Normalised steepest descent w.r.t. a norm ‖·‖ on a separable problem with the exponential loss
and decaying steps converges in direction to the max-margin classifier *for that norm*: sign
descent (SignGD) to the ℓ∞ (entrywise max-norm) max-margin W, Muon (the polar factor of the
gradient: steepest descent w.r.t. the spectral norm) to the spectral-norm max-margin W, and
normalised GD to the Frobenius one. This module measures it.

Problem (seeded): W* ∈ R^{k×d} and x₁…xₙ ~ N(0, I_d) standard normal, labels yᵢ = argmax W*xᵢ
(separable by construction). Margin of sample i: mᵢ(W) = min_{j≠yᵢ} (W_{yᵢ} − W_j)·xᵢ; the
normalised margin of W w.r.t. a norm N is γ_N(W) = minᵢ mᵢ(W) / ‖W‖_N. References: the ℓ∞
optimum γ*_∞ = max γ_∞ (a linear program, scipy's HiGHS) and the spectral optimum γ*_2 (a
semidefinite program, cvxpy), plus the Frobenius one (a second-order cone program).
Optimizers from W₀ = 0, loss L(W) = Σᵢ Σ_{j≠yᵢ} exp(−(W_{yᵢ} − W_j)·xᵢ), steps η_t = η₀/√t:
``signgd`` W −= η_t sign(∇L), ``muon`` W −= η_t polar(∇L), ``gd`` W −= η_t ∇L/‖∇L‖_F.

Size: k = 6 classes, d = 10, n = 60 by default. Margins see only W's rows centred over the
classes, a matrix of rank ≤ k − 1, on which ‖·‖₂ ≤ ‖·‖_F ≤ √(k−1)·‖·‖₂: with k = 3 the spectral
and Frobenius problems nearly coincide (GD also reaches 0.95 of the spectral optimum, 10 seeds),
so the toy could not tell Muon from GD. At k = 6, after 20,000 steps (5 seeds), GD reaches 0.89
and SignGD 0.77 of the spectral optimum, Muon 0.98.

``margin_ratio_<N>`` = γ_N(W_T) / γ*_N (1.0 = optimal); the curves record it, and the distance
of W/‖W‖_F to the optimum's direction, at log-spaced iterations. Max-margin solutions need not
be unique (ℓ∞ ones usually are not: SignGD stays ≈ 0.5 from the LP's vertex while its margin
converges), so the final iterate also gets ``set_distance_<N>``, its direction's distance to the
whole set of N-norm max-margin directions (:func:`distance_to_optimal_set`).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from scipy.optimize import linprog

NORMS = ("linf", "spectral", "fro")
OPTIMIZERS = {"signgd": "linf", "muon": "spectral", "gd": "fro"}  # → the norm it is steepest in


def make_problem(seed: int, n: int = 60, d: int = 10, k: int = 6
                 ) -> tuple[np.ndarray, np.ndarray, int]:
    """(X (n, d), labels (n,), k): Gaussian inputs labelled by a random linear teacher."""
    if n < 1 or d < 1 or k < 2:
        raise ValueError(f"need n >= 1, d >= 1 and k >= 2 classes, got n={n}, d={d}, k={k}")
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(k, d))
    X = rng.normal(size=(n, d))
    return X, (X @ teacher.T).argmax(1), k


def margins(W: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """mᵢ(W) = min over j ≠ yᵢ of (W_{yᵢ} − W_j)·xᵢ, per sample."""
    S = X @ W.T
    rows = np.arange(len(y))
    own = S[rows, y]
    S[rows, y] = -np.inf
    return own - S.max(1)


def norm(W: np.ndarray, which: str) -> float:
    """‖W‖ for ``linf`` (max |entry|), ``spectral`` (σ₁) or ``fro``."""
    if which == "linf":
        return float(np.abs(W).max())
    if which == "spectral":
        return float(np.linalg.norm(W, 2))
    return float(np.linalg.norm(W))


def _pair_rows(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """One row per (i, j ≠ yᵢ): the linear map W ↦ (W_{yᵢ} − W_j)·xᵢ on flattened W."""
    n, d = X.shape
    rows = []
    for i in range(n):
        for j in range(k):
            if j != y[i]:
                r = np.zeros(k * d)
                r[y[i] * d:(y[i] + 1) * d] = X[i]
                r[j * d:(j + 1) * d] = -X[i]
                rows.append(r)
    return np.array(rows)


def max_margin_linf(X: np.ndarray, y: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    """γ*_∞ and a maximiser: max t s.t. all pair margins ≥ t, |W_ab| ≤ 1 (an LP)."""
    A = _pair_rows(X, y, k)
    nv = A.shape[1] + 1
    c = np.zeros(nv)
    c[-1] = -1.0
    a_ub = np.hstack([-A, np.ones((len(A), 1))])  # t − margin ≤ 0
    res = linprog(c, A_ub=a_ub, b_ub=np.zeros(len(A)),
                  bounds=[(-1, 1)] * (nv - 1) + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(f"the ℓ∞ max-margin LP failed: {res.message}")
    return float(-res.fun), res.x[:-1].reshape(k, -1)


def max_margin_conic(X: np.ndarray, y: np.ndarray, k: int, which: str
                     ) -> tuple[float, np.ndarray]:
    """γ*_N and a maximiser for N = ``spectral`` (an SDP: σ_max(W) ≤ 1) or ``fro`` (an SOCP),
    solved with cvxpy."""
    import cvxpy as cp  # optional heavy backend

    d = X.shape[1]
    W, t = cp.Variable((k, d)), cp.Variable()
    A = _pair_rows(X, y, k)
    w = cp.reshape(W, (k * d,), order="C")
    bound = cp.sigma_max(W) <= 1 if which == "spectral" else cp.norm(W, "fro") <= 1
    prob = cp.Problem(cp.Maximize(t), [A @ w >= t, bound])
    prob.solve()
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"the {which} max-margin program failed: {prob.status}")
    return float(t.value), np.asarray(W.value)


def distance_to_optimal_set(W: np.ndarray, X: np.ndarray, y: np.ndarray, which: str,
                            optimum: float, slack: float = 1e-5) -> float:
    """‖U − P(U)‖_F / ‖P(U)‖_F for U = W/‖W‖_N: how far W's direction is from the *set* of
    N-norm max-margin directions {V : ‖V‖_N ≤ 1, every pair margin ≥ γ*_N·(1 − slack)}, P the
    Frobenius projection onto it (a QP for ℓ∞, an SDP for the spectral norm, an SOCP for
    Frobenius; cvxpy). Well-posed where the maximiser is not unique (ℓ∞ usually), unlike the
    distance to the one point a solver returns; ``slack`` absorbs the solvers' accuracy."""
    import cvxpy as cp  # optional heavy backend

    k, d = W.shape
    U = W / max(norm(W, which), 1e-300)
    V = cp.Variable((k, d))
    v = cp.reshape(V, (k * d,), order="C")
    bound = {"linf": lambda: cp.max(cp.abs(V)) <= 1, "spectral": lambda: cp.sigma_max(V) <= 1,
             "fro": lambda: cp.norm(V, "fro") <= 1}[which]()
    prob = cp.Problem(cp.Minimize(cp.sum_squares(V - U)),
                      [_pair_rows(X, y, k) @ v >= optimum * (1 - slack), bound])
    with warnings.catch_warnings():
        # "optimal_inaccurate" is accepted: the slack already relaxes the set by more
        warnings.simplefilter("ignore", UserWarning)
        prob.solve(solver="CLARABEL")  # interior point: accurate where OSQP stops at its limit
    if prob.status not in ("optimal", "optimal_inaccurate"):
        raise RuntimeError(f"the projection onto the {which} max-margin set failed: "
                           f"{prob.status}")
    P = np.asarray(V.value)
    return float(np.linalg.norm(U - P) / np.linalg.norm(P))


def exp_loss_grad(W: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """∇ of L(W) = Σᵢ Σ_{j≠yᵢ} exp(−(W_{yᵢ} − W_j)·xᵢ), shifted by the smallest margin first
    (a positive rescaling: every normalised step below ignores it, and it never overflows)."""
    S = X @ W.T
    rows = np.arange(len(y))
    Z = S[rows, y][:, None] - S  # pair margins, Z[i, yᵢ] = 0
    Z[rows, y] = np.inf
    E = np.exp(-(Z - Z.min()))
    E[rows, y] = 0.0
    coef = E.copy()
    coef[rows, y] = -E.sum(1)  # the own class gets −Σ_j E_ij
    return coef.T @ X


def _direction(G: np.ndarray, optimizer: str) -> np.ndarray:
    if optimizer == "signgd":
        return np.sign(G)
    if optimizer == "muon":
        U, _, Vt = np.linalg.svd(G, full_matrices=False)
        return U @ Vt
    return G / max(np.linalg.norm(G), 1e-300)


def run_optimizer(optimizer: str, X: np.ndarray, y: np.ndarray, k: int, steps: int,
                  refs: dict[str, dict[str, Any]], lr: float = 0.5) -> dict[str, Any]:
    """Normalised steepest descent ``optimizer`` for ``steps`` iterations with η_t = lr/√t;
    final margin ratios to every reference, the final direction's distance to each norm's
    max-margin set (``set_distance_<N>``) and curves at log-spaced iterations."""
    W = np.zeros((k, X.shape[1]))
    marks = set(np.unique(np.geomspace(10, steps, 25).astype(int)).tolist())
    curves: dict[str, list[list[float]]] = {}
    for t in range(1, steps + 1):
        W -= lr / math.sqrt(t) * _direction(exp_loss_grad(W, X, y), optimizer)
        if t in marks:
            for key, v in measures(W, X, y, refs).items():
                curves.setdefault(key, []).append([t, v])
    sets = {f"set_distance_{name}": distance_to_optimal_set(W, X, y, name, ref["margin"])
            for name, ref in refs.items()}
    return {**measures(W, X, y, refs), **sets, "steps": steps, "curves": curves}


def measures(W: np.ndarray, X: np.ndarray, y: np.ndarray, refs: dict[str, dict[str, Any]]
             ) -> dict[str, float]:
    """``margin_ratio_<N>`` and ``direction_distance_<N>`` of W for every reference norm."""
    m = float(margins(W, X, y).min())
    unit = W / max(np.linalg.norm(W), 1e-300)
    out = {}
    for name, ref in refs.items():
        out[f"margin_ratio_{name}"] = m / max(norm(W, name), 1e-300) / ref["margin"]
        opt = ref["W"] / np.linalg.norm(ref["W"])
        out[f"direction_distance_{name}"] = float(np.linalg.norm(unit - opt))
    return out


def run_classification_toy(seed: int, steps: int = 20000, n: int = 60, d: int = 10,
                           k: int = 6, lr: float = 0.5) -> dict[str, Any]:
    """The whole experiment for one seed: references and the three optimizers."""
    if steps < 10:
        raise ValueError(f"steps must be >= 10, got {steps}")
    X, y, k = make_problem(seed, n, d, k)
    refs: dict[str, dict[str, Any]] = {}
    g, W = max_margin_linf(X, y, k)
    refs["linf"] = {"margin": g, "W": W}
    for which in ("spectral", "fro"):
        g, W = max_margin_conic(X, y, k, which)
        refs[which] = {"margin": g, "W": W}
    return {"problem": "classification", "seed": seed, "n": n, "d": d, "k": k,
            "steps": steps, "lr": lr,
            "optimizers": {o: run_optimizer(o, X, y, k, steps, refs, lr) for o in OPTIMIZERS},
            "references": {f"{name}_margin": r["margin"] for name, r in refs.items()}}


def classification_document(results: list[dict[str, Any]]) -> dict[str, Any]:
    """``toy.json`` of ``--problem classification``: the first seed's record (the CLI
    contract's keys at the top), every seed under ``seeds``, and per optimizer the mean and
    min over seeds of each final margin ratio."""
    doc = {k: v for k, v in results[0].items()}
    doc["seeds"] = results
    doc["summary"] = {
        o: {key: {"mean": float(np.mean([r["optimizers"][o][key] for r in results])),
                  "min": float(np.min([r["optimizers"][o][key] for r in results]))}
            for key in (f"margin_ratio_{n}" for n in NORMS)}
        for o in OPTIMIZERS}
    return doc
