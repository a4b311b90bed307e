"""Per-step update RMS of labelled parameter sets (Muon vs AdamW groups), from snapshots."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor


class UpdateRMSTracker:
    """Measures the RMS of one optimizer step's weight change, per label.

    For a label with parameters W⁽¹⁾…W⁽ᵏ⁾ the step's update RMS is
    √(Σᵢ‖W⁽ⁱ⁾_after − W⁽ⁱ⁾_before‖_F² / Σᵢ numel(W⁽ⁱ⁾)) — pooled over the label's
    parameters, so it is the RMS of the concatenated update (learning rate, scale rule and
    weight decay included). Use::

        tracker = UpdateRMSTracker.from_optimizer(opt)     # labels "muon" / "adamw"
        tracker.snapshot(); opt.step(); tracker.measure(step)   # each step, or every N steps
        tracker.summary()                                  # mean per label over measured steps

    A snapshot is one copy of the tracked parameters (made with one ``_foreach`` copy into
    buffers allocated once); ``measure`` consumes it in place, so the extra memory is one
    copy of the trainable parameters.
    """

    def __init__(self, groups: Mapping[str, Iterable[Tensor]]) -> None:
        self.params: dict[str, list[Tensor]] = {}
        for label, ps in groups.items():
            lst = [p for p in ps if p.requires_grad]
            if lst:
                self.params.setdefault(label, []).extend(lst)
        if not self.params:
            raise ValueError("UpdateRMSTracker got no trainable parameters to track")
        self._numel = {k: sum(p.numel() for p in v) for k, v in self.params.items()}
        self._snap: dict[str, list[Tensor]] | None = None
        self._buffers: dict[str, list[Tensor]] = {}
        self.history: list[tuple[int | None, dict[str, float]]] = []

    @classmethod
    def from_optimizer(cls, optimizer: torch.optim.Optimizer) -> UpdateRMSTracker:
        """Track an optimizer's param groups, labelled ``muon`` (groups with ``use_muon``
        true) or ``adamw`` (every other group, e.g. a plain ``torch.optim.AdamW``)."""
        groups: dict[str, list[Tensor]] = {}
        for g in optimizer.param_groups:
            groups.setdefault("muon" if g.get("use_muon") else "adamw", []).extend(g["params"])
        return cls(groups)

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the current parameter values (call right before ``optimizer.step()``)."""
        if not self._buffers:
            self._buffers = {k: [p.detach().clone() for p in v] for k, v in self.params.items()}
        else:
            for k, v in self.params.items():
                torch._foreach_copy_(self._buffers[k], [p.detach() for p in v])
        self._snap = self._buffers

    @torch.no_grad()
    def measure(self, step: int | None = None) -> dict[str, float]:
        """Update RMS per label since the last :meth:`snapshot`; recorded in ``history``."""
        if self._snap is None:
            raise RuntimeError("UpdateRMSTracker.measure() needs a snapshot() before the step")
        out: dict[str, float] = {}
        for k, v in self.params.items():
            diffs = self._snap[k]
            torch._foreach_sub_(diffs, [p.detach() for p in v])
            sq = sum(float(n) ** 2 for n in torch._foreach_norm(diffs, 2.0))
            out[k] = math.sqrt(sq / self._numel[k])
        self._snap = None
        self.history.append((step, out))
        return out

    def summary(self) -> dict[str, float]:
        """Mean update RMS per label over all measured steps (empty before any)."""
        if not self.history:
            return {}
        return {k: sum(h[k] for _, h in self.history) / len(self.history) for k in self.params}
