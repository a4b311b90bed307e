"""The Muon optimizer, with AdamW param groups, as one ``torch.optim.Optimizer``.

A Muon step for a group is a pipeline of small pure functions, each tested alone:

    momentum (ema | sum, Nesterov or not) → orthogonalize (batched by shape)
        → scale (named rule) → decoupled weight decay → apply [→ project onto drift ball]

Constrained variants, per group (see :mod:`muonft.optim.constrained`): ``update_rank`` replaces
the orthogonalization by its rank-r part with error feedback, ``lora_muon="joint"`` steps LoRA
factor pairs jointly, ``max_drift`` projects each matrix back onto a ball around its first-step
value.

Groups tagged ``use_muon=False`` get decoupled AdamW through torch's own functional
implementation (foreach), so the non-matrix parameters of a model train exactly as with
``torch.optim.AdamW``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim.adam import adam as _adam_functional

from muonft.optim.constrained import (
    LOW_RANK_FIRST_STEP_ITERS,
    initial_basis,
    joint_lora_directions,
    low_rank_orthogonal_step,
    project_to_drift_ball,
    work_dtype,
)
from muonft.optim.distributed import (
    distributed_orthogonalize,
    is_sharded,
    local_shard,
    replicated_orthogonalize,
    shard_group,
    sharded_orthogonalize,
    world,
)
from muonft.optim.orthogonalize import ORTHOGONALIZERS, AutoPolicy, orthogonalize_raw
from muonft.optim.scale import LORA_BALANCED, lora_balanced_scale

ScaleRule = Callable[[int, int], float]

SCALE_RULES: dict[str, ScaleRule] = {
    # Keller Jordan's rule: unit spectral norm update, boosted for tall matrices.
    "spectral": lambda m, n: math.sqrt(max(1.0, m / n)),
    # Moonshot's rule: the update's RMS matches AdamW's typical 0.2, so one lr serves both.
    "match_adamw_rms": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "none": lambda m, n: 1.0,
    # Equal update RMS 1/√r for both LoRA factors A (r×d) and B (d×r) (muonft.optim.scale).
    LORA_BALANCED: lora_balanced_scale,
}

MOMENTUM_STYLES = ("ema", "sum")
LORA_MUON_MODES = ("independent", "joint")
# State entries whose dtype is not the parameter's: torch's load_state_dict would cast them.
_OWN_DTYPE_STATE = ("lowrank_basis", "drift_anchor_norm", "drift_binds", "drift_checks")
STACK_CPU_MAX_NUMEL = 512 * 512


class UnsupportedParameterError(ValueError, RuntimeError):
    """A parameter Muon cannot optimize (complex). A ValueError like every other bad argument
    here, and a RuntimeError, the type torch.optim.Muon raises for the same case."""


def register_scale_rule(name: str, rule: ScaleRule) -> None:
    """Register an update-scale rule ``rule(m, n) -> float`` for (out, in)-shaped matrices."""
    if not callable(rule):
        raise ValueError(f"scale rule {name!r} must be callable")
    SCALE_RULES[name] = rule


def update_scale(rule: str, shape: tuple[int, int]) -> float:
    """Multiplier of the orthogonalized update for a matrix of ``shape`` = (out, in)."""
    try:
        return SCALE_RULES[rule](*shape)
    except KeyError:
        raise ValueError(
            f"unknown scale rule {rule!r}; choose one of {', '.join(sorted(SCALE_RULES))}"
        ) from None


def as_matrix(t: Tensor) -> Tensor:
    """View a ≥2-D tensor as (out, rest): conv kernels become (out_channels, in·kh·kw)."""
    return t if t.ndim == 2 else t.reshape(t.shape[0], -1)


def momentum_update(
    bufs: list[Tensor], grads: list[Tensor], momentum: float, style: str, nesterov: bool
) -> list[Tensor]:
    """Update momentum buffers in place and return the directions to orthogonalize.

    ``ema``: B ← μB + (1−μ)g, direction g + μ(B − g) (Nesterov) or B.
    ``sum``: B ← μB + g, direction g + μB (Nesterov) or B.
    The returned tensors are fresh when Nesterov is on; with Nesterov off they *are* the
    buffers, so every consumer must treat them as read-only.
    """
    if style == "ema":
        torch._foreach_lerp_(bufs, grads, 1 - momentum)
        if nesterov:
            return list(torch._foreach_lerp(grads, bufs, momentum))
    else:
        torch._foreach_mul_(bufs, momentum)
        torch._foreach_add_(bufs, grads)
        if nesterov:
            return torch._foreach_add(grads, bufs, alpha=momentum)
    return list(bufs)


def orthogonalize_batched(
    directions: list[Tensor],
    method: str,
    steps: int,
    dtype: torch.dtype | None,
    auto: AutoPolicy | None = None,
    stack: bool | None = None,
) -> list[Tensor]:
    """Orthogonalize each direction (viewed as a matrix); same-shape ones share one call.

    Matrices that are stacked are grouped by (wide shape, dtype, device) — a tall (m > n)
    matrix is transposed into the bucket of its wide twin, so MLP in- and out-projections share
    one batched call — and each bucket is one stacked call. Everything is stacked on
    accelerators; on CPU only small matrices are (large 2-D GEMMs are as fast as batched ones
    there, so stacking them only adds copies; measured).
    Inputs are never modified. Returns one tensor per input, shaped like it, in the compute
    dtype (the caller's in-place add promotes). ``stack`` forces (True) or forbids (False)
    stacking; None decides by device.
    """
    orth = auto if method == "auto" else None

    def stacked(d: Tensor) -> bool:
        if stack is not None:
            return stack
        # CPU: small matrices (LoRA factors) are overhead-bound and gain from one batched call;
        # large ones are GEMM-bound and stacking them only adds copies (measured).
        return d.device.type != "cpu" or as_matrix(d).numel() < STACK_CPU_MAX_NUMEL

    def run(M: Tensor) -> Tensor:
        if orth is not None:
            return orth(M, steps=steps, dtype=dtype)
        return orthogonalize_raw(M, method, steps, dtype)

    out: list[Tensor | None] = [None] * len(directions)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, d in enumerate(directions):
        if not stacked(d):
            out[i] = run(as_matrix(d)).reshape(d.shape)
            continue
        m, n = as_matrix(d).shape
        buckets[(min(m, n), max(m, n), d.dtype, d.device)].append(i)
    for idx in buckets.values():
        mats = []
        for i in idx:
            M = as_matrix(directions[i])
            mats.append(M.mT if M.shape[0] > M.shape[1] else M)
        U = run(torch.stack(mats))
        for j, i in enumerate(idx):
            d = directions[i]
            tall = as_matrix(d).shape[0] > as_matrix(d).shape[1]
            out[i] = (U[j].mT if tall else U[j]).reshape(d.shape)
    return out  # type: ignore[return-value]


def error_feedback_momentum(
    bufs: list[Tensor], grads: list[Tensor], momentum: float, style: str, nesterov: bool
) -> list[Tensor]:
    """Accumulate gradients into error-feedback buffers in place; return the directions.

    The buffer E holds what has not been applied yet: M ← E + c·g with c = 1 − μ (``ema``) or
    1 (``sum``); the direction is M, or the Nesterov look-ahead g + μ(M − g) (``ema``) /
    g + μM (``sum``). The caller later removes (1 − μ) of the *applied* part of M, so with a
    full-rank update E = μM and M follows exactly the recursion of :func:`momentum_update`.
    """
    torch._foreach_add_(bufs, grads, alpha=(1 - momentum) if style == "ema" else 1.0)
    if nesterov:
        if style == "ema":
            return list(torch._foreach_lerp(grads, bufs, momentum))
        return list(torch._foreach_add(grads, bufs, alpha=momentum))
    return list(bufs)


def _wide(t: Tensor) -> Tensor:
    M = as_matrix(t)
    return M.mT if M.shape[0] > M.shape[1] else M


def low_rank_update_batched(
    bufs: list[Tensor],
    directions: list[Tensor],
    bases: list[Tensor | None],
    seeds: list[int],
    rank: int,
    momentum: float,
) -> tuple[list[Tensor], list[Tensor]]:
    """Rank-``rank`` orthogonalized updates of ``directions`` (see
    :func:`muonft.optim.constrained.low_rank_orthogonal_step`), batched by wide shape.

    Applies the error-feedback correction E ← M − (1 − μ)·P PᵀM to ``bufs`` in place (after the
    updates are computed). ``bases`` are the previous steps' (n, r) bases in the wide
    orientation, or None for a matrix's first step (a random basis from ``seeds``, and
    :data:`LOW_RANK_FIRST_STEP_ITERS` extra power iterations for its bucket). Returns the
    updates (fp32, shaped like the directions) and the new bases.
    """
    out: list[Tensor | None] = [None] * len(directions)
    new_bases: list[Tensor | None] = [None] * len(directions)
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, d in enumerate(directions):
        m, n = as_matrix(d).shape
        buckets[(min(m, n), max(m, n), d.dtype, d.device)].append(i)
    for (_, n, dt, dev), idx in buckets.items():
        wdt = work_dtype(dt)
        D = torch.stack([_wide(directions[i]) for i in idx]).to(wdt)
        aliased = all(directions[i] is bufs[i] for i in idx)
        M = D if aliased else torch.stack([_wide(bufs[i]) for i in idx]).to(wdt)
        fresh = any(bases[i] is None for i in idx)
        Q = torch.stack([
            bases[i].to(wdt) if bases[i] is not None else initial_basis(n, rank, wdt, dev, seeds[i])
            for i in idx
        ])
        O, P, PtM, Qn = low_rank_orthogonal_step(
            M, D, Q, iters=1 + (LOW_RANK_FIRST_STEP_ITERS if fresh else 0))
        for j, i in enumerate(idx):
            d = directions[i]
            tall = as_matrix(d).shape[0] > as_matrix(d).shape[1]
            out[i] = (O[j].mT if tall else O[j]).reshape(d.shape)
            new_bases[i] = Qn[j].clone()
        for j, i in enumerate(idx):  # only now: with Nesterov off the directions are the buffers
            E = _wide(bufs[i])
            if E.dtype == wdt:
                E.addmm_(P[j], PtM[j], alpha=-(1 - momentum))
            else:
                E.sub_(P[j] @ PtM[j], alpha=1 - momentum)
    return out, new_bases  # type: ignore[return-value]


def joint_lora_update_batched(
    params: list[Tensor], directions: list[Tensor], pairs: list[tuple[int, int]]
) -> dict[int, Tensor]:
    """Joint factor updates for LoRA pairs (indices (i_A, i_B) into ``params``/``directions``),
    batched by (r, out, in); see :func:`muonft.optim.constrained.joint_lora_directions`.
    Returns {index: update} for every A and B (fp32, shaped like the parameter)."""
    buckets: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for ia, ib in pairs:
        A, B = params[ia], params[ib]
        buckets[(A.shape, B.shape, A.dtype, A.device)].append((ia, ib))
    out: dict[int, Tensor] = {}
    for (_, _, dt, _), prs in buckets.items():
        wdt = work_dtype(dt)
        A = torch.stack([params[ia] for ia, _ in prs]).to(wdt)
        B = torch.stack([params[ib] for _, ib in prs]).to(wdt)
        MA = torch.stack([directions[ia] for ia, _ in prs]).to(wdt)
        MB = torch.stack([directions[ib] for _, ib in prs]).to(wdt)
        dA, dB = joint_lora_directions(A, B, MA, MB)
        for j, (ia, ib) in enumerate(prs):
            out[ia], out[ib] = dA[j], dB[j]
    return out


def apply_decay_and_update(
    params: list[Tensor], updates: list[Tensor], lr: float, weight_decay: float, scales: list[float]
) -> None:
    """θ ← θ(1 − lr·λ) − lr·s·U, decoupled decay first (torch.optim.Muon's order)."""
    if weight_decay != 0.0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    for p, u, s in zip(params, updates, scales):
        p.add_(u, alpha=-lr * s)


class Muon(torch.optim.Optimizer):
    """Muon for matrices plus decoupled AdamW for everything else, in one optimizer.

    ``params`` is an iterable of tensors (all treated as Muon matrices, each must be ≥2-D) or of
    param-group dicts carrying ``use_muon`` (see :func:`muonft.optim.muon_param_groups`). Any
    keyword below may be overridden per group. With ``momentum_style="ema"``, ``nesterov=True``,
    ``orthogonalizer="ns5"`` and ``scale="match_adamw_rms"`` the update equals
    ``torch.optim.Muon(..., adjust_lr_fn="match_rms_adamw")``.

    Args:
        lr: learning rate of Muon groups (and AdamW groups unless ``adamw_lr`` is given).
        momentum: μ ∈ [0, 1). momentum_style: ``"ema"`` (B ← μB + (1−μ)g) or ``"sum"``.
        nesterov: use the look-ahead direction. weight_decay: decoupled, θ ← θ(1 − lr·λ).
        orthogonalizer: one of ``ns5, polar_express, gram_ns, gram_polar_express, exact,
            exact_thin, svd, auto``. ns_steps / ns_dtype: iterations and compute dtype.
        scale: update-scale rule name (``match_adamw_rms``, ``spectral``, ``none`` or one added
            with :func:`register_scale_rule`).
        adamw_lr, adamw_betas, adamw_eps: AdamW hyper-parameters of ``use_muon=False`` groups.
        update_rank: None (plain Muon) or r ≥ 1: each matrix with min(m, n) > r is moved by the
            rank-r orthogonalized direction of its momentum (one power iteration warm-started
            from the previous step's basis, kept in state as ``lowrank_basis``; the part not
            applied stays in the momentum buffer — error feedback as in Dion). Computed in
            fp32 whatever ``ns_dtype``. Matrices with min(m, n) ≤ r take the plain Muon path,
            so r ≥ min(m, n) *is* plain Muon. Same scale rule as plain Muon.
        max_drift: None or ρ > 0: after each step project every matrix of the group back onto
            ‖W − W₀‖_F ≤ ρ‖W₀‖_F, W₀ being its value before its first step (kept in state as
            ``drift_anchor``, one copy of the weights). ``inf`` is plain Muon, bit for bit.
            How often it binds: :meth:`constraint_stats`. Ignored by AdamW groups. Meant for
            full weights: a matrix whose W₀ is zero (LoRA's B at init) stays pinned at zero.
        lora_muon: ``"independent"`` (default: A and B are orthogonalized as two matrices) or
            ``"joint"``: each LoRA pair in ``lora_pairs`` is stepped so that the induced
            ΔW = B·dA + dB·A is orthogonalized with spectral norm lr·scale(out, in) (see
            :func:`muonft.optim.constrained.joint_lora_directions`).
        lora_pairs: (A, B) tensor pairs (A: r×in, B: out×r), e.g.
            :func:`muonft.adapters.lora_pairs`; each pair goes to the group holding both
            tensors (a group dict may also carry its own ``lora_pairs``). Stored per group as
            index pairs into the group's ``params``, so they survive ``state_dict``.
        distributed: under an initialised ``torch.distributed`` group of W > 1 ranks (DDP:
            every rank holds the same gradients), split the plain-Muon orthogonalization
            across ranks — each matrix is orthogonalized by one owner rank and one
            ``all_gather`` shares the results (:mod:`muonft.optim.distributed`), so per-rank
            work falls to ≈ 1/W. Every rank must call ``step()`` (it is a collective).
            ``orthogonalized_here`` counts the matrices this process orthogonalized.
            FSDP2-sharded parameters (DTensors from ``fully_shard``) are detected: each
            matrix's row shards are gathered to its owner, orthogonalized there and scattered
            back (:func:`muonft.optim.distributed.sharded_orthogonalize`); momentum and AdamW
            state stay sharded; scale rules use the full shape. ``distributed=False`` then
            makes every rank orthogonalize every matrix. The constrained variants
            (``update_rank``, ``lora_muon="joint"``, ``max_drift``) need unsharded weights.

    The ``torch.optim.Optimizer`` contract holds (``state_dict``/``load_state_dict``,
    ``add_param_group`` with the constructor's defaults, ``zero_grad``, closures, hooks,
    ``deepcopy``/pickle/``torch.save`` round trips that step bit-identically, a 1-element
    Tensor ``lr``; tests/optim/test_torch_contract.py). Deliberate differences from
    ``torch.optim.Muon``: ≥3-D parameters are accepted and flattened to (out, rest) instead
    of rejected; complex parameters fail at construction (with an error that is both a
    ValueError and torch's RuntimeError), not at the first step; ``orthogonalizer`` names a
    method instead of ``ns_coefficients``/``eps``; ``scale`` replaces ``adjust_lr_fn``
    (``"spectral"`` = torch's ``"original"``); momentum must be < 1; the defaults differ
    (lr 0.02, weight_decay 0, Polar Express, ``match_adamw_rms``); non-matrix parameters
    may live in ``use_muon=False`` AdamW groups of the same optimizer.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        momentum_style: str = "ema",
        weight_decay: float = 0.0,
        orthogonalizer: str = "polar_express",
        ns_steps: int = 5,
        ns_dtype: torch.dtype | None = torch.bfloat16,
        scale: str = "match_adamw_rms",
        adamw_lr: float | None = None,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        update_rank: int | None = None,
        max_drift: float | None = None,
        lora_muon: str = "independent",
        lora_pairs: Iterable[tuple[Tensor, Tensor]] | None = None,
        distributed: bool = True,
    ) -> None:
        self.distributed = bool(distributed)
        self.orthogonalized_here = 0
        self._adamw_lr = adamw_lr
        self._auto = AutoPolicy()
        if isinstance(params, Tensor) or params is None:
            # torch.optim.Optimizer's contract; list(W) would silently split W into its rows.
            got = torch.typename(params) if params is not None else "None"
            raise TypeError(f"params must be an iterable of tensors or of param-group dicts, "
                            f"got {got}; pass [W] for a single tensor")
        params = list(params)
        if not params:
            raise ValueError("Muon got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        groups = [self._with_muon_defaults(g) for g in params]
        _assign_lora_pairs(groups, list(lora_pairs) if lora_pairs is not None else [])
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, momentum_style=momentum_style,
            weight_decay=weight_decay, orthogonalizer=orthogonalizer, ns_steps=ns_steps,
            ns_dtype=ns_dtype, scale=scale, betas=adamw_betas, eps=adamw_eps,
            update_rank=update_rank, max_drift=max_drift, lora_muon=lora_muon, lora_pairs=None,
        )
        super().__init__(groups, defaults)
        joint = [g for g in self.param_groups if g["use_muon"] and g["lora_muon"] == "joint"]
        if joint and not any(g["lora_pairs"] for g in joint):
            raise ValueError(
                "lora_muon='joint' needs the LoRA factor pairs: pass "
                "lora_pairs=muonft.adapters.lora_pairs(model)"
            )

    def _with_muon_defaults(self, group: Any) -> dict[str, Any]:
        """A copy of a param-group dict with what only Muon adds to torch's defaults: the
        ``use_muon`` tag (True) and, for AdamW groups without their own lr, ``adamw_lr``."""
        if not isinstance(group, dict):
            raise TypeError(f"a param group must be a dict, got {type(group).__name__}")
        g = dict(group)
        if isinstance(g.get("params"), Tensor):
            g["params"] = [g["params"]]
        elif "params" in g and not isinstance(g["params"], set):  # torch rejects sets
            g["params"] = list(g["params"])  # a generator must survive two passes
        g.setdefault("use_muon", True)
        if not g["use_muon"] and "lr" not in g and self._adamw_lr is not None:
            g["lr"] = self._adamw_lr
        return g

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group (torch's contract), defaults filled as in the constructor; a group that
        fails validation is not added."""
        group = self._with_muon_defaults(param_group)
        before = len(self.param_groups)
        super().add_param_group(group)
        try:
            added = self.param_groups[-1]
            added["lora_pairs"] = _index_lora_pairs(added)
            _validate_group(added)
        except Exception:
            del self.param_groups[before:]
            raise

    # torch pickles only defaults/state/param_groups (Optimizer.__getstate__); the attributes
    # below must travel too, or a deepcopy/torch.load'ed Muon cannot step.
    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(distributed=self.distributed, orthogonalized_here=self.orthogonalized_here,
                     _adamw_lr=self._adamw_lr, _auto=self._auto)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # a pickle written before these attributes travelled: their constructor defaults
        self.__dict__.setdefault("distributed", True)
        self.__dict__.setdefault("orthogonalized_here", 0)
        self.__dict__.setdefault("_adamw_lr", None)
        if "_auto" not in self.__dict__:
            self._auto = AutoPolicy()
        # load_state_dict comes through here too: an AdamW step saved as a number (old
        # checkpoints, hand-edited dicts) must become the tensor torch's adam kernel expects.
        for st in self.state.values():
            if "step" in st and not torch.is_tensor(st["step"]):
                st["step"] = torch.tensor(float(st["step"]))

    def constraint_stats(self) -> dict[str, float | int]:
        """What the constraints did so far, over all Muon matrices: ``drift_checks`` (matrix
        steps under a finite ``max_drift``), ``drift_binds`` (of those, projected back onto the
        ball), ``drift_bind_rate``, ``drift_max`` (largest current ‖W − W₀‖_F/‖W₀‖_F) and
        ``low_rank_matrices`` (matrices stepped by the rank-``update_rank`` path). Synchronises
        with the device; call it at logging time, not every step."""
        checks = binds = low = 0
        drift_max = 0.0
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p, {})
                if "lowrank_basis" in st:
                    low += 1
                if "drift_anchor" in st:
                    checks += int(st["drift_checks"])
                    binds += int(st["drift_binds"])
                    ref = float(st["drift_anchor_norm"])
                    diff = (p.detach() - st["drift_anchor"]).float()
                    dist = float(torch.linalg.vector_norm(diff))
                    ratio = dist / ref if ref > 0 else (math.inf if dist > 0 else 0.0)
                    drift_max = max(drift_max, ratio)
        return {"drift_checks": checks, "drift_binds": binds,
                "drift_bind_rate": binds / checks if checks else 0.0, "drift_max": drift_max,
                "low_rank_matrices": low}

    @property
    def auto_choices(self) -> dict[str, dict]:
        """What ``orthogonalizer="auto"`` picked so far, per shape key: method, steps, measured
        seconds and mean |σ−1| next to NS5's. Empty until an ``auto`` group has stepped; record
        it with results, since the choice is made by timing on the machine that runs."""
        return self._auto.export()

    # torch stores only param_groups/state; the auto decisions ride along in the first group.
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self._auto.choices:
            sd["param_groups"][0]["auto_choices"] = self._auto.export()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        choices = state_dict["param_groups"][0].get("auto_choices") if state_dict[
            "param_groups"] else None
        super().load_state_dict(state_dict)
        if choices:
            self._auto.load(choices)
        # torch casts every floating parameter's state to the parameter's dtype; counters and
        # fp32 bases must keep theirs (a bf16 counter stops counting at 256).
        ids = [i for g in state_dict["param_groups"] for i in g["params"]]
        live = [p for g in self.param_groups for p in g["params"]]
        for i, p in zip(ids, live):
            saved = state_dict["state"].get(i, {})
            for key in _OWN_DTYPE_STATE:
                if key in saved:
                    self.state[p][key] = saved[key].to(device=p.device, copy=True)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Perform one optimization step (Muon groups, then AdamW groups)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            if group["use_muon"]:
                self._muon_group_step(group, gi)
            else:
                self._adamw_group_step(group)
        return loss

    def _params_with_grad(self, group: dict[str, Any]) -> list[Tensor]:
        out = []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("Muon does not support sparse gradients")
            out.append(p)
        return out

    def _muon_group_step(self, group: dict[str, Any], gi: int) -> None:
        params = self._params_with_grad(group)
        if not params:
            return
        if any(is_sharded(p) for p in params):  # FSDP2: DTensor row shards
            self._sharded_muon_step(group, params)
            return
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(st["momentum_buffer"])
        drift = group["max_drift"]
        if drift is not None and not math.isinf(drift):
            self._snapshot_drift_anchors(params)
        pairs = self._active_lora_pairs(group, params)
        rank = group["update_rank"]
        paired = {i for pr in pairs for i in pr}
        low = [i for i, p in enumerate(params) if rank is not None and i not in paired
               and rank < min(as_matrix(p).shape)]
        mom = (group["momentum"], group["momentum_style"], group["nesterov"])
        ortho = (group["orthogonalizer"], group["ns_steps"], group["ns_dtype"], self._auto)
        scales = [update_scale(group["scale"], tuple(as_matrix(p).shape)) for p in params]
        if not low and not pairs:  # plain Muon: exactly the original pipeline
            directions = momentum_update(bufs, grads, *mom)
            updates = self._orthogonalize(directions, ortho)
        else:
            lowset = set(low)
            rest = [i for i in range(len(params)) if i not in lowset]
            directions: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
            updates: list[Tensor] = [None] * len(params)  # type: ignore[list-item]
            if rest:
                for i, d in zip(rest, momentum_update([bufs[i] for i in rest],
                                                      [grads[i] for i in rest], *mom)):
                    directions[i] = d
            plain = [i for i in rest if i not in paired]
            if plain:
                for i, u in zip(plain,
                                self._orthogonalize([directions[i] for i in plain], ortho)):
                    updates[i] = u
            if pairs:
                updates_joint = joint_lora_update_batched(params, directions, pairs)
                for i, u in updates_joint.items():
                    updates[i] = u
                for ia, ib in pairs:
                    shape = (params[ib].shape[0], params[ia].shape[1])
                    scales[ia] = scales[ib] = update_scale(group["scale"], shape)
            if low:
                self._low_rank_updates(group, gi, params, grads, bufs, low, updates)
        apply_decay_and_update(params, updates, float(group["lr"]), group["weight_decay"], scales)
        if drift is not None and not math.isinf(drift):
            sts = [self.state[p] for p in params]
            for st in sts:
                st["drift_checks"].add_(1)
            project_to_drift_ball(params, [st["drift_anchor"] for st in sts],
                                  [drift * st["drift_anchor_norm"] for st in sts],
                                  [st["drift_binds"] for st in sts])

    def _orthogonalize(self, directions: list[Tensor], ortho: tuple) -> list[Tensor]:
        """Batched orthogonalization, split across ranks when ``distributed`` applies."""
        def local(ds: list[Tensor]) -> list[Tensor]:
            self.orthogonalized_here += len(ds)
            return orthogonalize_batched(ds, *ortho)

        if self.distributed and world()[1] > 1:
            return distributed_orthogonalize(directions, local)
        return local(directions)

    def _sharded_muon_step(self, group: dict[str, Any], params: list[Tensor]) -> None:
        """Plain Muon on FSDP2-sharded matrices (DTensors, rows split across ranks).

        Momentum, decay and apply are elementwise, so they act on this rank's shards (the
        momentum stays sharded); each matrix is orthogonalized whole by one owner rank
        (:func:`muonft.optim.distributed.sharded_orthogonalize`; with ``distributed=False``
        every rank gathers and orthogonalizes every matrix), and the scale rule sees the full
        shape."""
        rank, drift = group["update_rank"], group["max_drift"]
        if not all(is_sharded(p) for p in params):
            raise ValueError("a Muon group mixes sharded (DTensor) and plain parameters; "
                             "shard the whole model with fully_shard, or none of it")
        if (rank is not None and any(rank < min(as_matrix(p).shape) for p in params)) or \
                (group["lora_muon"] == "joint" and group["lora_pairs"]) or \
                (drift is not None and not math.isinf(drift)):
            raise ValueError("update_rank, lora_muon='joint' and max_drift are not supported on "
                             "FSDP2-sharded parameters; use DDP (replicated parameters)")
        bufs = []
        for p in params:
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p)
            bufs.append(local_shard(st["momentum_buffer"]))
        directions = momentum_update(bufs, [local_shard(p.grad) for p in params],
                                     group["momentum"], group["momentum_style"],
                                     group["nesterov"])
        ortho = (group["orthogonalizer"], group["ns_steps"], group["ns_dtype"], self._auto)

        def local(ds: list[Tensor]) -> list[Tensor]:
            self.orthogonalized_here += len(ds)
            return orthogonalize_batched(ds, *ortho)

        if self.distributed:
            updates = sharded_orthogonalize(directions, [p.shape for p in params], local,
                                            shard_group(params))
        else:
            updates = replicated_orthogonalize(directions, params, local)
        scales = [update_scale(group["scale"], tuple(as_matrix(p).shape)) for p in params]
        apply_decay_and_update([local_shard(p) for p in params], updates, float(group["lr"]),
                               group["weight_decay"], scales)

    def _low_rank_updates(self, group: dict[str, Any], gi: int, params: list[Tensor],
                          grads: list[Tensor], bufs: list[Tensor], low: list[int],
                          updates: list[Tensor]) -> None:
        """Fill ``updates[i]`` for the rank-``update_rank`` matrices ``low`` (in place)."""
        pos = {id(p): k for k, p in enumerate(group["params"])}
        sts = [self.state[params[i]] for i in low]
        dirs = error_feedback_momentum([bufs[i] for i in low], [grads[i] for i in low],
                                       group["momentum"], group["momentum_style"],
                                       group["nesterov"])
        seeds = [1_000_003 * gi + pos[id(params[i])] for i in low]
        outs, bases = low_rank_update_batched(
            [bufs[i] for i in low], dirs, [st.get("lowrank_basis") for st in sts], seeds,
            group["update_rank"], group["momentum"])
        for i, st, u, q in zip(low, sts, outs, bases):
            updates[i] = u
            st["lowrank_basis"] = q

    def _snapshot_drift_anchors(self, params: list[Tensor]) -> None:
        for p in params:
            st = self.state[p]
            if "drift_anchor" not in st:
                st["drift_anchor"] = p.detach().clone(memory_format=torch.preserve_format)
                st["drift_anchor_norm"] = torch.linalg.vector_norm(p.detach().float())
                st["drift_binds"] = torch.zeros((), dtype=torch.int64, device=p.device)
                st["drift_checks"] = torch.zeros((), dtype=torch.int64, device=p.device)

    def _active_lora_pairs(self, group: dict[str, Any], params: list[Tensor]
                           ) -> list[tuple[int, int]]:
        """The group's LoRA pairs as indices into ``params`` (both factors with a gradient)."""
        if group["lora_muon"] != "joint" or not group["lora_pairs"]:
            return []
        where = {id(p): k for k, p in enumerate(params)}
        out = []
        for ia, ib in group["lora_pairs"]:
            a, b = id(group["params"][ia]), id(group["params"][ib])
            if a in where and b in where:
                out.append((where[a], where[b]))
        return out

    def _adamw_group_step(self, group: dict[str, Any]) -> None:
        params = self._params_with_grad(group)
        if not params:
            return
        exp_avgs, exp_avg_sqs, steps = [], [], []
        for p in params:
            st = self.state[p]
            if "step" not in st:
                st["step"] = torch.tensor(0.0)
                st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            exp_avgs.append(local_shard(st["exp_avg"]))
            exp_avg_sqs.append(local_shard(st["exp_avg_sq"]))
            steps.append(st["step"])
        beta1, beta2 = group["betas"]
        # elementwise, so FSDP2 shards (DTensors) step as their local tensors
        params, grads = [local_shard(p) for p in params], [local_shard(p.grad) for p in params]
        _adam_functional(
            params, grads, exp_avgs, exp_avg_sqs, [], steps,
            foreach=True, decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
            lr=float(group["lr"]), weight_decay=group["weight_decay"], eps=group["eps"],
            maximize=False,
        )


