"""Orthogonalizers: maps G -> (approximately) its polar factor U Vᵀ, batched over leading dims.

Every function takes ``G`` of shape ``(..., m, n)`` and returns a tensor of the same shape and
dtype. Work is done on the wide orientation (m ≤ n), so tall inputs are transposed once on the way
in and once on the way out; the m×m Gram matrix is then the small one.

Methods (``orthogonalize(G, method=...)``):

- ``"ns5"``: Newton–Schulz quintic ``X ← aX + (bA + cA²)X`` with ``A = XXᵀ`` and a fixed triple
  (default (3.4445, −4.7750, 2.0315), Keller Jordan's Muon), after ``X ← G/‖G‖_F``. It does not
  converge to U Vᵀ: singular values land in roughly [0.7, 1.2], which Muon tolerates.
- ``"polar_express"``: the same iteration with the per-step coefficients of Polar Express
  (Amsel, Persson, Musco, Gower 2025, arXiv 2505.16932; 5 steps, safety factor 2e-2) after
  ``X ← G/(1.02‖G‖_F)``. Converges much closer to 1. With ``steps`` of 2, 3 or 4 it uses a
  schedule designed the same way for that many steps (:data:`POLAR_EXPRESS_SHORT`), not a
  truncation of the 5-step one.
- ``"gram_ns"`` / ``"gram_polar_express"``: the same polynomial iterations run on the small
  m×m Gram matrix instead of on X (fewer FLOPs when n ≫ m): every iterate is ``X_k = P_k X₀``
  with ``P_k`` a polynomial in ``A₀ = X₀X₀ᵀ``; matrices whose low-precision recursion blows up
  are redone with the direct iteration.
- ``"exact_thin"``: the exact polar factor ``(XXᵀ)^{-1/2} X`` from an m×m ``eigh``, with
  eigenvalues below ``eps·λ_max`` treated as zero (rank-deficient input maps to a partial
  isometry, like the SVD). Meant for thin matrices such as LoRA factors (min(m, n) ≤ 64).
- ``"svd"``: exact ``U Vᵀ`` from the SVD, with the same floor (σᵢ ≤ √eps·σ₁ count as zero).
- ``"exact"``: ``exact_thin`` when min(m, n) ≤ 64, else ``svd``.
- ``"auto"``: per (shape, dtype, device), the fastest of the methods above whose output is at
  least as close to orthogonal as ``ns5``'s (mean |σᵢ − 1|) on the first real input of that
  shape *and* on probe matrices of the same shape with decaying spectra (σᵢ ∝ 1/i, exponential
  over 3 and 6 decades, like real momenta); decided once by timing, then cached (see
  :class:`AutoPolicy`).

The exact methods rescale each matrix by a power of two first (:func:`_unit_max_`), so they
are scale-invariant: a momentum at 1e-30 or 1e20 gets the same polar factor as at 1.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

NS5_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)

# Polar Express, 5 iterations, safety factor 2e-2, cushion 2 (arXiv 2505.16932); the safety
# factor is folded into all but the last polynomial, and inputs are normalised by 1.02·‖G‖_F.
POLAR_EXPRESS_COEFFICIENTS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
POLAR_EXPRESS_NORM_FACTOR = 1.02

# Shorter schedules built the Polar Express way (greedy minimax odd quintics on [ℓ, u], each
# step mapping the band onto the next, safety 1.01 on all but the last) by
# :func:`design_polar_express_schedule` with the ℓ below; truncating the 5-step schedule instead
# leaves mean |σ−1| ≈ 0.35 after 4 steps. Keys: number of steps.
SHORT_SCHEDULE_LOWER: dict[int, float] = {2: 0.1, 3: 0.02, 4: 0.005}
POLAR_EXPRESS_SHORT: dict[int, tuple[tuple[float, float, float], ...]] = {
    2: (
        (5.548213188533302, -13.475374755390911, 9.261009055448397),
        (2.1410689133949683, -1.528136409893791, 0.4077004843223831),
    ),
    3: (
        (7.634626300367826, -21.46340077577791, 15.460126308618976),
        (3.1928976008379686, -2.350812036826259, 0.4793654164905486),
        (2.2344775941462127, -1.615296313223164, 0.41662293086561286),
    ),
    4: (
        (8.216565774754315, -23.712206086189934, 17.212478230082716),
        (3.8802841457355166, -2.8390683967654025, 0.5328624979809697),
        (3.1598222919487036, -2.3264546013787117, 0.47671586433263435),
        (2.210202867763976, -1.592954298207961, 0.4143217349383526),
    ),
}

THIN_MAX = 64
ORTHOGONALIZERS = (
    "ns5", "polar_express", "gram_ns", "gram_polar_express", "exact_thin", "svd", "exact", "auto",
)


def _coefficient_schedule(
    method: str, steps: int, coefficients: Sequence[float] | Sequence[Sequence[float]] | None
) -> list[tuple[float, float, float]]:
    """Per-step (a, b, c) for the polynomial methods."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if coefficients is not None:
        coefs = list(coefficients)
        if len(coefs) == 3 and all(isinstance(c, (int, float)) for c in coefs):
            return [tuple(float(c) for c in coefs)] * steps  # type: ignore[list-item]
        sched = [tuple(float(x) for x in c) for c in coefs]
        if any(len(c) != 3 for c in sched):
            raise ValueError(
                f"coefficients must be (a, b, c) or a list of them, got {coefficients}"
            )
        return (sched + [sched[-1]] * steps)[:steps]  # type: ignore[return-value]
    if method in ("ns5", "gram_ns"):
        return [NS5_COEFFICIENTS] * steps
    if steps in POLAR_EXPRESS_SHORT:
        return list(POLAR_EXPRESS_SHORT[steps])
    # Polar Express beyond its 5 designed steps: repeat the last (convergent) polynomial.
    pe = list(POLAR_EXPRESS_COEFFICIENTS)
    return (pe + [pe[-1]] * steps)[:steps]


