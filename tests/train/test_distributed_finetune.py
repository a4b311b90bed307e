"""`muonft finetune` (GPT recipe) under torchrun (2 CPU processes, gloo), full and LoRA, under
DDP and FSDP2: the same weights and metrics as one process, rank 0 alone writes, and a
checkpoint resumes at world size 1. The HF recipe and FSDP2 with constrained updates refuse."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from muonft.errors import ConfigError
from muonft.train.checkpoint import load_checkpoint
from torchrun_cli import run_cli

pytestmark = pytest.mark.slow

# Muon orthogonalizes by SVD in fp32 here, so the runs agree to fp32 rounding of the reduced
# gradients. With the default bf16 Polar Express they differ at bf16 level, and LoRA factors
# most (at step 2, A's gradient is B₁ᵀ·G with B₁ one step from zero, badly conditioned, and
# orthogonalization lifts its small singular directions): measured max 9e-4 full, up to 6e-3
# on single LoRA elements, metrics within 1e-5 relative.
WEIGHT_TOL = {"rtol": 1e-4, "atol": 1e-5}
METRICS = ("target", "zero_shot", "test", "pretrain_loss_after")


def _finetune(env, out, nproc: int, method: str = "full", parallel: str = "ddp"):
    root, task = env
    args = ["finetune", "--init", str(root / "pt"), "--task", task, "--method", method,
            "--steps", "4", "--batch-size", "4", "--block-size", "32", "--eval-batches", "2",
            "--checkpoint-every", "2", "--diag-every", "2", "--orthogonalizer", "svd",
            "--out", str(out), "--quiet", "--threads", "1"]
    return run_cli(args, nproc, {"MUONFT_CACHE": str(root / "cache"),
                                 "MUONFT_PARALLEL": parallel})


def _result(out) -> dict:
    return json.loads((out / "result.json").read_text())


def _assert_same_run(out, ref) -> None:
    """Final checkpoint weights and result metrics of ``out`` match those of ``ref``; a run
    resumed keeps the update RMS of the earlier steps from its
    checkpoint (the curves of both cover every step)."""
    a, b = load_checkpoint(ref / "ckpt")[1], load_checkpoint(out / "ckpt")[1]
    assert sorted(a) == sorted(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], **WEIGHT_TOL)
    ra, rb = _result(ref), _result(out)
    assert rb["status"] == "done" and rb["spec"] == ra["spec"]
    for k in METRICS:
        assert rb["metrics"][k] == pytest.approx(ra["metrics"][k], rel=1e-4), k
    rms_a, rms_b = ra["curves"]["update_rms"], rb["curves"]["update_rms"]
    assert [s for s, _ in rms_b] == [s for s, _ in rms_a] == [1, 2, 3, 4]
    assert [v for _, v in rms_b] == pytest.approx([v for _, v in rms_a], rel=2e-3)
    assert [s for s, _ in rb["curves"]["diag_l2_drift"]] == [2, 4]
    assert rb["diagnostics"]["overall"]["l2_drift"] == pytest.approx(
        ra["diagnostics"]["overall"]["l2_drift"], rel=2e-3)


def _roll_back(out, step: int = 2) -> None:
    """Make ``out`` look like a run killed right after its step-``step`` checkpoint."""
    from muonft.atomic import sha256_file

    ckpt = out / "ckpt"
    latest = json.loads((ckpt / "latest.json").read_text())
    for d in ckpt.glob("step-*"):
        if d.name != f"step-{step:07d}":
            shutil.rmtree(d)
    keep = ckpt / f"step-{step:07d}"
    meta = {"step": step, "dir": keep.name,
            "sha256": {str(f.relative_to(keep)): sha256_file(f)
                       for f in sorted(keep.rglob("*")) if f.is_file()}}
    if "layout" in latest:
        meta["layout"] = latest["layout"]
    (ckpt / "latest.json").write_text(json.dumps(meta))
    spec = _result(out)["spec"]
    (out / "result.json").write_text(json.dumps({"spec": spec, "status": "running"}))


@pytest.fixture(scope="module")
def one_process(ft_env, tmp_path_factory):
    """1-process reference runs, full and LoRA (do not modify)."""
    root = tmp_path_factory.mktemp("ft_ref")
    for method in ("full", "lora"):
        _finetune(ft_env, root / method, 1, method)
    return root


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_rank_full_finetune_equals_one_process_and_resumes_at_world_size_one(
        ft_env, one_process, tmp_path, parallel):
    """Full Muon fine-tune at 2 ranks = 1 process; its step-2 checkpoint (safetensors under
    DDP, DCP shards under FSDP2) resumed by one plain process ends at the same place."""
    out = tmp_path / "two"
    _finetune(ft_env, out, 2, "full", parallel)
    _assert_same_run(out, one_process / "full")
    layout = json.loads((out / "ckpt" / "latest.json").read_text()).get("layout")
    assert layout == ("dcp" if parallel == "fsdp" else None)
    assert not list(out.glob(".*.tmp"))
    _roll_back(out)
    r = _finetune(ft_env, out, 1, "full")
    assert "already finished" not in r.stdout
    _assert_same_run(out, one_process / "full")


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_rank_lora_finetune_equals_one_process(ft_env, one_process, tmp_path, parallel):
    out = tmp_path / "two"
    _finetune(ft_env, out, 2, "lora", parallel)
    _assert_same_run(out, one_process / "lora")
    ra, rb = _result(one_process / "lora"), _result(out)
    assert rb["diagnostics_lora"].keys() == ra["diagnostics_lora"].keys()


def test_recipes_without_multi_process_support_refuse(ft_env, tmp_path, monkeypatch):
    """Under WORLD_SIZE > 1: HF models, and FSDP2 with constrained Muon updates, fail
    with one ConfigError before any process group or model exists."""
    from muonft.train.finetune import finetune

    root, task = ft_env
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="the hf fine-tuning recipe runs in one"):
        finetune({"init": "hf:/nonexistent", "task": "rt-sentiment"}, tmp_path / "hf")
    monkeypatch.setenv("MUONFT_PARALLEL", "fsdp")
    with pytest.raises(ConfigError, match="update_rank: constrained Muon updates"):
        finetune({"init": str(root / "pt"), "task": task, "update_rank": 2, "steps": 1},
                 tmp_path / "ur")
    monkeypatch.setenv("MUONFT_PARALLEL", "zero3")
    with pytest.raises(ConfigError, match="MUONFT_PARALLEL='zero3' is not a parallel mode"):
        finetune({"init": str(root / "pt"), "task": task, "steps": 1}, tmp_path / "bad")
