"""Per-rank orthogonalization time of distributed Muon vs one process (CPU, gloo).

Two processes (one thread each) orthogonalize the Muon matrices of a GPT-like stack with
:func:`muonft.optim.distributed.distributed_orthogonalize` — each rank its owned half, then one
``all_gather`` (DDP) — and with :func:`muonft.optim.distributed.sharded_orthogonalize`, where
each rank starts from its row shards of every matrix (FSDP2): one ``all_to_all`` to the owners,
the owned half, one ``all_to_all`` back. The same work is timed in one process doing every
matrix. Prints medians over interleaved repeats and the ratios (expect ≈ 0.5× compute per rank;
the exchanges add the rest), and how many matrix entries each rank holds in full.

    python benchmarks/distributed_muon.py [--layers 8] [--dim 512] [--repeats 7]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def matrices(layers: int, dim: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = [(dim, dim)] * 4 + [(4 * dim, dim), (dim, 4 * dim)]
    return [torch.randn(s, generator=g) for _ in range(layers) for s in shapes]


def ortho_fn():
    from muonft.optim.muon import orthogonalize_batched

    return lambda ds: orthogonalize_batched(ds, "polar_express", 5, torch.bfloat16)


def _worker(rank: int, world: int, port: int, args, q) -> None:
    from muonft.optim.distributed import (
        assign_owners,
        distributed_orthogonalize,
        shard_rows,
        sharded_orthogonalize,
    )

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mats, fn = matrices(args.layers, args.dim), ortho_fn()
    owners = assign_owners([m.shape for m in mats], world)
    mine = [m for m, o in zip(mats, owners) if o == rank]
    shards = [m.split(shard_rows(m.shape[0], world))[rank].clone() for m in mats]
    shapes = [m.shape for m in mats]
    compute, total, sharded = [], [], []
    for _ in range(args.repeats):
        dist.barrier()
        t0 = time.perf_counter()
        fn(mine)
        compute.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        distributed_orthogonalize(mats, fn)
        total.append(time.perf_counter() - t0)
        dist.barrier()
        t0 = time.perf_counter()
        sharded_orthogonalize(shards, shapes, fn)
        sharded.append(time.perf_counter() - t0)
    full = sum(m.numel() for m in mine)
    q.put((rank, statistics.median(compute), statistics.median(total),
           statistics.median(sharded), full))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    mats, fn = matrices(args.layers, args.dim), ortho_fn()
    fn(mats[:2])  # warm-up
    single = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fn(mats)
        single.append(time.perf_counter() - t0)
    t1 = statistics.median(single)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(2, port, args, q), nprocs=2, join=True,
                       start_method="spawn")
    res = sorted(q.get() for _ in range(2))
    numel = sum(m.numel() for m in mats)
    print(f"{args.layers} layers × 6 matrices, d={args.dim}, polar_express bf16, 1 thread per "
          f"process, median of {args.repeats}")
    print(f"one process, all matrices:        {1e3 * t1:8.1f} ms")
    for rank, comp, tot, shd, full in res:
        print(f"rank {rank}: own share {1e3 * comp:8.1f} ms ({comp / t1:.2f}×), with all_gather "
              f"(DDP) {1e3 * tot:8.1f} ms ({tot / t1:.2f}×), from row shards with 2 all_to_all "
              f"(FSDP2) {1e3 * shd:8.1f} ms ({shd / t1:.2f}×); full matrices held "
              f"{full / numel:.2f} of all entries")


if __name__ == "__main__":
    main()
