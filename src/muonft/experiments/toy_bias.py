"""The toy implicit-bias experiment: which interpolating solution does each optimizer find?

Problem: under-determined linear regression with a matrix parameter, X ∈ ℝ^{n×d}, Y ∈ ℝ^{n×k},
n < d, loss ½‖XW − Y‖²_F over W ∈ ℝ^{d×k}. Infinitely many W interpolate (XW = Y). The study's
claim: started from W₀ = 0 with small steps, SignGD (and Adam, its smoothed form) ends at the
interpolant of minimum max-norm ‖W‖_max = max|Wᵢⱼ|, Muon at the one of minimum spectral norm
‖W‖₂; GD ends at the minimum-Frobenius one X⁺Y.

The optimizers are the plain steepest-descent forms (no momentum except Adam's own): GD
(W ← W − ηG), SignGD (W ← W − η sign G, steepest descent for ‖·‖_∞ on entries), Adam (β =
0.9, 0.95, ε = 1e-16), Muon with the exact polar factor (W ← W − η UVᵀ, G = USVᵀ, steepest
descent for ‖·‖₂) and Muon with NS5 (``muonft.optim.orthogonalize``, float32). The step size is
a small constant, ``step_fraction`` times the size of the needed change in the optimizer's own
norm, until the loss stalls; then it halves at every stall until the relative loss is ≤ ``tol``
(the small-step regime in which the implicit-bias statements are made).

References. The minimum max-norm t* comes from a linear program (HiGHS), the minimum spectral
norm σ* from a semidefinite program (cvxpy). Neither minimizer is unique (only the largest entry /
singular value is pinned down), so the point a solver returns is arbitrary and a distance to it
is ill-posed. We therefore report, for each norm: the **canonical** reference, the minimizer of
least Frobenius norm (a second, strictly convex solve over the optimal set: unique); the
distance to the whole **optimal set** (Frobenius projection onto {XW = Y, ‖W‖ ≤ norm*}); and the
**norm gap** (‖W‖ − norm*)/norm*. For the spectral norm the canonical reference is exactly X⁺Y:
any interpolant is X⁺Y + N with XN = 0, and WᵀW = (X⁺Y)ᵀX⁺Y + NᵀN, so σ₁ cannot drop below σ₁(X⁺Y)
and the Frobenius norm is least at N = 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import torch
from scipy.optimize import linprog
from scipy.sparse import bmat, csr_matrix, identity, kron

from muonft.optim import orthogonalize

OPTIMIZERS = ("gd", "signgd", "adam", "muon", "muon_ns5")
ADAM_BETAS = (0.9, 0.95)
# Relative slack on the optimal norm when optimizing over the optimal set; solver accuracy is
# ~1e-8, so a tighter bound can be infeasible.
_OPT_SET_SLACK = 1e-7


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
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v}")
    if n >= d:
        raise ValueError(f"need n < d for an under-determined problem, got n={n}, d={d}; "
                         f"use fewer equations (--n) or a larger input dimension (--d)")


def make_problem(n: int = 20, d: int = 40, k: int = 10, seed: int = 0) -> Problem:
    """Seeded Gaussian X, Y (entries N(0, 1))."""
    check_sizes(n, d, k)
    rng = np.random.default_rng(seed)
    return Problem(rng.standard_normal((n, d)), rng.standard_normal((n, k)))


def max_norm(W: np.ndarray) -> float:
    """‖W‖_max = max |Wᵢⱼ|."""
    return float(np.abs(W).max())


def spectral_norm(W: np.ndarray) -> float:
    """‖W‖₂ = σ₁(W)."""
    return float(np.linalg.norm(W, 2))


def stable_rank(W: np.ndarray) -> float:
    """Σσᵢ² / σ₁² (0 for the zero matrix)."""
    s = np.linalg.svd(W, compute_uv=False)
    return float((s**2).sum() / s[0] ** 2) if s[0] > 0 else 0.0


def rel_dist(W: np.ndarray, ref: np.ndarray) -> float:
    """‖W − ref‖_F / ‖ref‖_F."""
    return float(np.linalg.norm(W - ref) / np.linalg.norm(ref))


def relative_loss(p: Problem, W: np.ndarray) -> float:
    """‖XW − Y‖²_F / ‖Y‖²_F."""
    return float(np.linalg.norm(p.X @ W - p.Y) ** 2 / np.linalg.norm(p.Y) ** 2)


# --------------------------------------------------------------------------- exact references
def min_frobenius(p: Problem) -> np.ndarray:
    """Minimum-Frobenius interpolant X⁺Y."""
    return np.linalg.pinv(p.X) @ p.Y


def min_max_norm_lp(p: Problem) -> np.ndarray:
    """A minimum-max-norm interpolant: min t s.t. XW = Y, −t ≤ Wᵢⱼ ≤ t (LP, HiGHS).

    Returns the vertex HiGHS finds; the minimizer is generally not unique.
    """
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


def _solve(prob, what: str) -> None:
    """Solve a cvxpy problem with CLARABEL, falling back to SCS."""
    import cvxpy as cp

    solvers = [s for s in ("CLARABEL", "SCS") if s in cp.installed_solvers()]
    for solver in solvers:
        try:
            with warnings.catch_warnings():
                # "optimal_inaccurate" is accepted: callers report the feasibility they get.
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=solver)
        except cp.error.SolverError:
            continue
        if prob.status in ("optimal", "optimal_inaccurate"):
            return
    raise RuntimeError(f"{what} failed with solvers {solvers}: status {prob.status}")


def min_spectral_norm_sdp(p: Problem) -> np.ndarray:
    """A minimum-spectral-norm interpolant: min σ_max(W) s.t. XW = Y (SDP via cvxpy).

    Returns the point the solver finds; the minimizer is generally not unique.
    """
    import cvxpy as cp

    _, d, k = p.shape
    W = cp.Variable((d, k))
    _solve(cp.Problem(cp.Minimize(cp.sigma_max(W)), [p.X @ W == p.Y]), "spectral-norm SDP")
    return np.asarray(W.value)


def project_to_optimal_set(p: Problem, W: np.ndarray, norm: str, bound: float) -> np.ndarray:
    """Frobenius-nearest point to ``W`` in {V : XV = Y, ‖V‖ ≤ bound}, ``norm`` max or spectral.

    With ``bound`` the minimum norm (times 1 + slack) this is the projection onto the set of
    minimum-norm interpolants; with W = 0 it is the least-Frobenius minimizer (canonical one).
    """
    import cvxpy as cp

    V = cp.Variable(W.shape)
    if norm == "max":
        cons = [p.X @ V == p.Y, cp.abs(V) <= bound]
    elif norm == "spectral":
        cons = [p.X @ V == p.Y, cp.sigma_max(V) <= bound]
    else:
        raise ValueError(f"norm must be 'max' or 'spectral', got {norm!r}")
    _solve(cp.Problem(cp.Minimize(cp.norm(V - W, "fro")), cons), f"projection ({norm})")
    return np.asarray(V.value)


@dataclass
class References:
    """Exact interpolants: canonical min-norm ones, the solvers' raw ones, and the optima."""

    maxnorm: np.ndarray  # least-Frobenius minimizer of ‖·‖_max (unique)
    spectral: np.ndarray  # least-Frobenius minimizer of ‖·‖₂ (unique; equals X⁺Y)
    frobenius: np.ndarray  # X⁺Y
    maxnorm_solver: np.ndarray  # the LP vertex HiGHS returned
    spectral_solver: np.ndarray  # the point the SDP solver returned
    t_max: float  # minimum max-norm
    s_spec: float  # minimum spectral norm

    def as_dict(self) -> dict[str, np.ndarray]:
        return {"maxnorm": self.maxnorm, "spectral": self.spectral, "frobenius": self.frobenius,
                "maxnorm_solver": self.maxnorm_solver, "spectral_solver": self.spectral_solver}


