"""`muonft pretrain` under torchrun (2 CPU processes, gloo): the same weights as one process,
rank 0 alone writes, and a checkpoint resumes at another world size — under DDP, and under
FSDP2 (``MUONFT_PARALLEL=fsdp``: sharded parameters, DCP checkpoints)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from muonft.train.checkpoint import load_weights
from torchrun_cli import free_port, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    words = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light"]
    path = root / "pre.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(words, 60)) for _ in range(60)))
    return root, f"file:{path}"


def _pretrain(root, corpus, out, nproc: int, optimizer: str = "muon", steps: int = 4,
              parallel: str = "ddp"):
    args = ["pretrain", "--optimizer", optimizer, "--steps", str(steps), "--batch-size", "4",
            "--corpus", corpus, "--tokenizer-corpus", corpus, "--vocab-size", "300",
            "--block-size", "32", "--out", str(out), "--checkpoint-every", "2", "--quiet",
            "--threads", "1"]
    return run_cli(args, nproc, {"MUONFT_CACHE": str(root / "cache"),
                                 "MUONFT_PARALLEL": parallel})


def _weights(out):
    return load_weights(out / "model.safetensors")


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_torchrun_two_ranks_equal_one_process(corpus, tmp_path, optimizer):
    root, text = corpus
    _pretrain(root, text, tmp_path / "one", 1, optimizer)
    _pretrain(root, text, tmp_path / "two", 2, optimizer)
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    # DDP's all-reduce sums in another order than one process: gradients agree to fp32
    # rounding; Muon's Newton–Schulz runs in bf16, which turns that into bf16-level update
    # differences (the fp32 optimizer-level equality is tests/optim/test_distributed.py)
    tol = {"rtol": 1e-4, "atol": 1e-5} if optimizer == "adamw" else {"rtol": 0, "atol": 3e-3}
    for k in a:
        torch.testing.assert_close(b[k], a[k], **tol)
    run = json.loads((tmp_path / "two" / "run.json").read_text())
    assert run["status"] == "done" and run["metrics"]["val_loss"] > 0
    assert not list((tmp_path / "two").glob(".*.tmp"))


def _roll_back(run_dir, step: int = 2) -> None:
    """Make ``run_dir`` look like a run killed right after its step-``step`` checkpoint (either
    layout: safetensors pair or DCP directory)."""
    from muonft.atomic import sha256_file

    ckpt = run_dir / "ckpt"
    latest = json.loads((ckpt / "latest.json").read_text())
    for d in ckpt.glob("step-*"):
        if d.name != f"step-{step:07d}":
            shutil.rmtree(d)
    keep = ckpt / f"step-{step:07d}"
    files = sorted(f for f in keep.rglob("*") if f.is_file())
    meta = {"step": step, "dir": keep.name,
            "sha256": {str(f.relative_to(keep)): sha256_file(f) for f in files}}
    if "layout" in latest:
        meta["layout"] = latest["layout"]
    (ckpt / "latest.json").write_text(json.dumps(meta))
    (run_dir / "model.safetensors").unlink()
    run = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({"spec": run["spec"], "status": "running"}))


def test_checkpoint_resumes_at_another_world_size(corpus, tmp_path):
    root, text = corpus
    _pretrain(root, text, tmp_path / "ref", 1, steps=4)
    _pretrain(root, text, tmp_path / "cut", 2, steps=4)
    cut = tmp_path / "cut"
    _roll_back(cut)  # as if the 2-rank run was killed after its step-2 checkpoint
    r = _pretrain(root, text, cut, 1, steps=4)  # resume with one process
    assert "already finished" not in r.stdout
    a, b = _weights(tmp_path / "ref"), _weights(cut)
    for k in a:  # Muon (bf16 Newton–Schulz): see the tolerance note above
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=3e-3)


# FSDP2: reduce-scatter sums in yet another order; the bf16 Newton–Schulz turns that into
# update differences of the same size as under DDP (measured: max 3.1e-3 FSDP, 2.5e-3 DDP
# after 4 steps; the optimizer-level fp32 equality is in tests/optim/test_distributed.py)
FSDP_TOL = {"muon": {"rtol": 0, "atol": 5e-3}, "adamw": {"rtol": 1e-4, "atol": 1e-5}}


@pytest.fixture(scope="module")
def one_process_muon(corpus, tmp_path_factory):
    """A 1-process 4-step Muon pretrain with checkpoints at steps 2 and 4 (do not modify)."""
    root, text = corpus
    out = tmp_path_factory.mktemp("ref") / "one"
    _pretrain(root, text, out, 1, steps=4)
    return out


def test_fsdp_two_ranks_equal_one_process_and_resume_at_world_size_one(
        corpus, tmp_path, one_process_muon):
    """FSDP2 at 2 ranks: the weights of one process; checkpoints are DCP shards (one file per
    rank); rolled back to step 2 and resumed by one plain process, it ends where one process
    does."""
    root, text = corpus
    two = tmp_path / "two"
    _pretrain(root, text, two, 2, parallel="fsdp")
    ref = _weights(one_process_muon)
    for k, v in _weights(two).items():
        torch.testing.assert_close(v, ref[k], **FSDP_TOL["muon"])
    latest = json.loads((two / "ckpt" / "latest.json").read_text())
    assert latest["layout"] == "dcp" and {"dcp/__0_0.distcp", "dcp/__1_0.distcp",
                                          "dcp/.metadata", "state.pt"} <= set(latest["sha256"])
    run = json.loads((two / "run.json").read_text())
    ref_run = json.loads((one_process_muon / "run.json").read_text())
    assert run["status"] == "done"
    assert run["metrics"]["val_loss"] == pytest.approx(ref_run["metrics"]["val_loss"], rel=1e-3)
    _roll_back(two)
    r = _pretrain(root, text, two, 1)  # DCP shards of 2 ranks → one process, no FSDP
    assert "already finished" not in r.stdout
    for k, v in _weights(two).items():
        torch.testing.assert_close(v, ref[k], **FSDP_TOL["muon"])


def test_single_process_checkpoint_resumes_under_fsdp_at_two_ranks(
        corpus, tmp_path, one_process_muon):
    """1 → 2: a 1-process checkpoint (safetensors) resumes under FSDP2 at 2 ranks (each rank
    takes its rows of every weight and state tensor), and that run's own DCP checkpoint
    resumes under FSDP2 again."""
    root, text = corpus
    cut = tmp_path / "cut"
    shutil.copytree(one_process_muon, cut)
    _roll_back(cut)
    r = _pretrain(root, text, cut, 2, parallel="fsdp")
    assert "already finished" not in r.stdout
    ref = _weights(one_process_muon)
    for k, v in _weights(cut).items():
        torch.testing.assert_close(v, ref[k], **FSDP_TOL["muon"])
    latest = json.loads((cut / "ckpt" / "latest.json").read_text())
    assert latest["layout"] == "dcp" and latest["step"] == 4


def test_fsdp_adamw_equals_one_process(corpus, tmp_path):
    """torch.optim.AdamW on FSDP2 shards (the ``--optimizer adamw`` recipe)."""
    root, text = corpus
    _pretrain(root, text, tmp_path / "one", 1, "adamw")
    _pretrain(root, text, tmp_path / "two", 2, "adamw", parallel="fsdp")
    a, b = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], **FSDP_TOL["adamw"])


def _tiny_gpt():
    from muonft.models import build_gpt

    torch.manual_seed(0)
    return build_gpt(dict(vocab_size=40, n_layer=2, n_head=2, n_embd=16, block_size=8))


def _steps(model, opt, steps, rank=0, world=1, first=0):
    for step in range(first, first + steps):
        g = torch.Generator().manual_seed(step)
        x = torch.randint(0, 40, (4, 8), generator=g)
        opt.zero_grad()
        model(x[rank::world], x[rank::world])[1].backward()
        opt.step()


def _dcp_worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from muonft.optim import Muon, muon_param_groups
    from muonft.optim.distributed import local_shard
    from muonft.train import distributed as dd
    from muonft.train.checkpoint import open_checkpoint, save_sharded_checkpoint

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    ctx = dd.DistContext(rank=rank, world=world, device=torch.device("cpu"), mode="fsdp")
    try:
        models, opts = [], []
        for _ in range(2):
            m = dd.shard_model(_tiny_gpt(), ctx)
            models.append(m)
            opts.append(Muon(muon_param_groups(m), lr=0.02, weight_decay=0.1,
                             ns_dtype=torch.float32))
        _steps(models[0], opts[0], 2, rank, world)
        save_sharded_checkpoint(Path(out) / "ckpt", 2, models[0], opts[0], {"run": {}})
        open_checkpoint(Path(out) / "ckpt").restore(models[1], opts[1])
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert type(b).__name__ == "DTensor" and torch.equal(a.to_local(), b.to_local())
        for g0, g1 in zip(opts[0].param_groups, opts[1].param_groups):
            for a, b in zip(g0["params"], g1["params"]):
                s0, s1 = opts[0].state[a], opts[1].state[b]
                assert s0.keys() == s1.keys() and s0
                for k in s0:
                    assert torch.equal(local_shard(s0[k]), local_shard(s1[k])), k
        for m, o in zip(models, opts):  # and they go on identically (AdamW step counts too)
            _steps(m, o, 1, rank, world, first=2)
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            assert torch.equal(a.to_local(), b.to_local())
        full = dd.full_state_dict(models[0])
        ref = {k: v.full_tensor() for k, v in  # momentum of every Muon matrix, gathered
               ((n, opts[0].state[p]["momentum_buffer"])
                for n, p in models[0].named_parameters() if p.ndim == 2 and "blocks" in n)}
        if rank == 0:
            torch.save({"weights": full, "momentum": ref}, f"{out}/after3.pt")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_dcp_checkpoint_round_trip_is_exact(tmp_path):
    """A DCP checkpoint of an FSDP2 model with Muon (+ AdamW groups) restores bit for bit into
    a fresh sharded model at the same world size (which then steps identically), and into one
    plain process, where one more step gives the 2-rank run's next weights and momentum (to
    fp32 rounding of the reduced gradient; fp32 Newton–Schulz)."""
    import torch.multiprocessing as mp

    from muonft.optim import Muon, muon_param_groups
    from muonft.train.checkpoint import load_checkpoint, open_checkpoint

    mp.spawn(_dcp_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    after3 = torch.load(tmp_path / "after3.pt", weights_only=True)
    step, weights, state = load_checkpoint(tmp_path / "ckpt")
    assert step == 2 and set(weights) == set(after3["weights"])
    assert len(state["optimizer"]["state"]) == len(list(_tiny_gpt().parameters()))
    model = _tiny_gpt()
    opt = Muon(muon_param_groups(model), lr=0.02, weight_decay=0.1, ns_dtype=torch.float32)
    open_checkpoint(tmp_path / "ckpt").restore(model, opt)
    for k, v in model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    _steps(model, opt, 1, first=2)  # the step the workers took after their checkpoint
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, after3["weights"][k], rtol=1e-5, atol=1e-6)
    for n, p in model.named_parameters():
        if n in after3["momentum"]:
            torch.testing.assert_close(opt.state[p]["momentum_buffer"], after3["momentum"][n],
                                       rtol=1e-5, atol=1e-7)