def design_polar_express_schedule(
    steps: int, lower: float, safety: float = 1.01, grid: int = 2000
) -> list[tuple[float, float, float]]:
    """Greedy Polar Express schedule (Amsel et al. 2025, Alg. 1) for ``steps`` iterations.

    Starting from the band [ℓ, u] = [lower, 1], each step takes the odd quintic
    p(x) = ax + bx³ + cx⁵ minimising max_{x∈[ℓ,u]} |1 − p(x)| (a linear program on a log-spaced
    grid), then the band becomes [min p, max p]. All but the last polynomial are evaluated at
    x/``safety`` so bf16 rounding cannot push σ past the band. Used offline to produce
    :data:`POLAR_EXPRESS_SHORT`; needs scipy.
    """
    import numpy as np  # lazy with scipy: an offline tool, never on the optimizer's path
    from scipy.optimize import linprog  # lazy: 0.4 s of import time for every Muon user

    lo, hi = lower, 1.0
    out: list[tuple[float, float, float]] = []
    for k in range(steps):
        x = np.geomspace(lo, hi, grid)
        P = np.stack([x, x**3, x**5], 1)
        ones = np.ones((grid, 1))
        # minimise t subject to -t <= 1 - P·(a, b, c) <= t
        res = linprog([0, 0, 0, 1], A_ub=np.vstack([np.hstack([P, -ones]), np.hstack([-P, -ones])]),
                      b_ub=np.concatenate([np.ones(grid), -np.ones(grid)]),
                      bounds=[(None, None)] * 3 + [(0, None)], method="highs")
        a, b, c = (float(v) for v in res.x[:3])
        if k < steps - 1:
            a, b, c = a / safety, b / safety**3, c / safety**5
        out.append((a, b, c))
        xs = np.geomspace(lo, hi, 20000)
        p = a * xs + b * xs**3 + c * xs**5
        lo, hi = float(p.min()), float(p.max())
    return out


def _as_batch(X: Tensor) -> tuple[Tensor, torch.Size]:
    """View (..., m, n) as (B, m, n) so batched GEMMs can be used; returns the leading shape."""
    lead = X.shape[:-2]
    return X.reshape(-1, X.shape[-2], X.shape[-1]), lead


def _normalise_(X: Tensor, factor: float, eps: float) -> Tensor:
    """Divide each matrix by factor·‖X‖_F in place. Only ever called on our own fresh copy:
    torch.optim.Muon's bf16 + nesterov=False bug was this division landing on the momentum
    buffer itself."""
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True)
    return X.div_((norm * factor).clamp_min(eps))