def references(p: Problem, *, spectral_by_sdp: bool = False) -> References:
    """Solve the LP and the SDP, then pick the least-Frobenius point of each optimal set.

    The least-Frobenius min-spectral-norm interpolant is X⁺Y (module docstring); it is taken
    from the pseudo-inverse unless ``spectral_by_sdp``, which solves the second SDP instead (the
    tests check the two agree). Raises if X⁺Y's σ₁ exceeds the SDP optimum by more than 1e-5.
    """
    Wl, Ws = min_max_norm_lp(p), min_spectral_norm_sdp(p)
    t, s = max_norm(Wl), spectral_norm(Ws)
    zero = np.zeros_like(Wl)
    Wf = min_frobenius(p)
    if spectral_norm(Wf) > s * (1 + 1e-5):
        raise RuntimeError(f"σ₁(X⁺Y) = {spectral_norm(Wf):.6g} above the SDP optimum {s:.6g}")
    spectral = (project_to_optimal_set(p, zero, "spectral", s * (1 + _OPT_SET_SLACK))
                if spectral_by_sdp else Wf)
    return References(
        maxnorm=project_to_optimal_set(p, zero, "max", t * (1 + _OPT_SET_SLACK)),
        spectral=spectral, frobenius=Wf, maxnorm_solver=Wl, spectral_solver=Ws, t_max=t,
        s_spec=s)


