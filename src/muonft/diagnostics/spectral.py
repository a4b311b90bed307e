"""Spectral and drift metrics of weight matrices, batched by shape, grouped by layer type.

Definitions (the study's), for W of shape (m, n) with singular values σ₁ ≥ σ₂ ≥ … ≥ σ_k,
k = min(m, n):

- stable rank  Σσᵢ² / σ₁²;
- normalised spectral entropy  −Σ pᵢ log pᵢ / log k  with  pᵢ = σᵢ² / Σσⱼ²  (in [0, 1]);
- spectral norm σ₁;  max-norm max|Wᵢⱼ|;
- relative L2 drift ‖W − W₀‖_F / ‖W₀‖_F and cosine(W, W₀) of the flattened matrices.

Conventions: a zero matrix has stable rank 0 and entropy 0 (not NaN, so group means stay
finite); a 1×n or m×1 matrix (k = 1) has entropy 0. Drift against a zero W₀ is 0 if W = W₀
and inf otherwise; the cosine with a zero vector is NaN.

Aggregation per layer group: spectral metrics are the *mean over the group's matrices* (the
study averages per layer type); drift is computed from the group's *summed squares*, i.e. as if
its matrices were one concatenated vector (‖ΔW‖² and ⟨W, W₀⟩ summed over the group), so large
matrices weigh more — not a mean of per-matrix ratios. ``overall`` aggregates every matrix the
same two ways.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor

from muonft.models.naming import layer_group

SPECTRAL_KEYS = ("stable_rank", "spectral_entropy", "spectral_norm", "max_norm")
DRIFT_KEYS = ("l2_drift", "cosine_to_init")


def metrics_from_singular_values(s: Tensor, k: int) -> dict[str, Tensor]:
    """Stable rank, normalised entropy and σ₁ from singular values ``s`` (..., r), sorted
    descending, of matrices whose full spectrum has ``k = min(m, n)`` entries (the missing
    k − r values are zero and add nothing to the sums; the entropy is still normalised by
    log k)."""
    s2 = s.square()
    total = s2.sum(-1)
    top = s2[..., 0]
    nonzero = top > 0
    stable = torch.where(nonzero, total / torch.where(nonzero, top, 1.0), 0.0)
    p = s2 / torch.where(total > 0, total, 1.0).unsqueeze(-1)
    plogp = torch.where(p > 0, p * p.clamp_min(torch.finfo(p.dtype).tiny).log(), 0.0)
    ent = -plogp.sum(-1)
    ent = ent / math.log(k) if k > 1 else torch.zeros_like(ent)
    return {"stable_rank": stable, "spectral_entropy": ent, "spectral_norm": s[..., 0]}


def spectral_metrics(W: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Stable rank, normalised spectral entropy, spectral norm σ₁ and max-norm of each matrix.

    ``W`` has shape ``(..., m, n)``; the singular values come from one batched
    ``torch.linalg.svdvals`` in ``dtype`` (float32, or float64 for exactness); returns tensors
    of shape ``(...)``. See the module docstring for the formulas and the zero-matrix rule.
    """
    if W.ndim < 2:
        raise ValueError(f"spectral_metrics needs a (..., m, n) tensor, got shape "
                         f"{tuple(W.shape)}")
    X = W.detach().to(dtype)
    out = metrics_from_singular_values(torch.linalg.svdvals(X), min(X.shape[-2:]))
    out["max_norm"] = X.abs().amax(dim=(-2, -1))
    return out


