"""Split Muon's orthogonalization across the ranks of a ``torch.distributed`` job.

Under data parallelism (DDP) every rank holds the same parameters, the same all-reduced
gradients and therefore the same momentum; orthogonalizing every matrix on every rank (what the
reference code and ``torch.optim.Muon`` do) repeats the most expensive part of the step W times.
Here each matrix gets one *owner* rank: owners are assigned greedily by estimated cost
(m·n·min(m, n) flops per Newton–Schulz step), largest first, to the least-loaded rank, which is
deterministic, so every rank computes the same assignment without talking. Each rank
orthogonalizes only what it owns (same-shape matrices still share batched calls), packs its
results into one flat fp32 buffer, and one ``all_gather`` gives every rank every update. Per-rank
orthogonalization work falls to ≈ 1/W; the exchange moves one fp32 copy of the Muon matrices.

Results travel as fp32 (fp64 when a direction is fp64) with a dtype code per matrix and are
cast back to the owner's output dtype; bf16/fp16 → fp32 is exact, so every rank applies
bit-identical updates, equal to what one process computes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

OrthoFn = Callable[[list[Tensor]], list[Tensor]]


def world() -> tuple[int, int]:
    """(rank, world size) of the default process group, or (0, 1) when there is none."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _cost(t: Tensor) -> float:
    m, n = t.reshape(t.shape[0], -1).shape if t.ndim > 1 else (1, t.numel())
    return float(m) * n * min(m, n)


def assign_owners(shapes: list[torch.Size], world_size: int) -> list[int]:
    """Owner rank of each matrix: largest estimated cost first, each to the least-loaded rank
    (ties → lowest rank). A pure function of the shapes, so all ranks agree."""
    load = [0.0] * world_size
    owners = [0] * len(shapes)
    costs = [_cost(torch.empty(s, device="meta")) for s in shapes]
    for i in sorted(range(len(shapes)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        owners[i] = r
        load[r] += costs[i]
    return owners


def distributed_orthogonalize(directions: list[Tensor], ortho: OrthoFn,
                              group: object | None = None) -> list[Tensor]:
    """``ortho(directions)`` computed cooperatively by all ranks of ``group`` (default: the
    world), each rank doing its owned share; every rank returns every result. Without an
    initialised process group (or with one rank) it is just ``ortho(directions)``."""
    dist = torch.distributed
    if not directions or not (dist.is_available() and dist.is_initialized()):
        return ortho(directions)
    W = dist.get_world_size(group)
    if W == 1:
        return ortho(directions)
    me = dist.get_rank(group)
    owners = assign_owners([d.shape for d in directions], W)
    mine = [i for i, o in enumerate(owners) if o == me]
    local = ortho([directions[i] for i in mine]) if mine else []
    wire = torch.float64 if any(d.dtype == torch.float64 for d in directions) else torch.float32
    # each owner's segment: one dtype code per owned matrix, then the matrices, flattened
    sizes = [0] * W
    for i, o in enumerate(owners):
        sizes[o] += 1 + directions[i].numel()
    device = directions[0].device
    send = torch.zeros(max(sizes), dtype=wire, device=device)
    send[:len(local)] = torch.tensor([_CODES[u.dtype] for u in local], dtype=wire)
    off = len(local)
    for u in local:
        send[off:off + u.numel()].copy_(u.reshape(-1))
        off += u.numel()
    recv = [torch.empty_like(send) for _ in range(W)]
    dist.all_gather(recv, send, group=group)
    out: list[Tensor] = [None] * len(directions)  # type: ignore[list-item]
    count = [sum(1 for o in owners if o == r) for r in range(W)]
    seen = [0] * W
    offsets = list(count)
    for i, o in enumerate(owners):
        d = directions[i]
        if o == me:
            out[i] = local[seen[o]]
        else:
            dtype = _DTYPES[int(recv[o][seen[o]].item())]
            out[i] = recv[o][offsets[o]:offsets[o] + d.numel()].view(d.shape).to(dtype)
        seen[o] += 1
        offsets[o] += d.numel()
    return out


_DTYPES = (torch.float32, torch.bfloat16, torch.float16, torch.float64)
_CODES = {dt: i for i, dt in enumerate(_DTYPES)}