# --------------------------------------------------------------------------- optimizers
def polar(G: np.ndarray) -> np.ndarray:
    """Exact polar factor UVᵀ of G = USVᵀ (float64 SVD): Muon's direction without approximation."""
    U, _, Vt = np.linalg.svd(G, full_matrices=False)
    return U @ Vt


def _ns5(G: np.ndarray) -> np.ndarray:
    out = orthogonalize(torch.from_numpy(G), method="ns5", dtype=torch.float32)
    return out.to(torch.float64).numpy()


class Adam:
    """Adam's direction m̂/(√v̂ + ε) with its state; ε tiny so it is the smoothed sign of G."""

    def __init__(self, b1: float = ADAM_BETAS[0], b2: float = ADAM_BETAS[1],
                 eps: float = 1e-16) -> None:
        self.b1, self.b2, self.eps, self.t = b1, b2, eps, 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def __call__(self, G: np.ndarray) -> np.ndarray:
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(G), np.zeros_like(G)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * G
        self.v = self.b2 * self.v + (1 - self.b2) * G * G
        mh = self.m / (1 - self.b1**self.t)
        vh = self.v / (1 - self.b2**self.t)
        return mh / (np.sqrt(vh) + self.eps)


def direction_fn(name: str) -> Callable[[np.ndarray], np.ndarray]:
    """The update direction of optimizer ``name`` (a fresh, stateful one for Adam)."""
    if name == "gd":
        return lambda G: G
    if name == "signgd":
        return np.sign
    if name == "adam":
        return Adam()
    if name == "muon":
        return polar
    if name == "muon_ns5":
        return _ns5
    raise ValueError(f"unknown toy optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def _own_norm(name: str, W: np.ndarray) -> float:
    """The norm in which optimizer ``name`` takes unit steps (max for sign-like, σ₁ for Muon)."""
    return max_norm(W) if name in ("signgd", "adam") else spectral_norm(W)


@dataclass
class Trace:
    """Final weights, steps, final relative loss and the norm trajectories of one run."""

    W: np.ndarray
    steps: int
    rel_loss: float
    history: dict[str, list[float]] = field(default_factory=dict)


def _schedule(
    step: Callable[[float], float], lr: float, loss: float, *, tol: float, patience: int,
    max_steps: int, decay: bool = True, record: Callable[[int, float], None] | None = None,
    label: str = "",
) -> tuple[int, float]:
    """Call ``step(lr) -> loss`` until loss ≤ tol; halve lr whenever ``patience`` steps cut the
    loss by less than 1%. Returns (steps, final loss); raises if the loss is not finite."""
    last_check, n = math.inf, 0
    while n < max_steps and loss > tol:
        loss = step(lr)
        n += 1
        if not math.isfinite(loss):
            raise RuntimeError(f"{label} diverged at step {n} (lr={lr:.3g})")
        if record is not None:
            record(n, loss)
        if n % patience == 0:
            if decay and loss > 0.99 * last_check:
                lr *= 0.5
            last_check = loss
    return n, loss


def train(
    name: str,
    p: Problem,
    W0: np.ndarray | None = None,
    *,
    tol: float = 1e-10,
    step_fraction: float = 1e-4,
    max_steps: int | None = None,
    record_points: int = 300,
) -> Trace:
    """Run optimizer ``name`` on ½‖XW − Y‖² from W₀ (default 0) to relative loss ≤ ``tol``.

    Step size: ``step_fraction`` × ‖ΔW_F‖ in the optimizer's own norm (ΔW_F = X⁺(Y − XW₀), the
    least change that interpolates), halved at each stall (less than 1% loss decrease over
    0.01/step_fraction steps); GD uses 1/‖X‖₂² and needs no decay.
    """
    if not 0 < step_fraction < 1:
        raise ValueError(f"step_fraction must be in (0, 1), got {step_fraction}")
    _, d, k = p.shape
    W = np.zeros((d, k)) if W0 is None else W0.astype(np.float64).copy()
    if name == "gd":
        lr = 1.0 / np.linalg.norm(p.X, 2) ** 2
    else:
        scale = _own_norm(name, min_frobenius(Problem(p.X, p.Y - p.X @ W)))
        lr = step_fraction * (scale if scale > 0 else 1.0)
    direction = direction_fn(name)
    yy = float(np.linalg.norm(p.Y) ** 2)
    patience = max(20, math.ceil(0.01 / step_fraction))
    limit = max_steps if max_steps is not None else math.ceil(60 / step_fraction)
    every = max(1, math.ceil(3 / step_fraction / record_points))
    hist: dict[str, list[float]] = {"step": [], "max_norm": [], "spectral_norm": [], "loss": []}
    state = {"W": W}

    def step(lr: float) -> float:
        W = state["W"]
        W = W - lr * direction(p.X.T @ (p.X @ W - p.Y))
        state["W"] = W
        return float(np.linalg.norm(p.X @ W - p.Y) ** 2) / yy

    def record(n: int, loss: float) -> None:
        if n % every == 0 or (n < every and (n & (n - 1)) == 0):  # powers of 2 early, for log axes
            hist["step"].append(n)
            hist["max_norm"].append(max_norm(state["W"]))
            hist["spectral_norm"].append(spectral_norm(state["W"]))
            hist["loss"].append(loss)

    loss0 = float(np.linalg.norm(p.X @ W - p.Y) ** 2) / yy
    n, loss = _schedule(step, lr, loss0, tol=tol, patience=patience, max_steps=limit,
                        decay=name != "gd", record=record, label=name)
    return Trace(state["W"], n, loss, hist)


# --------------------------------------------------------------------------- LoRA variant
def train_lora(
    name: str, p: Problem, W0: np.ndarray, rank: int, *, seed: int = 0, tol: float = 1e-10,
    step_fraction: float = 1e-3, max_steps: int = 60_000,
) -> Trace:
    """Train W = W₀ + BA (B d×r zero-init, A r×k random) with ``adam`` or ``muon``.

    Muon treats A and B each as a matrix (exact polar factor), as the study does; Adam is
    elementwise. Step size: ``step_fraction`` × √(‖ΔW_F‖ in the optimizer's norm) per factor,
    halved at each stall, as in :func:`train`.
    """
    if name not in ("adam", "muon"):
        raise ValueError(f"LoRA toy supports adam or muon, got {name!r}")
    _, d, k = p.shape
    if not 1 <= rank <= min(d, k):
        raise ValueError(f"rank must be in [1, {min(d, k)}], got {rank}")
    rng = np.random.default_rng(seed)
    state = {"A": rng.standard_normal((rank, k)) / math.sqrt(k), "B": np.zeros((d, rank))}
    dir_a, dir_b = (Adam(), Adam()) if name == "adam" else (polar, polar)
    scale = _own_norm(name, min_frobenius(Problem(p.X, p.Y - p.X @ W0)))
    yy = float(np.linalg.norm(p.Y) ** 2)

    def step(lr: float) -> float:
        A, B = state["A"], state["B"]
        Gw = p.X.T @ (p.X @ (W0 + B @ A) - p.Y)
        state["B"] = B - lr * dir_b(Gw @ A.T)
        state["A"] = A - lr * dir_a(B.T @ Gw)
        return float(np.linalg.norm(p.X @ (W0 + state["B"] @ state["A"]) - p.Y) ** 2) / yy

    n, loss = _schedule(step, step_fraction * math.sqrt(scale), relative_loss(p, W0), tol=tol,
                        patience=max(20, math.ceil(0.1 / step_fraction)), max_steps=max_steps,
                        label=f"LoRA {name} r={rank}")
    return Trace(W0 + state["B"] @ state["A"], n, loss)


# --------------------------------------------------------------------------- experiment
def summarize(W: np.ndarray, p: Problem, refs: References, *, set_distances: bool = True
              ) -> dict[str, float]:
    """Norms, stable rank, distances (canonical, optimal set, solver point) and norm gaps."""
    out = {
        "max_norm": max_norm(W), "spectral_norm": spectral_norm(W),
        "frobenius_norm": float(np.linalg.norm(W)), "stable_rank": stable_rank(W),
        "dist_to_maxnorm": rel_dist(W, refs.maxnorm),
        "dist_to_spectral": rel_dist(W, refs.spectral),
        "dist_to_frobenius": rel_dist(W, refs.frobenius),
        "dist_to_maxnorm_solver": rel_dist(W, refs.maxnorm_solver),
        "dist_to_spectral_solver": rel_dist(W, refs.spectral_solver),
        "maxnorm_gap": max_norm(W) / refs.t_max - 1,
        "spectral_gap": spectral_norm(W) / refs.s_spec - 1,
        "frobenius_gap": float(np.linalg.norm(W) / np.linalg.norm(refs.frobenius)) - 1,
    }
    if set_distances:
        for key, norm, bound, ref in (("maxnorm", "max", refs.t_max, refs.maxnorm),
                                      ("spectral", "spectral", refs.s_spec, refs.spectral)):
            P = project_to_optimal_set(p, W, norm, bound * (1 + _OPT_SET_SLACK))
            out[f"dist_to_{key}_set"] = float(np.linalg.norm(W - P) / np.linalg.norm(ref))
    return out


def _lowrank_shift(p: Problem, W0: np.ndarray, seed: int) -> Problem:
    """A fine-tuning target reachable by a rank-1 change of W₀: Y₂ = X(W₀ + uvᵀ)."""
    rng = np.random.default_rng(seed + 7919)
    _, d, k = p.shape
    u, v = rng.standard_normal((d, 1)), rng.standard_normal((1, k))
    shift = u @ v * (np.linalg.norm(W0) / np.linalg.norm(u @ v))
    return Problem(p.X, p.X @ (W0 + shift))


@contextmanager
def _one_torch_thread() -> Iterator[None]:
    """NS5 on a 40×10 matrix is dominated by thread start-up; run it single-threaded."""

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pretrained_start(p: Problem, traces: dict[str, Trace], seed: int, step_fraction: float,
                      say: Callable[[str], None]) -> dict[str, dict]:
    """W₀ from Adam or Muon on task 1, fine-tuned on a new Gaussian target with each."""
    rng = np.random.default_rng(seed + 1)
    p2 = Problem(p.X, rng.standard_normal(p.Y.shape))
    out: dict[str, dict] = {}
    for pre_opt in ("adam", "muon"):
        W0 = traces[pre_opt].W
        for ft in ("adam", "muon"):
            say(f"pretrained with {pre_opt}, fine-tuned with {ft}")
            tr = train(ft, p2, W0, step_fraction=step_fraction)
            out[f"{pre_opt}->{ft}"] = {
                "matched": pre_opt == ft,
                "rel_change": float(np.linalg.norm(tr.W - W0) / np.linalg.norm(W0)),
                "max_norm_change": max_norm(tr.W) / max_norm(W0) - 1,
                "spectral_norm_change": spectral_norm(tr.W) / spectral_norm(W0) - 1,
                "stable_rank_before": stable_rank(W0), "stable_rank_after": stable_rank(tr.W),
                "steps": tr.steps, "rel_loss": tr.rel_loss,
            }
    return out


def _lora_variant(p: Problem, W0: np.ndarray, ranks: tuple[int, ...], seed: int,
                  say: Callable[[str], None]) -> dict:
    """Adam vs Muon LoRA fine-tuning of W₀ on a rank-1 shift, and the same in full rank."""
    p3 = _lowrank_shift(p, W0, seed)
    by_rank: dict[str, dict] = {}
    for r in ranks:
        say(f"LoRA rank {r}")
        ta = train_lora("adam", p3, W0, r, seed=seed)
        tm = train_lora("muon", p3, W0, r, seed=seed)
        by_rank[str(r)] = _compare_updates(ta.W - W0, tm.W - W0) | {
            "adam_rel_loss": ta.rel_loss, "muon_rel_loss": tm.rel_loss,
            "adam_steps": ta.steps, "muon_steps": tm.steps}
    say("full fine-tuning on the LoRA target")
    fa, fm = train("adam", p3, W0), train("muon", p3, W0)
    full = _compare_updates(fa.W - W0, fm.W - W0)
    dists = [by_rank[str(r)]["adam_vs_muon_dist"] for r in ranks]
    return {"ranks": list(ranks), "by_rank": by_rank, "full": full,
            "distance_shrinks_toward_rank_1": bool(all(a <= b + 1e-9
                                                       for a, b in pairwise(dists)))}


def _compare_updates(da: np.ndarray, dm: np.ndarray) -> dict[str, float]:
    scale = 0.5 * (np.linalg.norm(da) + np.linalg.norm(dm))
    return {"adam_vs_muon_dist": float(np.linalg.norm(da - dm) / scale),
            "adam_update_stable_rank": stable_rank(da), "muon_update_stable_rank": stable_rank(dm),
            "adam_update_max_norm": max_norm(da), "muon_update_max_norm": max_norm(dm),
            "adam_update_spectral_norm": spectral_norm(da),
            "muon_update_spectral_norm": spectral_norm(dm)}


def run_toy(
    n: int = 20, d: int = 40, k: int = 10, seed: int = 0, *,
    step_fraction: float = 1e-4,
    lora_ranks: tuple[int, ...] | None = None,
    progress: Callable[[str], None] | None = None,
) -> tuple[dict, dict[str, Trace]]:
    """Run every part of the experiment for one seed; returns (JSON-ready dict, traces)."""
    check_sizes(n, d, k)
    say = progress or (lambda s: None)
    p = make_problem(n, d, k, seed)
    say("references (LP, SDP, least-Frobenius minimizers)")
    refs = references(p)
    ref_out = {name: {"max_norm": max_norm(W), "spectral_norm": spectral_norm(W),
                      "frobenius_norm": float(np.linalg.norm(W)), "stable_rank": stable_rank(W),
                      "rel_loss": relative_loss(p, W)} for name, W in refs.as_dict().items()}
    ref_out["min_max_norm"], ref_out["min_spectral_norm"] = refs.t_max, refs.s_spec
    ref_out["solver_vs_canonical"] = {
        "maxnorm": rel_dist(refs.maxnorm_solver, refs.maxnorm),
        "spectral": rel_dist(refs.spectral_solver, refs.spectral),
        "pinv_spectral_norm_over_sdp_optimum": spectral_norm(refs.frobenius) / refs.s_spec}
    traces: dict[str, Trace] = {}
    opt_out: dict[str, dict] = {}
    with _one_torch_thread():
        for name in OPTIMIZERS:
            say(f"optimizer {name}")
            tr = train(name, p, step_fraction=step_fraction)
            traces[name] = tr
            say(f"optimizer {name}: distances to the optimal sets")
            opt_out[name] = summarize(tr.W, p, refs) | {"steps": tr.steps,
                                                         "rel_loss": tr.rel_loss}
    pre = _pretrained_start(p, traces, seed, step_fraction, say)
    ranks = lora_ranks or tuple(r for r in (1, 2, 4, 8) if r <= min(d, k))
    lora = _lora_variant(p, traces["adam"].W, ranks, seed, say)
    result = {
        "problem": {"n": n, "d": d, "k": k, "seed": seed, "step_fraction": step_fraction,
                    "adam_betas": list(ADAM_BETAS), "tol": 1e-10},
        "optimizers": opt_out,
        "references": ref_out,
        "pretrained_start": pre,
        "lora": lora,
    }
    return result, traces


AGGREGATE_KEYS = ("dist_to_maxnorm", "dist_to_spectral", "dist_to_frobenius",
                  "dist_to_maxnorm_set", "dist_to_spectral_set", "dist_to_maxnorm_solver",
                  "dist_to_spectral_solver", "maxnorm_gap", "spectral_gap", "stable_rank",
                  "steps")


def aggregate(results: list[dict]) -> dict:
    """Mean, std, min and max over seeds of each optimizer's distances, gaps and the LoRA
    distances per rank."""

    def stats(v: list[float]) -> dict[str, float]:
        a = np.asarray(v, dtype=float)
        return {"mean": float(a.mean()), "std": float(a.std(ddof=0)), "min": float(a.min()),
                "max": float(a.max())}

    agg: dict = {"n_seeds": len(results), "optimizers": {}}
    for name in OPTIMIZERS:
        agg["optimizers"][name] = {key: stats([r["optimizers"][name][key] for r in results])
                                   for key in AGGREGATE_KEYS}
    ranks = results[0]["lora"]["ranks"]
    agg["lora"] = {str(r): stats([res["lora"]["by_rank"][str(r)]["adam_vs_muon_dist"]
                                  for res in results]) for r in ranks}
    agg["lora"]["full"] = stats([res["lora"]["full"]["adam_vs_muon_dist"] for res in results])
    agg["lora"]["seeds_where_distance_shrinks_toward_rank_1"] = int(sum(
        res["lora"]["distance_shrinks_toward_rank_1"] for res in results))
    agg["pretrained_start"] = {
        key: {m: stats([res["pretrained_start"][key][m] for res in results])
              for m in ("rel_change", "max_norm_change", "spectral_norm_change")}
        for key in results[0]["pretrained_start"]}
    return agg


def toy_document(results: list[dict]) -> dict:
    """The toy.json document of one or more seeds' results: the first seed's result, plus
    ``seeds`` (every result) and their ``aggregate`` when there are several."""
    doc = dict(results[0])
    if len(results) > 1:
        doc["seeds"] = results
        doc["aggregate"] = aggregate(results)
    return doc