def lowrank_spectral_metrics(B: Tensor, A: Tensor, scale: float = 1.0,
                             dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """:func:`spectral_metrics` of ``scale·B@A`` for B (..., m, r), A (..., r, n), without an
    m×n SVD: with B = Q_B R_B and Aᵀ = Q_A R_A (thin QR), BA = Q_B (R_B R_Aᵀ) Q_Aᵀ has the
    singular values of the r×r core R_B R_Aᵀ. Only the max-norm forms the product."""
    Bd, Ad = B.detach().to(dtype), A.detach().to(dtype)
    rb = torch.linalg.qr(Bd, mode="r").R
    ra = torch.linalg.qr(Ad.mT, mode="r").R
    s = torch.linalg.svdvals(rb @ ra.mT) * abs(scale)
    out = metrics_from_singular_values(s, min(B.shape[-2], A.shape[-1]))
    out["max_norm"] = (Bd @ Ad).abs().amax(dim=(-2, -1)) * abs(scale)
    return out


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op CPU threads (``None``: leave the setting alone).

    Diagnostics default to 1: LAPACK SVDs of matrices this small gain little from threads,
    and on a shared, loaded CPU OpenMP threads waiting for each other make them 10-100×
    slower (tiny GPT, 2 cores under load: 0.2 s with 1 thread, 0.5-22 s with 2).
    """
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def as_matrix(t: Tensor) -> Tensor:
    """A ≥2-D tensor as (out, rest): conv kernels become (out_channels, in·kh·kw)."""
    return t if t.ndim == 2 else t.reshape(t.shape[0], -1)


def batched_spectral_metrics(
    mats: Mapping[str, Tensor], dtype: torch.dtype = torch.float32, threads: int | None = 1
) -> dict[str, dict[str, float]]:
    """Spectral metrics per named matrix, with one ``svdvals`` call per distinct shape
    (run with ``threads`` CPU threads, see :func:`torch_threads`)."""
    by_shape: dict[tuple[int, ...], list[str]] = defaultdict(list)
    for n, m in mats.items():
        by_shape[tuple(m.shape)].append(n)
    out: dict[str, dict[str, float]] = {}
    for names in by_shape.values():
        with torch_threads(threads):
            res = spectral_metrics(torch.stack([mats[n].detach() for n in names]), dtype)
        cols = {k: v.tolist() for k, v in res.items()}
        for i, n in enumerate(names):
            out[n] = {k: float(cols[k][i]) for k in SPECTRAL_KEYS}
    return out


def group_names(names: Iterable[str]) -> dict[str, list[str]]:
    """Names by :func:`layer_group`, plus ``overall`` holding all of them."""
    groups: dict[str, list[str]] = defaultdict(list)
    names = list(names)
    for n in names:
        groups[layer_group(n)].append(n)
    groups["overall"] = names
    return dict(groups)


def mean_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    """Key-wise mean of metric rows (the per-group aggregation of spectral metrics)."""
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def drift(names: Iterable[str], now: Mapping[str, Tensor],
          init: Mapping[str, Tensor]) -> dict[str, float]:
    """Relative L2 drift ‖W − W₀‖/‖W₀‖ and cosine(W, W₀) over the concatenation of ``names``.

    Sums of squares and inner products are accumulated in float64 over all named tensors, then
    divided once (a size-weighted aggregate, not a mean of per-parameter ratios).
    """
    diff2 = dot = a2 = b2 = 0.0
    for n in names:
        w = now[n].detach().reshape(-1).double()
        w0 = init[n].detach().reshape(-1).to(w.device, torch.float64)
        diff2 += float((w - w0).square().sum())
        dot += float(w @ w0)
        a2 += float(w @ w)
        b2 += float(w0 @ w0)
    l2 = math.sqrt(diff2 / b2) if b2 > 0 else (0.0 if diff2 == 0 else math.inf)
    cos = dot / math.sqrt(a2 * b2) if a2 > 0 and b2 > 0 else math.nan
    return {"l2_drift": l2, "cosine_to_init": cos}


def parameter_drift(now: Mapping[str, Tensor],
                    init: Mapping[str, Tensor]) -> dict[str, dict[str, float]]:
    """:func:`drift` of every parameter of ``now`` that ``init`` also has, by name."""
    return {n: drift([n], now, init) for n in now if n in init}


def weight_diagnostics(
    now: Mapping[str, Tensor], init: Mapping[str, Tensor] | None = None, *,
    update: bool = False, dtype: torch.dtype = torch.float32, threads: int | None = 1,
) -> dict[str, dict[str, float]]:
    """Per-layer-group metrics of the ≥2-D parameters in ``now`` (name → tensor).

    Returns ``{group: {stable_rank, spectral_entropy, spectral_norm, max_norm[, l2_drift,
    cosine_to_init]}}`` with an ``overall`` entry; drift keys appear when ``init`` (the
    pretrained weights) is given. With ``update=True`` the spectral metrics are those of the
    update ΔW = W − W₀ (the record's ``diagnostics_update``) instead of W. Groups come from
    :func:`muonft.diagnostics.layer_group`; aggregation rules are in the module docstring.
    The SVDs run with ``threads`` CPU threads (default 1, see :func:`torch_threads`).
    """
    if update and init is None:
        raise ValueError("update=True needs the initial weights: pass init=")
    if init is not None:
        missing = [n for n, t in now.items() if t.ndim >= 2 and n not in init]
        if missing:
            raise ValueError(f"init has no tensor for {missing[0]!r} (and {len(missing) - 1} "
                             f"more); pass the pretrained weights under the same names")
    mats = {n: as_matrix(t.detach()) for n, t in now.items() if t.ndim >= 2}
    if not mats:
        raise ValueError("no ≥2-D parameter to diagnose")
    out: dict[str, dict[str, float]] = {}
    with torch_threads(threads):
        if update:
            assert init is not None
            mats = {n: m - as_matrix(init[n].detach()).to(m.device, m.dtype)
                    for n, m in mats.items()}
        per = batched_spectral_metrics(mats, dtype, None)
        for g, names in group_names(mats).items():
            row = mean_rows([per[n] for n in names])
            if init is not None:
                row |= drift(names, now, init)
            out[g] = row
    return out
