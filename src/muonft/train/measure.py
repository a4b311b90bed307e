"""What the fine-tuning skeleton measures while it trains: the update RMS of each optimizer
group at every step, and the overall weight diagnostics every ``diag_every`` steps.

- ``update_rms_<group>`` (``muon`` / ``adamw``): √(Σ‖ΔW‖_F² / Σ numel) over the group's
  trainable matrices for one optimizer step; ``update_rms`` pools every tracked matrix
  (√(Σ_g n_g·rms_g² / Σ n_g)). The record holds the mean over the run's steps and the per-step
  curves.
- :func:`diag_row`: stable rank, spectral entropy, L2 drift and cosine to the pretrained
  weights of the (merged) weights, and stable rank and spectral entropy of ΔW = W − W₀.
"""

from __future__ import annotations

import math

import torch

from muonft.diagnostics import weight_diagnostics
from muonft.train.distributed import DistContext, update_rms_tracker

DIAG_CURVE_KEYS = ("stable_rank", "spectral_entropy", "l2_drift", "cosine_to_init")


class GroupRMS:
    """Per-step update RMS of an optimizer's trainable matrices, by group, through the
    optimizer's step hooks (so it sees exactly the optimizer's change of the weights)."""

    def __init__(self, opt: torch.optim.Optimizer, ctx: DistContext) -> None:
        groups: dict[str, list[torch.Tensor]] = {"muon": [], "adamw": []}
        for g in opt.param_groups:
            groups["muon" if g.get("use_muon") else "adamw"] += [p for p in g["params"]
                                                                 if p.ndim >= 2]
        self.tracker = update_rms_tracker(groups, ctx)
        self.numel = {k: sum(p.numel() for p in v) for k, v in self.tracker.params.items()}
        self.keys = ["update_rms", *(f"update_rms_{k}" for k in self.tracker.params)]
        self._hooks = [opt.register_step_pre_hook(lambda *_: self.tracker.snapshot()),
                       opt.register_step_post_hook(lambda *_: self.tracker.measure())]

    def take(self) -> dict[str, float]:
        """``update_rms`` (pooled) and ``update_rms_<group>`` of the last optimizer step (empty
        when it has been taken already)."""
        if not self.tracker.history:
            return {}
        measured = self.tracker.history.pop()[1]
        self.tracker.history.clear()
        pooled = math.sqrt(sum(self.numel[k] * r * r for k, r in measured.items())
                           / sum(self.numel.values()))
        return {"update_rms": pooled, **{f"update_rms_{k}": r for k, r in measured.items()}}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()

    def metrics(self, curves: dict[str, list[list[float]]]) -> dict[str, float]:
        """The mean of each per-step value over the run's steps (0 without any), from the
        curves (which survive a resume)."""
        return {k: sum(v for _, v in curves.get(k, [])) / len(curves[k]) if curves.get(k)
                else 0.0 for k in self.keys}


def diag_row(now: dict[str, torch.Tensor], init: dict[str, torch.Tensor],
             weight: dict | None = None, update: dict | None = None) -> dict[str, float]:
    """Overall diagnostics at one step: ``DIAG_CURVE_KEYS`` of the weights, and stable rank and
    spectral entropy of ΔW = W − W₀ (as ``update_stable_rank`` …)."""
    w = (weight or weight_diagnostics(now, init))["overall"]
    u = (update or weight_diagnostics(now, init, update=True))["overall"]
    row = {k: float(w[k]) for k in DIAG_CURVE_KEYS}
    row.update({f"update_{k}": float(u[k]) for k in ("stable_rank", "spectral_entropy")})
    return row
