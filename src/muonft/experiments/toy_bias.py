"""The toy implicit-bias experiment: which interpolating solution does each optimizer find?

Problem: under-determined linear regression with a matrix parameter, X ∈ ℝ^{n×d}, Y ∈ ℝ^{n×k},
n < d, loss ½‖XW − Y‖²_F over W ∈ ℝ^{d×k}. Infinitely many W interpolate (XW = Y). The study's
claim: started from W₀ = 0 with small steps, SignGD (and Adam, its smoothed form) ends near the
interpolant of minimum max-norm ‖W‖_max = max|Wᵢⱼ|, Muon near the one of minimum spectral norm
‖W‖₂, and GD at the minimum-Frobenius one.

The optimizers here are the plain steepest-descent forms (no momentum): GD (W ← W − ηG), SignGD
(W ← W − η sign G), Adam (small ε), Muon with the exact polar factor (W ← W − η UVᵀ, G = USVᵀ)
and Muon with NS5. Step sizes start at a fraction of the scale of the minimum-Frobenius solution
and halve whenever the loss stops falling, until the relative loss is ≤ ``tol``.

Exact references: the min-max-norm interpolant by linear programming (HiGHS), the min-spectral-
norm interpolant by semidefinite programming (cvxpy), the min-Frobenius one by the pseudo-inverse.
The first two need not be unique (only the largest entry / singular value is pinned), so besides
the distance ‖W − W_ref‖_F/‖W_ref‖_F we report the norm gap (‖W‖ − ‖W_ref‖)/‖W_ref‖ in the
reference's own norm, which is well defined: a small norm gap means "is a min-norm interpolant".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

OPTIMIZERS = ("gd", "signgd", "adam", "muon", "muon_ns5")


# --------------------------------------------------------------------------- problem & norms
@dataclass(frozen=True)
class Problem:
    """X (n×d), Y (n×k) with n < d: an under-determined matrix regression."""

    X: np.ndarray
    Y: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        n, d = self.X.shape
        return n, d, self.Y.shape[1]


def check_sizes(n: int, d: int, k: int) -> None:
    """Raise ValueError unless 0 < n < d and k > 0 (the problem must be under-determined)."""
    for name, v in (("n", n), ("d", d), ("k", k)):
        if not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if n >= d:
        raise ValueError(f"need n < d for an under-determined problem, got n={n}, d={d}")


def make_problem(n: int = 20, d: int = 40, k: int = 10, seed: int = 0) -> Problem:
    """Seeded Gaussian X, Y (entries N(0, 1))."""
    check_sizes(n, d, k)
    rng = np.random.default_rng(seed)
    return Problem(rng.standard_normal((n, d)), rng.standard_normal((n, k)))


def max_norm(W: np.ndarray) -> float:
    return float(np.abs(W).max())


def spectral_norm(W: np.ndarray) -> float:
    return float(np.linalg.norm(W, 2))


def stable_rank(W: np.ndarray) -> float:
    s = np.linalg.svd(W, compute_uv=False)
    return float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def rel_dist(W: np.ndarray, ref: np.ndarray) -> float:
    """‖W − ref‖_F / ‖ref‖_F."""
    return float(np.linalg.norm(W - ref) / np.linalg.norm(ref))


def relative_loss(p: Problem, W: np.ndarray) -> float:
    return float(np.linalg.norm(p.X @ W - p.Y) ** 2 / np.linalg.norm(p.Y) ** 2)


# --------------------------------------------------------------------------- exact references
def min_frobenius(p: Problem) -> np.ndarray:
    """Minimum-Frobenius interpolant X⁺Y."""
    return np.linalg.pinv(p.X) @ p.Y


def min_max_norm(p: Problem) -> np.ndarray:
    """Minimum-max-norm interpolant: min t s.t. XW = Y, −t ≤ Wᵢⱼ ≤ t (LP, HiGHS)."""
    from scipy.optimize import linprog
    from scipy.sparse import bmat, csr_matrix, identity, kron

    n, d, k = p.shape
    N = d * k  # W flattened row-major: w[i*k + j] = W[i, j]
    A_eq = kron(csr_matrix(p.X), identity(k))  # (XW)[a, j] = sum_i X[a,i] W[i,j]
    A_eq = bmat([[A_eq, csr_matrix((n * k, 1))]])
    ones = csr_matrix(np.ones((N, 1)))
    A_ub = bmat([[identity(N), -ones], [-identity(N), -ones]])
    c = np.zeros(N + 1)
    c[-1] = 1.0
    res = linprog(c, A_ub=A_ub, b_ub=np.zeros(2 * N), A_eq=A_eq, b_eq=p.Y.reshape(-1),
                  bounds=[(None, None)] * (N + 1), method="highs")
    if res.status != 0:
        raise RuntimeError(f"max-norm LP failed: {res.message}")
    return res.x[:N].reshape(d, k)


def min_spectral_norm(p: Problem) -> np.ndarray:
    """Minimum-spectral-norm interpolant: min σ_max(W) s.t. XW = Y (SDP via cvxpy)."""
    import cvxpy as cp

    _, d, k = p.shape
    W = cp.Variable((d, k))
    prob = cp.Problem(cp.Minimize(cp.sigma_max(W)), [p.X @ W == p.Y])
    solvers = [s for s in ("CLARABEL", "SCS") if s in cp.installed_solvers()]
    for solver in solvers:
        try:
            prob.solve(solver=solver)
        except cp.error.SolverError:
            continue
        if prob.status in ("optimal", "optimal_inaccurate") and W.value is not None:
            return np.asarray(W.value)
    raise RuntimeError(f"spectral-norm SDP failed with solvers {solvers}: {prob.status}")


def references(p: Problem) -> dict[str, np.ndarray]:
    """The three exact interpolants: ``maxnorm`` (LP), ``spectral`` (SDP), ``frobenius``."""
    return {"maxnorm": min_max_norm(p), "spectral": min_spectral_norm(p),
            "frobenius": min_frobenius(p)}


# --------------------------------------------------------------------------- optimizers
def _polar(G: np.ndarray) -> np.ndarray:
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    return U @ Vt


def _ns5(G: np.ndarray) -> np.ndarray:
    import torch

    from muonft.optim import orthogonalize

    return orthogonalize(torch.from_numpy(G), method="ns5", dtype=torch.float32).numpy()


class _Adam:
    """Adam's direction m̂/(√v̂ + ε) with state; ε small so it tracks SignGD."""

    def __init__(self, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16) -> None:
        self.b1, self.b2, self.eps, self.t = b1, b2, eps, 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def __call__(self, G: np.ndarray) -> np.ndarray:
        if self.m is None:
            self.m, self.v = np.zeros_like(G), np.zeros_like(G)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * G
        self.v = self.b2 * self.v + (1 - self.b2) * G * G
        mh = self.m / (1 - self.b1**self.t)
        vh = self.v / (1 - self.b2**self.t)
        return mh / (np.sqrt(vh) + self.eps)


