"""The Muon optimizer, with AdamW param groups, as one ``torch.optim.Optimizer``.

A Muon step for a group is a pipeline of small pure functions, each tested alone:

    momentum (ema | sum, Nesterov or not) → orthogonalize (batched by shape)
        → scale (named rule) → decoupled weight decay → apply

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

from muonft.optim.orthogonalize import METHODS, AutoPolicy, orthogonalize_raw

ScaleRule = Callable[[int, int], float]

SCALE_RULES: dict[str, ScaleRule] = {
    # Keller Jordan's rule: unit spectral norm update, boosted for tall matrices.
    "spectral": lambda m, n: math.sqrt(max(1.0, m / n)),
    # Moonshot's rule: the update's RMS matches AdamW's typical 0.2, so one lr serves both.
    "match_adamw_rms": lambda m, n: 0.2 * math.sqrt(max(m, n)),
    "none": lambda m, n: 1.0,
}

MOMENTUM_STYLES = ("ema", "sum")
STACK_CPU_MAX_NUMEL = 512 * 512


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
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("Muon got an empty parameter list")
        if not isinstance(params[0], dict):
            params = [{"params": params, "use_muon": True}]
        groups = []
        for g in params:
            g = dict(g)
            g.setdefault("use_muon", True)
            if not g["use_muon"] and "lr" not in g and adamw_lr is not None:
                g["lr"] = adamw_lr
            groups.append(g)
        defaults = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, momentum_style=momentum_style,
            weight_decay=weight_decay, orthogonalizer=orthogonalizer, ns_steps=ns_steps,
            ns_dtype=ns_dtype, scale=scale, betas=adamw_betas, eps=adamw_eps,
        )
        self._auto = AutoPolicy()
        super().__init__(groups, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        _validate_group(self.param_groups[-1])

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

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """Perform one optimization step (Muon groups, then AdamW groups)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["use_muon"]:
                self._muon_group_step(group)
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

    def _muon_group_step(self, group: dict[str, Any]) -> None:
        params = self._params_with_grad(group)
        if not params:
            return
        grads = [p.grad for p in params]
        bufs = []
        for p in params:
            st = self.state[p]
            if "momentum_buffer" not in st:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            bufs.append(st["momentum_buffer"])
        directions = momentum_update(
            bufs, grads, group["momentum"], group["momentum_style"], group["nesterov"]
        )
        updates = orthogonalize_batched(
            directions, group["orthogonalizer"], group["ns_steps"], group["ns_dtype"], self._auto
        )
        scales = [update_scale(group["scale"], tuple(as_matrix(p).shape)) for p in params]
        apply_decay_and_update(params, updates, group["lr"], group["weight_decay"], scales)

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
            exp_avgs.append(st["exp_avg"])
            exp_avg_sqs.append(st["exp_avg_sq"])
            steps.append(st["step"])
        beta1, beta2 = group["betas"]
        _adam_functional(
            params, [p.grad for p in params], exp_avgs, exp_avg_sqs, [], steps,
            foreach=True, decoupled_weight_decay=True, amsgrad=False, beta1=beta1, beta2=beta2,
            lr=group["lr"], weight_decay=group["weight_decay"], eps=group["eps"], maximize=False,
        )


def _validate_group(group: dict[str, Any]) -> None:
    """Check one param group's hyper-parameters; raise ValueError naming the bad value."""
    lr = group["lr"]
    if not isinstance(lr, (int, float)) or not lr >= 0 or math.isinf(lr):
        raise ValueError(f"lr must be a finite number >= 0, got {lr}")
    wd = group["weight_decay"]
    if not wd >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {wd}")
    for p in group["params"]:
        if p.is_complex():
            raise ValueError(f"Muon does not support complex parameters (got dtype {p.dtype})")
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
        if group["orthogonalizer"] not in METHODS:
            raise ValueError(
                f"unknown orthogonalizer {group['orthogonalizer']!r}; choose one of "
                f"{', '.join(METHODS)}"
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
        for p in group["params"]:
            if p.ndim < 2:
                raise ValueError(
                    f"Muon groups take matrices (>= 2-D); got a parameter of shape "
                    f"{tuple(p.shape)}: put it in a use_muon=False group (muon_param_groups "
                    f"does this)"
                )
    else:
        b1, b2 = group["betas"]
        if not (0.0 <= b1 < 1.0 and 0.0 <= b2 < 1.0):
            raise ValueError(f"adamw betas must be in [0, 1), got {group['betas']}")
        if not group["eps"] > 0:
            raise ValueError(f"adamw eps must be > 0, got {group['eps']}")
