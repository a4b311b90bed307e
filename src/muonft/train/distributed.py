"""Data parallelism under ``torchrun``: process group, device, batch sharding, rank-0 I/O.

``muonft pretrain`` and ``muonft finetune`` (the in-house GPT recipe) run unchanged under
``torchrun --nproc-per-node N`` (gloo on CPU, NCCL on GPU): every rank builds the same model and
takes rows ``rank::N`` of the global batch of each step (the same global batch a single process
would use), so the reduced gradient is the single-process gradient and the run matches it to
floating-point tolerance; the divergence guard sees the loss averaged over ranks, so all ranks
stop together. Muon splits its orthogonalization across ranks (:mod:`muonft.optim.distributed`).
The global batch does not depend on the world size, so a run resumes at any world size.

Two modes, chosen by the environment variable ``MUONFT_PARALLEL`` (or the ``parallel=``
argument of the recipes), so the same command line serves both:

- ``ddp`` (default): every rank holds the whole model, wrapped in DDP. Rank 0 alone writes
  checkpoints (the usual safetensors + sidecar pair of :mod:`muonft.train.checkpoint`) and
  results.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) shards every parameter by rows:
  each block of the model is one FSDP unit, the root holds the rest. Parameters, gradients and
  optimizer state are DTensors; Muon gathers each matrix only to its owner rank. Checkpoints are
  written by all ranks together with ``torch.distributed.checkpoint`` (DCP), which reshards on
  load, so they resume at another world size, under either mode or in one plain process.
  Final weights and results are gathered to rank 0, which writes them.

With one process (plain ``python``, or ``torchrun --nproc-per-node 1``) both modes are the plain
single-process run.

    MUONFT_PARALLEL=fsdp torchrun --nproc-per-node 2 -m muonft pretrain --optimizer muon ...
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from muonft.diagnostics import UpdateRMSTracker
from muonft.errors import ConfigError
from muonft.optim.distributed import local_shard
from muonft.train.loop import default_loss, resolve_device
from muonft.train.ranks import barrier, is_sharded_model, sum_across_ranks

PARALLEL_ENV = "MUONFT_PARALLEL"
MODES = ("ddp", "fsdp")


@dataclass
class DistContext:
    """Where this process sits: rank, world size, its device, and whether it created the
    process group (and so must destroy it)."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    owns_group: bool = False
    mode: str = "single"  # "single" (one process), "ddp" or "fsdp"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"


def parallel_mode(parallel: str | None = None) -> str:
    """``parallel``, else ``$MUONFT_PARALLEL``, else ``ddp``; validated."""
    mode = (parallel or os.environ.get(PARALLEL_ENV) or "ddp").strip().lower()
    if mode not in MODES:
        raise ConfigError(f"{PARALLEL_ENV}={mode!r} is not a parallel mode; use one of "
                          f"{', '.join(MODES)}")
    return mode


def setup(device: str | None = None, parallel: str | None = None) -> DistContext:
    """Join the ``torchrun`` job described by the environment (``WORLD_SIZE`` > 1), or return
    a single-process context. ``device`` None/``auto``: ``cuda:LOCAL_RANK`` when CUDA is
    available, else CPU. ``parallel``: ``ddp`` or ``fsdp`` (default: :func:`parallel_mode`)."""
    mode = parallel_mode(parallel)
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
    return DistContext(rank=rank, world=world, device=dev, owns_group=owns,
                       mode="single" if world == 1 else mode)


