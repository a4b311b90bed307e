"""Collectives that every process calls alike, and that are the identity in a plain process
(no process group): rank 0 or not, the mean and sum of floats over ranks, a barrier, whether a
model is sharded. The training loop takes its all-ranks-agree decisions through these;
:mod:`muonft.train.distributed` sets the process group up.
"""

from __future__ import annotations

import torch
from torch import nn

from muonft.optim.distributed import is_sharded


def is_main() -> bool:
    """True on rank 0, and in a process without a process group."""
    d = torch.distributed
    return not (d.is_available() and d.is_initialized()) or d.get_rank() == 0


def is_sharded_model(model: nn.Module) -> bool:
    """True when the model's parameters are FSDP2 shards (DTensors)."""
    return any(is_sharded(p) for p in model.parameters())


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sum of a list of floats over all ranks (itself without a process group)."""
    d = torch.distributed
    if not (d.is_available() and d.is_initialized()) or d.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    if d.get_backend() == "nccl":
        t = t.cuda()
    d.all_reduce(t)
    return t.cpu().tolist()


def mean_across_ranks(x: float) -> float:
    """The mean of a float over all ranks (itself without a process group)."""
    d = torch.distributed
    if not (d.is_available() and d.is_initialized()) or d.get_world_size() == 1:
        return x
    t = torch.tensor([x], dtype=torch.float64)
    if d.get_backend() == "nccl":
        t = t.cuda()
    d.all_reduce(t)
    return float(t.item()) / d.get_world_size()


def barrier() -> None:
    """Wait for every rank (nothing without a process group)."""
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        d.barrier()