def _assign_lora_pairs(groups: list[dict[str, Any]], pairs: list[tuple[Tensor, Tensor]]
                       ) -> None:
    """Append each (A, B) pair to the ``lora_pairs`` of the group that holds both tensors."""
    for pair in pairs:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2
                and all(isinstance(t, Tensor) for t in pair)):
            raise ValueError(f"lora_pairs entries must be (A, B) tensor pairs, got {pair!r}")
        homes = [next((k for k, g in enumerate(groups) if any(t is q for q in g["params"])), None)
                 for t in pair]
        if homes[0] is None or homes[1] is None:
            raise ValueError(
                f"lora_pairs: a factor of shape {tuple(pair[homes.index(None)].shape)} is not "
                f"among the optimizer's parameters"
            )
        if homes[0] != homes[1]:
            raise ValueError(
                f"lora_pairs: A {tuple(pair[0].shape)} and B {tuple(pair[1].shape)} are in "
                f"different param groups ({homes[0]} and {homes[1]}); put both in one group"
            )
        g = groups[homes[0]]
        g["lora_pairs"] = [*(g.get("lora_pairs") or []), tuple(pair)]


def _index_lora_pairs(group: dict[str, Any]) -> list[tuple[int, int]]:
    """A group's ``lora_pairs`` as (i_A, i_B) positions in ``group["params"]``, validated:
    A is r×in, B is out×r with the same r, and no factor is in two pairs."""
    params = group["params"]
    out: list[tuple[int, int]] = []
    for pair in group.get("lora_pairs") or []:
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"lora_pairs entries must be (A, B) pairs, got {pair!r}")
        idx = []
        for t in pair:
            if isinstance(t, Tensor):
                k = next((k for k, q in enumerate(params) if q is t), None)
                if k is None:
                    raise ValueError(f"lora_pairs: a factor of shape {tuple(t.shape)} is not in "
                                     f"this param group")
            elif isinstance(t, int) and not isinstance(t, bool) and 0 <= t < len(params):
                k = t
            else:
                raise ValueError(f"lora_pairs: {t!r} is neither a tensor of the group nor an "
                                 f"index below {len(params)}")
            idx.append(k)
        A, B = params[idx[0]], params[idx[1]]
        if A.ndim != 2 or B.ndim != 2 or A.shape[0] != B.shape[1]:
            raise ValueError(
                f"lora_pairs: need A (r×in) and B (out×r) with the same r, got A "
                f"{tuple(A.shape)} and B {tuple(B.shape)} (is the pair in (A, B) order?)"
            )
        out.append((idx[0], idx[1]))
    flat = [k for pr in out for k in pr]
    if len(flat) != len(set(flat)):
        raise ValueError("lora_pairs: a factor appears in more than one pair (or is paired "
                         "with itself)")
    return out