def _polynomial_iteration(X: Tensor, schedule: list[tuple[float, float, float]]) -> Tensor:
    """X ← aX + (bA + cA²)X with A = XXᵀ, on a (B, m, n) wide batch.

    On CPU, for large matrices 2-D ``addmm`` runs faster than ``baddbmm`` (measured ~10% on
    bf16 512×512 and 512×2048 stacks), so such a batch is walked matrix by matrix; small ones
    and accelerators get one batched call per GEMM.
    """
    if X.device.type == "cpu" and X.shape[-2] * X.shape[-1] >= 512 * 512:
        return torch.stack([_polynomial_iteration_2d(x, schedule) for x in X])
    for a, b, c in schedule:
        A = torch.bmm(X, X.mT)
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    return X


def _polynomial_iteration_2d(X: Tensor, schedule: list[tuple[float, float, float]]) -> Tensor:
    for a, b, c in schedule:
        A = X @ X.mT
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X


def _gram_polynomial_iteration(X: Tensor, schedule: list[tuple[float, float, float]]) -> Tensor:
    """The same iteration carried on the m×m side: X_k = P_k X₀ with A_k = X_k X_kᵀ.

    Each step forms Q = aI + bA_k + cA_k², accumulates P ← QP, and moves the Gram matrix as
    A_{k+1} = Q A_k Q (what X_{k+1} = Q X_k implies). Updating A from A_k rather than as
    A₀P_k² (equal in exact arithmetic) and re-symmetrising Q, P and A keeps rounding errors
    from compounding: the A₀P² form blew up in bf16 and even fp32 on small near-square inputs.
    Costs 2·m²n + 4·m³ per step (2·m³ on the last) instead of (2·m²n + m³) per step, a win
    when n is a few times m; X itself is touched only twice.
    """

    def sym(T: Tensor) -> Tensor:
        return (T + T.mT).mul_(0.5)

    A = torch.bmm(X, X.mT)
    eye = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device).expand_as(A)
    P = None
    for k, (a, b, c) in enumerate(schedule):
        Q = sym(torch.baddbmm(A, A, A, beta=b, alpha=c) + a * eye)
        P = Q if P is None else sym(torch.bmm(Q, P))
        if k < len(schedule) - 1:  # the last step needs only P
            A = sym(torch.bmm(Q, torch.bmm(A, Q)))
    assert P is not None
    return torch.bmm(P, X)


def _gram_recover(X: Tensor, Y: Tensor, schedule: list[tuple[float, float, float]]) -> Tensor:
    """Fall back to the direct iteration for matrices where the Gram recursion blew up.

    P_k approximates A₀^{-1/2}, whose large eigenvalues amplify rounding noise of an
    ill-conditioned input in low precision. Every method here keeps σᵢ(Y) ≲ 1.25, so
    ‖Y‖²_F > 1.6·m (or a non-finite value) flags a matrix that lost accuracy.
    """
    sq = Y.float().square().sum(dim=(-2, -1))
    bad = ~torch.isfinite(sq) | (sq > 1.6 * Y.shape[-2])
    if bool(bad.any()):
        Y = Y.clone()
        Y[bad] = _polynomial_iteration(X[bad], schedule)
    return Y


# Matrices whose largest |entry| lies in [2^-40, 2^40] have a Gram matrix (≤ 2^80·n) far from
# fp32's overflow and underflow (2^±126): they are left as they are (numerics unchanged).
SAFE_EXPONENT = 40


def _unit_max_(X: Tensor) -> Tensor:
    """Scale in place, by a power of two, each matrix whose largest |entry| lies outside
    [2^-40, 2^40] so that it lies in [0.5, 1).

    The polar factor is scale-invariant but XXᵀ is not: from a raw momentum at scale 1e20 it
    overflows fp32 (``eigh`` fails), at 1e-30 it underflows to zero (a silently zero update).
    A power of two is exact; matrices of ordinary scale are not touched, because ``eigh`` is not
    bit-for-bit scale-equivariant and near-floor eigenvalues of rank-deficient momenta (LoRA
    factors at init) would flip across the floor and change results that were recorded."""
    amax = X.abs().amax(dim=(-2, -1), keepdim=True)
    _, exponent = torch.frexp(amax)
    exponent = torch.where(exponent.abs() > SAFE_EXPONENT, exponent, torch.zeros_like(exponent))
    # ±125 keeps 2^-e finite in fp32; only subnormal inputs are scaled short of [0.5, 1)
    return X.mul_(torch.exp2(-exponent.clamp(-125, 125).to(X.dtype)))