def world_size_from_env() -> int:
    """``WORLD_SIZE`` of the ``torchrun`` job this process belongs to (1 outside one)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def require_single_process(recipe: str) -> None:
    """Refuse a recipe that does not support ``torchrun`` with several processes."""
    if world_size_from_env() > 1:
        raise ConfigError(f"the {recipe} recipe runs in one process only; run it without "
                          f"torchrun (WORLD_SIZE={world_size_from_env()})")


def parallelize(model: nn.Module, ctx: DistContext, loss: Callable[[nn.Module, Any], Any]
                | None = None) -> Callable[[nn.Module, Any], Any]:
    """Make ``model`` data-parallel for ``ctx`` and return the loss function the loop should
    use (``loss_fn(model, batch)``; ``loss`` is the single-process one, default
    ``model(x, y)``'s). Build the optimizer *after* this call: under ``fsdp`` the model's
    parameters are replaced by DTensor shards (in place: ``model`` stays the object to train,
    evaluate and checkpoint). Under ``ddp`` the loop keeps the plain module (its names, its
    state dict) and the loss runs through the DDP wrapper, which all-reduces the gradients."""
    loss = loss or default_loss
    if ctx.mode == "ddp":
        ddp = nn.parallel.DistributedDataParallel(model)

        def loss_fn(_m: nn.Module, batch: Any) -> Any:
            return loss(ddp, batch)

        return loss_fn
    if ctx.mode == "fsdp":
        shard_model(model, ctx)
    return loss


def fsdp_units(model: nn.Module) -> list[nn.Module]:
    """The modules that become one FSDP unit each: the elements of the outermost
    ``nn.ModuleList`` containers (a transformer's blocks); everything else goes to the root."""
    units: list[nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if id(m) in inside:
            continue
        if isinstance(m, nn.ModuleList):
            units.extend(m)
            inside.update(id(x) for x in m.modules())
    return units


def shard_model(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``fully_shard`` each of :func:`fsdp_units` and then the root, over a 1-D mesh of all
    ranks (rows of every parameter split across them, ``Shard(0)``); in place."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(ctx.device.type, (ctx.world,))
    for unit in fsdp_units(model):
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's full state dict on CPU: gathered to rank 0 for a sharded (FSDP2) model — a
    collective, every rank must call it; other ranks get ``{}`` — else ``model.state_dict()``
    detached on CPU."""
    if is_sharded_model(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def update_rms_tracker(groups: dict[str, list[torch.Tensor]], ctx: DistContext):
    """A :class:`muonft.diagnostics.UpdateRMSTracker` for ``groups``; for sharded parameters
    (``fsdp``) one whose ``measure`` sums the squared update norms of every rank's shards, so
    that each rank records the update RMS of the full matrices."""
    if not ctx.sharded:
        return UpdateRMSTracker(groups)
    class ShardedUpdateRMSTracker(UpdateRMSTracker):
        """Snapshots are of this rank's shards (plain tensors)."""

        @torch.no_grad()
        def snapshot(self) -> None:
            shards = {k: [local_shard(p.detach()) for p in v] for k, v in self.params.items()}
            if not self._buffers:
                self._buffers = {k: [t.clone() for t in v] for k, v in shards.items()}
            else:
                for k, v in shards.items():
                    torch._foreach_copy_(self._buffers[k], v)
            self._snap = self._buffers

        @torch.no_grad()
        def measure(self, step: int | None = None) -> dict[str, float]:
            if self._snap is None:
                raise RuntimeError("measure() needs a snapshot() before the step")
            sq = []
            for k, v in self.params.items():
                diffs = self._snap[k]
                torch._foreach_sub_(diffs, [local_shard(p.detach()) for p in v])
                sq.append(sum(float(n) ** 2 for n in torch._foreach_norm(diffs, 2.0)))
            total = sum_across_ranks(sq)
            out = {k: math.sqrt(s / self._numel[k]) for k, s in zip(self.params, total)}
            self._snap = None
            self.history.append((step, out))
            return out

    return ShardedUpdateRMSTracker(groups)


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


def teardown(ctx: DistContext, *, wait: bool = True) -> None:
    """Destroy the process group this context created (after a barrier unless ``wait`` is
    False, as on an error path where other ranks may never arrive)."""
    if ctx.owns_group:
        if wait:
            barrier()
        torch.distributed.destroy_process_group()
