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

Under FSDP2 (``torch.distributed.fsdp.fully_shard``) a parameter, its gradient and its momentum
are DTensors whose rows are split across the ranks (``Shard(0)``, ``torch.chunk`` sizes), and no
rank holds a full matrix. :func:`sharded_orthogonalize` uses the same owners (assigned on the
full shapes): one ``all_to_all`` sends every rank's rows of each matrix to its owner, the owner
orthogonalizes the full matrices it owns (batched by shape), and a second ``all_to_all``
returns each rank its rows of every result. A rank materialises only the matrices it owns;
momentum, decay and the update stay on the local shards (they are elementwise), and
:class:`muonft.optim.Muon` takes the update-scale rule of the full shape.
"""

from __future__ import annotations

import functools
import math
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


# --- FSDP2: matrices sharded by rows across the ranks -------------------------------------


def is_sharded(t: Tensor) -> bool:
    """True for a ``DTensor`` (a parameter, gradient or state sharded by ``fully_shard``)."""
    cls = _dtensor_class()
    return cls is not None and isinstance(t, cls)


@functools.cache
def _dtensor_class() -> type | None:
    if not torch.distributed.is_available():
        return None
    # torch.distributed.* imports stay lazy in this module: 0.5 s, needed only for sharded
    # (FSDP2) parameters
    from torch.distributed.tensor import DTensor

    return DTensor


def shard_rows(rows: int, world_size: int) -> list[int]:
    """Rows of each rank's ``Shard(0)`` piece of a matrix with ``rows`` rows: ``torch.chunk``
    sizes (⌈rows/W⌉ each, the last ones shorter or empty), as ``fully_shard`` splits."""
    chunk = -(-rows // world_size)
    return [max(0, min(chunk, rows - r * chunk)) for r in range(world_size)]


def shard_group(tensors: list[Tensor]) -> object:
    """The process group along which ``tensors`` (DTensors) are sharded. Only what FSDP2 makes
    by default is supported: one 1-D mesh, placement ``Shard(0)``, for all of them."""
    from torch.distributed.tensor import Shard

    mesh = tensors[0].device_mesh
    for t in tensors:
        if t.device_mesh != mesh or tuple(t.placements) != (Shard(0),):
            raise ValueError(
                f"Muon on sharded parameters needs every matrix of a group sharded by rows "
                f"(placements (Shard(0),)) on one 1-D device mesh, as fully_shard does; got "
                f"{tuple(t.placements)} on {t.device_mesh}")
    return mesh.get_group()


def sharded_orthogonalize(shards: list[Tensor], shapes: list[torch.Size], ortho: OrthoFn,
                          group: object | None = None) -> list[Tensor]:
    """Orthogonalize matrices that are sharded by rows across the ranks of ``group``.

    ``shards[i]`` is this rank's ``Shard(0)`` piece (a plain tensor, e.g. ``d.to_local()``) of
    matrix i, whose full shape is ``shapes[i]``. Each matrix goes whole to its owner rank
    (:func:`assign_owners` on the full shapes, as under DDP): one ``all_to_all`` sends every
    rank's pieces to the owners, each owner concatenates them and runs ``ortho`` on the full
    matrices it owns (one call, so same shapes are still batched), and a second ``all_to_all``
    returns to every rank its rows of each result. Returns this rank's piece of each
    orthogonalized matrix. A rank materialises only the matrices it owns; the exchange moves
    each matrix twice (in the momentum's dtype and the result's, through an fp32 wire — fp64
    when a direction is fp64 — so the values are those one process computes)."""
    dist = torch.distributed
    W = dist.get_world_size(group)
    if W == 1 or not shards:
        return ortho(shards)
    me = dist.get_rank(group)
    owners = assign_owners(list(shapes), W)
    rows = [shard_rows(s[0], W) for s in shapes]
    width = [math.prod(s[1:]) for s in shapes]
    for i, d in enumerate(shards):
        if d.shape[0] != rows[i][me]:
            raise ValueError(f"shard of matrix {i} has {d.shape[0]} rows on rank {me}, expected "
                             f"{rows[i][me]} (torch.chunk split of {tuple(shapes[i])})")
    wire = torch.float64 if any(d.dtype == torch.float64 for d in shards) else torch.float32
    device = shards[0].device
    mine = [i for i, o in enumerate(owners) if o == me]

    # 1. pieces → owners; what arrives from rank s is s's rows of each matrix I own, in order
    send = torch.cat([shards[i].reshape(-1).to(wire) for r in range(W)
                      for i, o in enumerate(owners) if o == r] or [torch.zeros(0, dtype=wire)])
    out_split = [sum(rows[i][s] * width[i] for i in mine) for s in range(W)]
    in_split = [sum(rows[i][me] * width[i] for i, o in enumerate(owners) if o == r)
                for r in range(W)]
    recv = torch.empty(sum(out_split), dtype=wire, device=device)
    dist.all_to_all_single(recv, send.to(device), out_split, in_split, group=group)
    pieces = [list(seg.split([rows[i][s] * width[i] for i in mine]))
              for s, seg in enumerate(recv.split(out_split))]
    full = [torch.cat([pieces[s][k] for s in range(W)]).view(shapes[i]).to(shards[i].dtype)
            for k, i in enumerate(mine)]
    results = ortho(full) if full else []

    # 2. results → every rank its rows; each owner's segment starts with its dtype codes
    codes = torch.tensor([_CODES[u.dtype] for u in results], dtype=wire, device=device)
    chunks = [[u.reshape(u.shape[0], -1).split(rows[i])[r] for u, i in zip(results, mine)]
              for r in range(W)]
    send = torch.cat([torch.cat([codes, *(c.reshape(-1).to(wire) for c in chunks[r])])
                      for r in range(W)])
    in_split = [len(mine) + sum(rows[i][r] * width[i] for i in mine) for r in range(W)]
    owned = [[i for i, o in enumerate(owners) if o == s] for s in range(W)]
    out_split = [len(owned[s]) + sum(rows[i][me] * width[i] for i in owned[s])
                 for s in range(W)]
    recv = torch.empty(sum(out_split), dtype=wire, device=device)
    dist.all_to_all_single(recv, send, out_split, in_split, group=group)
    out: list[Tensor] = [None] * len(shards)  # type: ignore[list-item]
    for s, seg in enumerate(recv.split(out_split)):
        kinds = seg[:len(owned[s])].tolist()  # one host sync per owner, not per matrix
        parts = seg[len(owned[s]):].split([rows[i][me] * width[i] for i in owned[s]])
        for i, kind, part in zip(owned[s], kinds, parts):
            out[i] = part.view(shards[i].shape).to(_DTYPES[int(kind)])
    return out


def local_shard(t: Tensor) -> Tensor:
    """This rank's piece of a DTensor (sharing its storage: in-place ops update the DTensor,
    outside autograd), or ``t`` itself for a plain tensor."""
    return t.to_local() if is_sharded(t) else t


def replicated_orthogonalize(shards: list[Tensor], like: list[Tensor], ortho: OrthoFn
                             ) -> list[Tensor]:
    """Every rank gathers every full matrix and orthogonalizes all of them (what
    ``torch.optim.Muon`` does, W times the work of :func:`sharded_orthogonalize`); returns this
    rank's rows of each result. ``like[i]`` is the DTensor whose layout ``shards[i]`` has."""
    from torch.distributed.tensor import DTensor

    full = [DTensor.from_local(s, t.device_mesh, t.placements, shape=t.shape,
                               stride=t.stride()).full_tensor() for s, t in zip(shards, like)]
    out = []
    for s, t, u in zip(shards, like, ortho(full)):
        me, W = t.device_mesh.get_local_rank(), t.device_mesh.size()
        out.append(u.reshape(u.shape[0], -1).split(shard_rows(u.shape[0], W))[me]
                   .reshape(s.shape))
    return out