def _exact_thin(X: Tensor, eps: float) -> Tensor:
    """(XXᵀ)^{-1/2} X via an m×m eigh, on a wide fp32/fp64 batch (scaled by :func:`_unit_max_`
    first)."""
    X = _unit_max_(X)
    S = torch.bmm(X, X.mT)
    evals, evecs = torch.linalg.eigh(S)
    floor = evals[..., -1:].clamp_min(0) * eps
    inv_sqrt = torch.where(evals > floor, evals.clamp_min(torch.finfo(evals.dtype).tiny).rsqrt(),
                           torch.zeros_like(evals))
    W = (evecs * inv_sqrt.unsqueeze(-2)) @ evecs.mT
    return torch.bmm(W, X)


def _svd_polar(X: Tensor, eps: float) -> Tensor:
    """U Vᵀ from the SVD, keeping only σᵢ > √eps·σ₁ — the floor ``_exact_thin`` puts on
    σᵢ² = λᵢ — so both exact methods agree on rank-deficient input instead of the SVD turning
    rounding-level singular values into unit ones."""
    U, sig, Vh = torch.linalg.svd(_unit_max_(X), full_matrices=False)
    keep = (sig > sig[..., :1] * math.sqrt(eps)).to(U.dtype)
    return (U * keep.unsqueeze(-2)) @ Vh