def _validate_group(group: dict[str, Any]) -> None:
    """Check one param group's hyper-parameters; raise ValueError naming the bad value."""
    lr = group["lr"]
    if isinstance(lr, Tensor) and (lr.numel() != 1 or lr.is_complex()):
        raise ValueError(f"a Tensor lr must hold one real number, got shape {tuple(lr.shape)} "
                         f"and dtype {lr.dtype}")
    value = float(lr) if isinstance(lr, Tensor) else lr
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or math.isinf(value):
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    wd = group["weight_decay"]
    if not wd >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {wd}")
    rho = group["max_drift"]
    if rho is not None and (isinstance(rho, bool) or not isinstance(rho, (int, float))
                            or not rho > 0):
        raise ValueError(f"max_drift must be None or a number > 0 (inf: no budget), got {rho!r}")
    for p in group["params"]:
        if p.is_complex():
            raise UnsupportedParameterError(
                f"Muon does not support complex parameters (got dtype {p.dtype}); optimize "
                f"torch.view_as_real(p) instead")
        if p.is_sparse:
            raise ValueError("Muon does not support sparse parameters")
    if group["use_muon"]:
        mu = group["momentum"]
        if not 0.0 <= mu < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {mu}")
        if group["momentum_style"] not in MOMENTUM_STYLES:
            raise ValueError(
                f"momentum_style must be one of {MOMENTUM_STYLES}, got {group['momentum_style']!r}"
            )
        if group["orthogonalizer"] not in ORTHOGONALIZERS:
            raise ValueError(
                f"unknown orthogonalizer {group['orthogonalizer']!r}; choose one of "
                f"{', '.join(ORTHOGONALIZERS)}"
            )
        if group["scale"] not in SCALE_RULES:
            raise ValueError(
                f"unknown scale rule {group['scale']!r}; choose one of "
                f"{', '.join(sorted(SCALE_RULES))}"
            )
        nd = group["ns_dtype"]
        if nd is not None and not (isinstance(nd, torch.dtype) and nd.is_floating_point):
            raise ValueError(
                f"ns_dtype must be a floating torch dtype (e.g. torch.bfloat16) or None, got {nd!r}"
            )
        if int(group["ns_steps"]) < 1:
            raise ValueError(f"ns_steps must be >= 1, got {group['ns_steps']}")
        rank = group["update_rank"]
        if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
            raise ValueError(f"update_rank must be None (full rank) or an integer >= 1, "
                             f"got {rank!r}")
        if group["lora_muon"] not in LORA_MUON_MODES:
            raise ValueError(f"lora_muon must be one of {LORA_MUON_MODES}, got "
                             f"{group['lora_muon']!r}")
        for p in group["params"]:
            if p.ndim < 2:
                raise ValueError(
                    f"Muon groups take matrices (>= 2-D); got a parameter of shape "
                    f"{tuple(p.shape)}: put it in a use_muon=False group (muon_param_groups "
                    f"does this)"
                )
    elif group["lora_pairs"]:
        raise ValueError("lora_pairs belong in a Muon group (use_muon=True), not an AdamW group")
    else:
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"adamw betas must be in [0, 1), got {group['betas']}")
        if not group["eps"] > 0:
            raise ValueError(f"adamw eps must be > 0, got {group['eps']}")
