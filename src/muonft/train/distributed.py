"""Data parallelism under ``torchrun``: process group, device, batch sharding, rank-0 I/O.

``muonft pretrain`` runs unchanged under ``torchrun --nproc-per-node N`` (gloo on CPU, NCCL on
GPU): every rank builds the same model, wraps it in DDP, and takes rows ``rank::N`` of the
global batch of each step (the same global batch a single process would use), so the all-reduced
gradient is the single-process gradient and the run matches it to floating-point tolerance.
Muon splits its orthogonalization across ranks (:mod:`muonft.optim.distributed`). Only rank 0
writes checkpoints and results; every rank can resume from them, at any world size (the
checkpoint holds the full model and optimizer state, and the global batch does not depend on
the world size).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from muonft.errors import ConfigError


@dataclass
class DistContext:
    """Where this process sits: rank, world size, its device, and whether it created the
    process group (and so must destroy it)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def is_main() -> bool:
    """True on rank 0, and in a process without a process group."""
    d = torch.distributed
    return not (d.is_available() and d.is_initialized()) or d.get_rank() == 0


def setup(device: str | None = None) -> DistContext:
    """Join the ``torchrun`` job described by the environment (``WORLD_SIZE`` > 1), or return
    a single-process context. ``device`` None/``auto``: ``cuda:LOCAL_RANK`` when CUDA is
    available, else CPU."""
    from muonft.train.loop import resolve_device

    d = torch.distributed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 and not (d.is_available() and d.is_initialized()):
        return DistContext(device=resolve_device(device))
    owns = False
    if not d.is_initialized():
        if not d.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        cuda = torch.cuda.is_available() and device in (None, "auto", "cuda")
        d.init_process_group("nccl" if cuda else "gloo")
        owns = True
    rank, world = d.get_rank(), d.get_world_size()
    if device in (None, "auto"):
        dev = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
                           if torch.cuda.is_available() else "cpu")
    else:
        dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return DistContext(rank=rank, world=world, device=dev, owns_group=owns)


def shard(get_batch: Callable[[int], Any], ctx: DistContext) -> Callable[[int], Any]:
    """Rows ``rank::world`` of each global batch (a tuple of tensors with batch first)."""
    if ctx.world == 1:
        return get_batch

    def get(step: int) -> Any:
        return tuple(t[ctx.rank::ctx.world] for t in get_batch(step))

    return get


def check_batch(batch_size: int, ctx: DistContext) -> None:
    if batch_size % ctx.world:
        raise ConfigError(f"batch_size {batch_size} is not divisible by the world size "
                          f"{ctx.world}; pick a multiple of {ctx.world}")


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
    d = torch.distributed
    if d.is_available() and d.is_initialized():
        d.barrier()


def teardown(ctx: DistContext, *, wait: bool = True) -> None:
    """Destroy the process group this context created (after a barrier unless ``wait`` is
    False, as on an error path where other ranks may never arrive)."""
    if ctx.owns_group:
        if wait:
            barrier()
        torch.distributed.destroy_process_group()