def orthogonalize(
    G: Tensor,
    method: str = "ns5",
    steps: int = 5,
    dtype: torch.dtype | None = torch.bfloat16,
    coefficients: Sequence[float] | Sequence[Sequence[float]] | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """Approximate the polar factor U Vᵀ of each matrix in ``G`` (shape ``(..., m, n)``).

    ``method`` is one of :data:`ORTHOGONALIZERS` (see the module docstring). ``dtype`` is the
    compute dtype of the polynomial methods (bf16 by default, fp32/fp64 allowed; ``None`` keeps
    G's); the exact methods always compute in at least fp32. ``coefficients`` overrides the
    (a, b, c) triple, or the per-step schedule, of the polynomial methods. Returns G's shape and
    dtype.
    """
    if G.ndim < 2:
        raise ValueError(f"orthogonalize needs a (..., m, n) tensor, got shape {tuple(G.shape)}")
    if G.is_complex():
        raise ValueError("orthogonalize does not support complex tensors")
    if method not in ORTHOGONALIZERS:
        raise ValueError(f"unknown orthogonalizer {method!r}; choose one of "
                         f"{', '.join(ORTHOGONALIZERS)}")
    if method == "auto":
        return DEFAULT_AUTO(G, steps=steps, dtype=dtype, eps=eps)
    if method == "exact":
        method = "exact_thin" if min(G.shape[-2:]) <= THIN_MAX else "svd"
    if G.numel() == 0:
        return G.clone()
    return orthogonalize_raw(G, method, steps, dtype, coefficients, eps).to(
        G.dtype, memory_format=torch.contiguous_format)


def orthogonalize_raw(
    G: Tensor,
    method: str,
    steps: int = 5,
    dtype: torch.dtype | None = torch.bfloat16,
    coefficients: Sequence[float] | Sequence[Sequence[float]] | None = None,
    eps: float = 1e-7,
) -> Tensor:
    """:func:`orthogonalize` without argument checks and without the cast back to G's dtype.

    Returns the compute dtype (bf16 for the default polynomial methods); for a tall G the result
    is a transposed view. The optimizer applies it directly (``p.add_`` promotes), saving two
    full copies per step. Never modifies ``G``.
    """
    if method == "auto":
        return DEFAULT_AUTO(G, steps=steps, dtype=dtype, eps=eps)
    if method == "exact":
        method = "exact_thin" if min(G.shape[-2:]) <= THIN_MAX else "svd"
    transposed = G.shape[-2] > G.shape[-1]
    if method in ("exact_thin", "svd"):
        work = torch.float64 if G.dtype == torch.float64 else torch.float32
    else:
        work = dtype or G.dtype
    # One pass: cast and (for tall inputs) transpose into a fresh contiguous wide copy. GEMMs on
    # a transposed view run at about half speed on CPU.
    src = G.mT if transposed else G
    X = src.to(work, memory_format=torch.contiguous_format, copy=True)
    X, lead = _as_batch(X)
    if method in ("exact_thin", "svd"):
        Y = _exact_thin(X, eps) if method == "exact_thin" else _svd_polar(X, eps)
    else:
        schedule = _coefficient_schedule(method, steps, coefficients)
        pe = method in ("polar_express", "gram_polar_express")
        X = _normalise_(X, POLAR_EXPRESS_NORM_FACTOR if pe else 1.0, eps)
        if method.startswith("gram_"):
            # The Gram recursion squares condition numbers; in bf16 it can lose accuracy, which
            # _gram_recover detects (and `auto` only picks it where its measured error is no
            # worse than NS5's).
            Y = _gram_recover(X, _gram_polynomial_iteration(X, schedule), schedule)
        else:
            Y = _polynomial_iteration(X, schedule)
    Y = Y.reshape(*lead, *Y.shape[-2:])
    return Y.mT if transposed else Y


def orthogonality_error(U: Tensor) -> Tensor:
    """Mean |σᵢ − 1| over the min(m, n) singular values of each matrix, shape ``(...)``.

    σᵢ² are the eigenvalues of the small fp64 Gram matrix (7× faster than an SVD of a 512×2048
    matrix; σ is off by at most ~1e-8·σ₁, far below what the mean resolves)."""
    X = U.to(torch.float64)
    if X.shape[-2] > X.shape[-1]:
        X = X.mT
    sq = torch.linalg.eigvalsh(X @ X.mT).clamp_min(0)
    return (sq.sqrt() - 1).abs().mean(dim=-1)


def _sync(device: torch.device) -> None:
    """Wait for queued kernels on an accelerator (no-op on CPU), so timings measure the work."""
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


# Singular-value profiles of the probe matrices ``auto`` scores candidates on, next to the real
# input: real momenta have decaying spectra, and a method that beats NS5 on a flat (Gaussian)
# spectrum can lose badly on these (issue 19: 3-step polar_express, mean |σ−1| 0.73 vs NS5's
# 0.16 at σᵢ ∝ 1/i on 512×512).
PROBE_SPECTRA: dict[str, Callable[[int], Tensor]] = {
    "power1": lambda k: 1.0 / torch.arange(1, k + 1, dtype=torch.float64),
    "exp3": lambda k: torch.logspace(0, -3, k, dtype=torch.float64),
    "exp6": lambda k: torch.logspace(0, -6, k, dtype=torch.float64),
}


def probe_matrices(m: int, n: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                   seed: int = 0) -> Tensor:
    """One (m, n) matrix per :data:`PROBE_SPECTRA` profile, stacked: random orthonormal
    singular vectors (seeded, so every process builds the same probes) and σ from the profile."""
    g = torch.Generator().manual_seed(seed)
    k = min(m, n)
    out = []
    for spectrum in PROBE_SPECTRA.values():
        U, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
        V, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
        out.append((U * spectrum(k)) @ V.T)
    return torch.stack(out).to(device=device, dtype=dtype)


@dataclass(frozen=True)
class AutoChoice:
    """What ``auto`` picked for one (shape, dtype, device) key, and why: ``error`` and
    ``ns5_error`` are mean |σ−1| averaged over the probes (the real input and the
    :data:`PROBE_SPECTRA` matrices); on every probe alone the choice is no worse than NS5."""

    method: str
    steps: int
    seconds: float
    error: float
    ns5_seconds: float
    ns5_error: float


class AutoPolicy:
    """Chooses, per (m, n, batch, dtype, device), the fastest method at least as orthogonal as
    NS5 on realistic inputs.

    On the first real input of each key, every candidate's orthogonality error (mean |σ−1|) is
    measured on that input (rescaled to unit max entry) and on probe matrices of the same shape
    with decaying spectra (:func:`probe_matrices`); a candidate is admissible when it is no worse
    than NS5 on *every* probe. The admissible ones are timed on the real input (best of
    ``repeats`` interleaved calls); among those within ``TIE`` (10%) of the fastest the most
    orthogonal wins. The choice is cached for the life of the process and can be
    exported/imported (the optimizer stores it in its state so a resumed run makes the same
    choice).
    """

    # Timings within 10% are noise on a shared machine (NS5 and 5-step Polar Express, equal
    # FLOPs, measured up to 8% apart under load): prefer accuracy there.
    TIE = 1.10

    def __init__(self, repeats: int = 5) -> None:
        self.repeats = repeats
        self.choices: dict[str, AutoChoice] = {}

    @staticmethod
    def key(G: Tensor, dtype: torch.dtype | None) -> str:
        m, n = G.shape[-2:]
        batch = math.prod(G.shape[:-2])
        return f"{min(m, n)}x{max(m, n)}:b{batch}:{dtype}:{G.device.type}"

    def candidates(self, G: Tensor) -> list[tuple[str, int]]:
        m, n = sorted(G.shape[-2:])
        cands: list[tuple[str, int]] = [("ns5", 5)]
        # polar_express with 3/4 steps uses the schedules designed for that many steps
        cands += [("polar_express", s) for s in (3, 4, 5)]
        if n >= 2 * m:
            cands += [("gram_ns", 5)] + [("gram_polar_express", s) for s in (3, 4, 5)]
        if m <= 2 * THIN_MAX:
            cands.append(("exact_thin", 1))
        return cands

    def probe_errors(self, G: Tensor, dtype: torch.dtype | None, eps: float
                     ) -> tuple[list[tuple[str, int]], Tensor]:
        """The candidates and their errors, shape (candidates, probes): probe 0 is ``G``
        (mean over its batch), then one per :data:`PROBE_SPECTRA` profile."""
        real = _unit_max_(G.reshape(-1, *G.shape[-2:]).to(G.dtype, copy=True))
        probes = probe_matrices(*G.shape[-2:], dtype=G.dtype, device=G.device)
        cands = self.candidates(G)
        rows = []
        for method, steps in cands:
            out = [orthogonalize_raw(X, method=method, steps=steps, dtype=dtype, eps=eps)
                   for X in (real, probes)]
            rows.append(torch.cat([orthogonality_error(out[0]).mean().reshape(1),
                                   orthogonality_error(out[1])]))
        return cands, torch.stack(rows)

    def decide(self, G: Tensor, dtype: torch.dtype | None, eps: float) -> AutoChoice:
        """Score every candidate on ``G`` and the probes, then time the admissible ones on
        ``G``; return the choice.

        Timing rounds are interleaved across candidates and the minimum kept, so a burst of
        load from other processes on a shared machine hits every candidate alike.
        """
        cands, errors = self.probe_errors(G, dtype, eps)
        admissible = [i for i in range(len(cands))
                      if bool((errors[i] <= errors[0] + 1e-6).all())]  # NS5 (row 0) always is
        best_t = {i: math.inf for i in admissible}
        for _ in range(self.repeats):
            for i in admissible:
                method, steps = cands[i]
                _sync(G.device)
                t0 = time.perf_counter()
                orthogonalize_raw(G, method=method, steps=steps, dtype=dtype, eps=eps)
                _sync(G.device)  # accelerators run asynchronously: time the work, not the launch
                best_t[i] = min(best_t[i], time.perf_counter() - t0)
        fastest = min(best_t.values())
        mean_err = errors.mean(dim=1)
        best = min((i for i in admissible if best_t[i] <= self.TIE * fastest),
                   key=lambda i: float(mean_err[i]))
        return AutoChoice(cands[best][0], cands[best][1], best_t[best], float(mean_err[best]),
                          best_t[0], float(mean_err[0]))

    def __call__(self, G: Tensor, steps: int = 5, dtype: torch.dtype | None = torch.bfloat16,
                 eps: float = 1e-7) -> Tensor:
        k = self.key(G, dtype)
        choice = self.choices.get(k)
        if choice is None:
            if not bool(G.any()) or not bool(torch.isfinite(G).all()):
                # Nothing to learn from an all-zero (e.g. LoRA A while B = 0) or non-finite
                # input, where every method scores alike: use NS5 now, decide on a real one.
                return orthogonalize_raw(G, method="ns5", steps=steps, dtype=dtype, eps=eps)
            choice = self.decide(G, dtype, eps)
            self.choices[k] = choice
        return orthogonalize_raw(G, method=choice.method, steps=choice.steps, dtype=dtype, eps=eps)

    def export(self) -> dict[str, dict]:
        return {k: asdict(v) for k, v in self.choices.items()}

    def load(self, data: dict[str, dict]) -> None:
        for k, v in data.items():
            self.choices.setdefault(k, AutoChoice(**v))


DEFAULT_AUTO = AutoPolicy()
