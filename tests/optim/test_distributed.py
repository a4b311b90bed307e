"""Distributed Muon: ownership assignment, and a 2-process DDP run on CPU (gloo) whose
parameters are identical across ranks and equal to the 1-process result."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from muonft.optim import Muon, muon_param_groups
from muonft.optim.distributed import assign_owners, distributed_orthogonalize, shard_rows


def test_owner_assignment_balances_cost_and_is_deterministic():
    shapes = [torch.Size((256, 256))] * 4 + [torch.Size((64, 256))] * 4
    owners = assign_owners(shapes, 2)
    assert owners == assign_owners(shapes, 2)
    assert sorted(owners[:4]) == [0, 0, 1, 1] and sorted(owners[4:]) == [0, 0, 1, 1]
    assert assign_owners(shapes, 1) == [0] * 8
    assert set(assign_owners(shapes, 3)) == {0, 1, 2}


def test_without_a_process_group_it_is_the_plain_call():
    xs = [torch.randn(4, 6), torch.randn(6, 4)]
    calls = []

    def ortho(ds):
        calls.append(len(ds))
        return [d * 2 for d in ds]

    out = distributed_orthogonalize(xs, ortho)
    assert calls == [2] and all(torch.equal(o, 2 * x) for o, x in zip(out, xs))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32, bias=True), nn.ReLU(), nn.Linear(32, 32),
                         nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 4))


def _data(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)


def _train(model: nn.Module, steps: int, ranks: list[int], ddp: bool, **muon_options) -> Muon:
    opt = Muon(muon_param_groups(model), lr=0.02, weight_decay=0.01, **muon_options)
    for step in range(steps):
        opt.zero_grad()
        if ddp:
            x, y = _data(ranks[0], step)
            nn.functional.cross_entropy(model(x), y).backward()
        else:  # one process: the mean gradient over every rank's batch, as DDP computes it
            for r in ranks:
                x, y = _data(r, step)
                (nn.functional.cross_entropy(model(x), y) / len(ranks)).backward()
        opt.step()
    return opt


def _worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = _model()
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = _train(ddp, steps, [rank], ddp=True)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state["orthogonalized_here"] = torch.tensor(opt.orthogonalized_here)
        torch.save(state, f"{out}/rank{rank}.pt")
        dist.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    steps, world = 4, 2
    mp.spawn(_worker, args=(world, _free_port(), steps, str(tmp_path)), nprocs=world,
             join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    # the work was split: each of the 4 Muon matrices is orthogonalized by one rank per step
    # (by the cost-balanced assignment), not by both
    n0, n1 = int(r0.pop("orthogonalized_here")), int(r1.pop("orthogonalized_here"))
    owners = assign_owners([torch.Size(s) for s in ((32, 16), (32, 32), (24, 32), (4, 24))], 2)
    assert (n0, n1) == (steps * owners.count(0), steps * owners.count(1))
    assert 0 < n0 < 4 * steps and n0 + n1 == 4 * steps
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # bit-identical across ranks
    single = _model()
    assert _train(single, steps, list(range(world)), ddp=False).orthogonalized_here == 4 * steps
    ref = single.state_dict()
    init = _model().state_dict()
    for k in r0:
        assert not torch.equal(r0[k], init[k]), k  # it trained
        torch.testing.assert_close(r0[k], ref[k], rtol=1e-4, atol=2e-5)


def test_shard_rows_follow_torch_chunk():
    for rows in (1, 4, 5, 7, 32):
        for world in (1, 2, 3, 4):
            want = [c.shape[0] for c in torch.arange(rows).chunk(world)]
            got = shard_rows(rows, world)
            assert got[:len(want)] == want and sum(got) == rows and len(got) == world


def _fsdp_worker(rank: int, world: int, port: int, steps: int, out: str) -> None:
    from torch.distributed.fsdp import fully_shard

    from muonft.optim import muon

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    seen: list[torch.Size] = []  # shapes of what this rank orthogonalizes
    real = muon.orthogonalize_batched

    def spy(ds, *args):
        seen.extend(d.shape for d in ds)
        return real(ds, *args)

    muon.orthogonalize_batched = spy
    try:
        for split in (True, False):
            seen.clear()
            model = _model()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer)
            fully_shard(model)
            opt = _train(model, steps, [rank], ddp=True, ns_dtype=torch.float32,
                         distributed=split)
            # the momentum stays a row shard of each matrix, not a full copy
            bufs = [opt.state[p]["momentum_buffer"] for g in opt.param_groups if g["use_muon"]
                    for p in g["params"]]
            assert len(bufs) == 4 and all(b.to_local().shape[0] < b.shape[0] for b in bufs)
            state = {k: v.full_tensor() for k, v in model.state_dict().items()}
            state["orthogonalized"] = torch.tensor([list(s) for s in seen])
            torch.save(state, f"{out}/rank{rank}-{'split' if split else 'all'}.pt")
        dist.barrier()
    finally:
        muon.orthogonalize_batched = real
        dist.destroy_process_group()


@pytest.mark.slow
def test_fsdp2_sharded_muon_equals_one_process(tmp_path):
    """FSDP2 (fully_shard, DTensor row shards, gloo): each rank orthogonalizes only the full
    matrices it owns, and after 4 steps the gathered parameters are identical on both ranks
    and equal to one process's to fp32 tolerance (fp32 Newton–Schulz, so only the order of
    the gradient reduction differs)."""
    steps, world = 4, 2
    mp.spawn(_fsdp_worker, args=(world, _free_port(), steps, str(tmp_path)), nprocs=world,
             join=True)
    single = _model()
    opt = Muon(muon_param_groups(single), lr=0.02, weight_decay=0.01, ns_dtype=torch.float32)
    for step in range(steps):
        opt.zero_grad()
        for r in range(world):
            x, y = _data(r, step)
            (nn.functional.cross_entropy(single(x), y) / world).backward()
        opt.step()
    ref, init = single.state_dict(), _model().state_dict()
    shapes = [torch.Size(s) for s in ((32, 16), (32, 32), (24, 32), (4, 24))]
    owners = assign_owners(shapes, world)
    for mode in ("split", "all"):
        r0 = torch.load(tmp_path / f"rank0-{mode}.pt", weights_only=True)
        r1 = torch.load(tmp_path / f"rank1-{mode}.pt", weights_only=True)
        seen = [r0.pop("orthogonalized"), r1.pop("orthogonalized")]
        for r, s in enumerate(seen):
            got = sorted(map(tuple, s.tolist()))
            if mode == "split":  # full matrices, only the owned ones
                want = [tuple(sh) for sh, o in zip(shapes, owners) if o == r] * steps
            else:  # distributed=False: every rank orthogonalizes every matrix
                want = [tuple(sh) for sh in shapes] * steps
            assert got == sorted(want), (mode, r)
        for k in r0:
            assert torch.equal(r0[k], r1[k]), (mode, k)
            assert not torch.equal(r0[k], init[k]), (mode, k)
            torch.testing.assert_close(r0[k], ref[k], rtol=1e-5, atol=1e-6)