def direction_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The update direction of optimizer ``name`` (stateful for Adam)."""
    if name == "gd":
        return lambda G: G
    if name == "signgd":
        return np.sign
    if name == "adam":
        return _Adam()
    if name == "muon":
        return _polar
    if name == "muon_ns5":
        return _ns5
    raise ValueError(f"unknown toy optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


@dataclass
class Trace:
    """Final weights and the norm trajectories of one run."""

    W: np.ndarray
    steps: int
    rel_loss: float
    history: dict[str, list[float]] = field(default_factory=dict)


def _initial_lr(name: str, p: Problem, scale_ref: np.ndarray) -> float:
    if name == "gd":
        return 1.0 / np.linalg.norm(p.X, 2) ** 2
    if name in ("signgd", "adam"):
        return 1e-3 * max_norm(scale_ref)
    return 1e-3 * spectral_norm(scale_ref)


def train(
    name: str,
    p: Problem,
    W0: np.ndarray | None = None,
    *,
    tol: float = 1e-10,
    max_steps: int = 60_000,
    patience: int = 100,
    record_every: int = 50,
    lr0: float | None = None,
) -> Trace:
    """Run optimizer ``name`` on ½‖XW − Y‖² from W₀ (default 0) to relative loss ≤ ``tol``.

    The step size starts at ``lr0`` (default: 0.1% of the min-Frobenius solution's scale in the
    optimizer's own norm; 1/L for GD) and halves whenever the loss has not fallen by 1% over
    ``patience`` steps — the small-step regime in which the implicit-bias statements hold.
    """
    _, d, k = p.shape
    W = np.zeros((d, k)) if W0 is None else W0.astype(np.float64).copy()
    ref = min_frobenius(Problem(p.X, p.Y - p.X @ W))
    lr = lr0 if lr0 is not None else _initial_lr(name, p, ref if np.any(ref) else np.ones((d, k)))
    direction = direction_fn(name)
    hist: dict[str, list[float]] = {"step": [], "max_norm": [], "spectral_norm": [], "loss": []}
    yy = float(np.linalg.norm(p.Y) ** 2)
    last_check = math.inf
    step = 0
    loss = float(np.linalg.norm(p.X @ W - p.Y) ** 2) / yy
    while step < max_steps and loss > tol:
        R = p.X @ W - p.Y
        G = p.X.T @ R
        W = W - lr * direction(G)
        step += 1
        loss = float(np.linalg.norm(p.X @ W - p.Y) ** 2) / yy
        if not math.isfinite(loss):
            raise RuntimeError(f"{name} diverged at step {step} (lr={lr:.3g})")
        if step % record_every == 0:
            hist["step"].append(step)
            hist["max_norm"].append(max_norm(W))
            hist["spectral_norm"].append(spectral_norm(W))
            hist["loss"].append(loss)
        if step % patience == 0:
            if name != "gd" and loss > 0.99 * last_check:
                lr *= 0.5
            last_check = loss
    return Trace(W, step, loss, hist)


# --------------------------------------------------------------------------- LoRA variant
def train_lora(
    name: str, p: Problem, W0: np.ndarray, rank: int, *, seed: int = 0, tol: float = 1e-10,
    max_steps: int = 40_000, patience: int = 100,
) -> Trace:
    """Train W = W₀ + BA (B d×r zero-init, A r×k small random) with ``adam`` or ``muon``.

    Muon treats A and B each as a matrix (the study's treatment); Adam is elementwise.
    """
    if name not in ("adam", "muon"):
        raise ValueError(f"LoRA toy supports adam or muon, got {name!r}")
    _, d, k = p.shape
    if not 1 <= rank <= min(d, k):
        raise ValueError(f"rank must be in [1, {min(d, k)}], got {rank}")
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((rank, k)) / math.sqrt(k)
    B = np.zeros((d, rank))
    dir_a, dir_b = (_Adam(), _Adam()) if name == "adam" else (_polar, _polar)
    ref = min_frobenius(Problem(p.X, p.Y - p.X @ W0))
    lr = 1e-2 * (max_norm(ref) if name == "adam" else spectral_norm(ref)) ** 0.5
    yy = float(np.linalg.norm(p.Y) ** 2)
    last_check, step = math.inf, 0
    loss = relative_loss(p, W0)
    while step < max_steps and loss > tol:
        R = p.X @ (W0 + B @ A) - p.Y
        Gw = p.X.T @ R
        gB, gA = Gw @ A.T, B.T @ Gw
        B, A = B - lr * dir_b(gB), A - lr * dir_a(gA)
        step += 1
        loss = float(np.linalg.norm(p.X @ (W0 + B @ A) - p.Y) ** 2) / yy
        if not math.isfinite(loss):
            raise RuntimeError(f"LoRA {name} diverged at step {step}")
        if step % patience == 0:
            if loss > 0.99 * last_check:
                lr *= 0.5
            last_check = loss
    return Trace(W0 + B @ A, step, loss)


# --------------------------------------------------------------------------- experiment
def summarize(W: np.ndarray, refs: dict[str, np.ndarray]) -> dict[str, float]:
    """Norms, stable rank, distances and norm gaps of W against each reference."""
    out = {
        "max_norm": max_norm(W), "spectral_norm": spectral_norm(W),
        "frobenius_norm": float(np.linalg.norm(W)), "stable_rank": stable_rank(W),
        "dist_to_maxnorm": rel_dist(W, refs["maxnorm"]),
        "dist_to_spectral": rel_dist(W, refs["spectral"]),
        "dist_to_frobenius": rel_dist(W, refs["frobenius"]),
        "maxnorm_gap": max_norm(W) / max_norm(refs["maxnorm"]) - 1,
        "spectral_gap": spectral_norm(W) / spectral_norm(refs["spectral"]) - 1,
        "frobenius_gap": float(np.linalg.norm(W) / np.linalg.norm(refs["frobenius"])) - 1,
    }
    return out


def _lowrank_shift(p: Problem, W0: np.ndarray, seed: int) -> Problem:
    """A fine-tuning target reachable by a rank-1 change of W₀: Y₂ = X(W₀ + uvᵀ)."""
    rng = np.random.default_rng(seed + 7919)
    _, d, k = p.shape
    u, v = rng.standard_normal((d, 1)), rng.standard_normal((1, k))
    shift = u @ v * (np.linalg.norm(W0) / np.linalg.norm(u @ v))
    return Problem(p.X, p.X @ (W0 + shift))


def run_toy(
    n: int = 20, d: int = 40, k: int = 10, seed: int = 0,
    lora_ranks: tuple[int, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, Trace]]:
    """Run every part of the experiment for one seed; returns (JSON-ready dict, traces)."""
    say = progress or (lambda s: None)
    p = make_problem(n, d, k, seed)
    say("references (LP, SDP, pinv)")
    refs = references(p)
    ref_out = {name: {"max_norm": max_norm(W), "spectral_norm": spectral_norm(W),
                      "frobenius_norm": float(np.linalg.norm(W)), "stable_rank": stable_rank(W),
                      "rel_loss": relative_loss(p, W)} for name, W in refs.items()}
    traces: dict[str, Trace] = {}
    opt_out: dict[str, dict] = {}
    for name in OPTIMIZERS:
        say(f"optimizer {name}")
        tr = train(name, p)
        traces[name] = tr
        opt_out[name] = summarize(tr.W, refs) | {"steps": tr.steps, "rel_loss": tr.rel_loss}

    # Pretrained start: W₀ from one optimizer on task 1, fine-tune on task 2 with each.
    rng = np.random.default_rng(seed + 1)
    p2 = Problem(p.X, rng.standard_normal(p.Y.shape))
    pre: dict[str, dict] = {}
    for pre_opt in ("adam", "muon"):
        W0 = traces[pre_opt].W
        for ft in ("adam", "muon"):
            say(f"pretrained with {pre_opt}, fine-tuned with {ft}")
            tr = train(ft, p2, W0)
            pre[f"{pre_opt}->{ft}"] = {
                "matched": pre_opt == ft,
                "rel_change": float(np.linalg.norm(tr.W - W0) / np.linalg.norm(W0)),
                "max_norm_change": max_norm(tr.W) / max_norm(W0) - 1,
                "spectral_norm_change": spectral_norm(tr.W) / spectral_norm(W0) - 1,
                "steps": tr.steps, "rel_loss": tr.rel_loss,
            }

    # LoRA-constrained fine-tuning of the Adam-pretrained W₀ on a rank-1 shift.
    ranks = lora_ranks or tuple(r for r in (1, 2, 4, 8) if r <= min(d, k))
    W0 = traces["adam"].W
    p3 = _lowrank_shift(p, W0, seed)
    lora: dict[str, dict] = {}
    for r in ranks:
        say(f"LoRA rank {r}")
        ta = train_lora("adam", p3, W0, r, seed=seed)
        tm = train_lora("muon", p3, W0, r, seed=seed)
        da, dm = ta.W - W0, tm.W - W0
        scale = 0.5 * (np.linalg.norm(da) + np.linalg.norm(dm))
        lora[str(r)] = {
            "adam_vs_muon_dist": float(np.linalg.norm(da - dm) / scale),
            "adam_rel_loss": ta.rel_loss, "muon_rel_loss": tm.rel_loss,
            "adam_update_stable_rank": stable_rank(da), "muon_update_stable_rank": stable_rank(dm),
        }
    dists = [lora[str(r)]["adam_vs_muon_dist"] for r in ranks]
    shrinks = bool(all(a <= b + 1e-9 for a, b in pairwise(dists)))
    result = {
        "problem": {"n": n, "d": d, "k": k, "seed": seed},
        "optimizers": opt_out,
        "references": ref_out,
        "pretrained_start": pre,
        "lora": {"ranks": list(ranks), "by_rank": lora,
                 "distance_shrinks_toward_rank_1": shrinks},
    }
    return result, traces


def aggregate(results: list[dict]) -> dict:
    """Mean, std, min and max over seeds of each optimizer's distances and norm gaps."""
    keys = ("dist_to_maxnorm", "dist_to_spectral", "dist_to_frobenius", "maxnorm_gap",
            "spectral_gap")
    agg: dict[str, dict] = {}
    for name in OPTIMIZERS:
        agg[name] = {}
        for key in keys:
            v = np.array([r["optimizers"][name][key] for r in results])
            agg[name][key] = {"mean": float(v.mean()), "std": float(v.std(ddof=0)),
                              "min": float(v.min()), "max": float(v.max())}
    agg["n_seeds"] = len(results)
    return agg
