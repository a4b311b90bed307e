"""Spectral metrics of LoRA adapters: the factors A (r×in), B (out×r) and the update s·BA."""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from muonft.adapters import lora_factors
from muonft.diagnostics.spectral import (
    batched_spectral_metrics,
    group_names,
    lowrank_spectral_metrics,
    mean_rows,
    torch_threads,
)


def _lowrank_by_shape(
    factors: list[tuple[str, torch.Tensor, torch.Tensor, float]], dtype: torch.dtype,
    threads: int | None,
) -> dict[str, dict[str, float]]:
    """Metrics of s·BA per module, one batched call per (B shape, A shape, s)."""
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for i, (_, A, B, s) in enumerate(factors):
        buckets[(tuple(B.shape), tuple(A.shape), s)].append(i)
    out: dict[str, dict[str, float]] = {}
    for (_, _, s), idx in buckets.items():
        with torch_threads(threads):
            res = lowrank_spectral_metrics(torch.stack([factors[i][2].detach() for i in idx]),
                                           torch.stack([factors[i][1].detach() for i in idx]),
                                           s, dtype)
        cols = {k: v.tolist() for k, v in res.items()}
        for j, i in enumerate(idx):
            out[factors[i][0]] = {k: float(v[j]) for k, v in cols.items()}
    return out


def lora_diagnostics(model: nn.Module, adapter: str = "default",
                     dtype: torch.dtype = torch.float32, threads: int | None = 1
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """Per layer group, spectral metrics of the LoRA factors A and B and of the update s·BA.

    Works on any model with PEFT LoRA layers (ours from :func:`muonft.adapters.apply_lora`, or a
    ``PeftModel``). Returns ``{group: {"A": {...}, "B": {...}, "BA": {...}}}`` plus ``overall``
    — the record's ``diagnostics_lora`` — with each metric the mean over the group's adapters.
    BA includes the adapter scaling s (α/r, or α/√r for rsLoRA), so it is the low-rank change
    the adapter adds to the frozen weight; for DoRA it is the direction update only (the
    learned magnitude is not included). Its spectrum comes from an r×r core, not an out×in SVD.
    SVDs run with ``threads`` CPU threads (see :func:`muonft.diagnostics.spectral.torch_threads`).
    """
    factors = lora_factors(model, adapter)
    if not factors:
        raise ValueError(f"model has no LoRA adapter named {adapter!r}; apply_lora first")
    per_a = batched_spectral_metrics({n: A for n, A, _, _ in factors}, dtype, threads)
    per_b = batched_spectral_metrics({n: B for n, _, B, _ in factors}, dtype, threads)
    per_ba = _lowrank_by_shape(factors, dtype, threads)
    return {g: {"A": mean_rows([per_a[n] for n in names]),
                "B": mean_rows([per_b[n] for n in names]),
                "BA": mean_rows([per_ba[n] for n in names])}
            for g, names in group_names([n for n, *_ in factors]).items()}
