"""Untrusted checkpoint directories are data, never code (issue 19): a crafted DCP
``.metadata`` pickle is refused with one line and its payload never runs."""

from __future__ import annotations

import json
import os
import pickle
import warnings

import pytest
import torch

from muonft.atomic import sha256_file
from muonft.errors import CheckpointError
from muonft.train.checkpoint import LATEST, SHARDED_LAYOUT, open_checkpoint


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted(tmp_path, metadata: bytes):
    ckpt = tmp_path / "ckpt"
    d = ckpt / "step-0000001"
    (d / "dcp").mkdir(parents=True)
    (d / "dcp" / ".metadata").write_bytes(metadata)
    torch.save({"step": 1, "optimizer_groups": []}, d / "state.pt")
    hashes = {n: sha256_file(d / n) for n in ("state.pt", "dcp/.metadata")}  # the attacker
    (ckpt / LATEST).write_text(json.dumps({"dir": d.name, "step": 1, "layout": SHARDED_LAYOUT,
                                           "sha256": hashes}))
    return ckpt


def test_a_crafted_dcp_metadata_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    ckpt = _crafted(tmp_path, pickle.dumps(_Payload(str(marker))))
    cp = open_checkpoint(ckpt)  # hashes match: whoever crafts the dir writes them too
    with pytest.raises(CheckpointError, match=r"\.metadata is not DCP metadata .*os\.system|"
                                              r"posix\.system"):
        cp.full_weights()
    assert not marker.exists()


def test_a_pickle_of_plain_data_is_not_metadata_either(tmp_path):
    ckpt = _crafted(tmp_path, pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="holds a dict, not DCP metadata"):
        open_checkpoint(ckpt).full_weights()


def test_real_dcp_metadata_still_loads(tmp_path):
    import torch.distributed.checkpoint as dcp

    from muonft.train.checkpoint import safe_reader

    state = {"model.w": torch.randn(3, 2), "model.b": torch.randn(2).bfloat16()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(state, checkpoint_id=str(tmp_path / "dcp"), no_dist=True)
    meta = safe_reader(tmp_path / "dcp").read_metadata().state_dict_metadata
    assert set(meta) == {"model.w", "model.b"}


def test_an_edited_step_in_latest_json_is_refused(ft_env, tmp_path):
    """latest.json says step 5 (or 15) but the checkpoint holds step 10: resuming would give
    another result, so it is refused with one line."""
    from muonft.train.finetune import finetune

    root, task = ft_env
    spec = {"init": str(root / "pt"), "task": task, "steps": 12, "batch_size": 2,
            "block_size": 16, "eval_every": 0, "eval_batches": 1, "warmup": 1}
    out = tmp_path / "r"
    finetune({**spec, "steps": 10}, out, progress=False, checkpoint_every=10)
    (out / "result.json").unlink()  # as if killed after the step-10 checkpoint
    latest = out / "ckpt" / LATEST
    for edited in (5, 11):
        doc = json.loads(latest.read_text())
        latest.write_text(json.dumps({**doc, "step": edited}))
        with pytest.raises(CheckpointError, match=f"latest.json says step {edited} but the "
                                                  f"checkpoint holds step 10"):
            finetune(spec, out, progress=False)


def test_a_killed_save_leaves_no_temp_dir_behind_after_the_next_save(tmp_path):
    from muonft.train.checkpoint import save_checkpoint

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / ".step-0000002.abc.tmp").mkdir()  # what a kill during a save leaves
    (ckpt / ".latest.json.xyz.tmp").write_text("{")  # ... or during the pointer's rewrite
    save_checkpoint(ckpt, 4, {"w": torch.zeros(2)}, {"step": 4})
    assert not list(ckpt.glob(".*.tmp"))


@pytest.mark.parametrize("edit", ["list", "no_metrics", "other_spec"])
def test_a_result_json_that_is_not_this_runs_record_is_refused(ft_env, tmp_path, edit):
    from muonft.errors import ConfigError
    from muonft.train.finetune import finetune

    root, task = ft_env
    spec = {"init": str(root / "pt"), "task": task, "steps": 0, "batch_size": 2,
            "block_size": 16, "eval_batches": 1}
    out = tmp_path / "r"
    rec = finetune(spec, out, progress=False)
    path = out / "result.json"
    doc = {"list": [1, 2], "no_metrics": {"spec": rec["spec"], "status": "done"},
           "other_spec": {**rec, "spec": {**rec["spec"], "lr": 0.5}}}[edit]
    path.write_text(json.dumps(doc))
    with pytest.raises((CheckpointError, ConfigError), match=r"not a finished record|different "
                                                             r"spec"):
        finetune(spec, out, progress=False)


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(ft_env, tmp_path, monkeypatch,
                                                             capsys):
    import errno

    from muonft.cli import main
    from muonft.train import checkpoint, loop

    root, task = ft_env
    args = ["finetune", "--init", str(root / "pt"), "--task", task, "--steps", "4",
            "--batch-size", "2", "--block-size", "16", "--eval-batches", "1",
            "--checkpoint-every", "2", "--out", str(tmp_path / "r"), "--quiet"]
    real = checkpoint.save_checkpoint

    def full_at_4(ckpt_dir, step, *a, **kw):
        if step == 4:
            raise OSError(errno.ENOSPC, "No space left on device", str(ckpt_dir))
        return real(ckpt_dir, step, *a, **kw)

    monkeypatch.setattr(loop, "save_checkpoint", full_at_4)
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    monkeypatch.setattr(loop, "save_checkpoint", real)
    assert main(args) == 0  # resumes from the step-2 checkpoint
    assert json.loads((tmp_path / "r" / "result.json").read_text())["status"] == "done"


def test_out_or_ckpt_being_a_file_is_one_line(ft_env, tmp_path):
    from muonft.errors import ConfigError
    from muonft.train.finetune import finetune

    root, task = ft_env
    spec = {"init": str(root / "pt"), "task": task, "steps": 0}
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file, not a directory"):
        finetune(spec, tmp_path / "f")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "ckpt").write_text("x")
    with pytest.raises(ConfigError, match=r"ckpt is a file, not a directory"):
        finetune(spec, tmp_path / "r")


def test_running_out_of_memory_mid_run_is_one_line(ft_env, tmp_path, monkeypatch, capsys):
    from muonft.cli import main
    from muonft.train import finetune as skeleton

    root, task = ft_env

    def oom(*a, **k):
        raise MemoryError()

    monkeypatch.setattr(skeleton, "train", oom)
    assert main(["finetune", "--init", str(root / "pt"), "--task", task, "--steps", "2",
                 "--out", str(tmp_path / "r"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out of memory during the run" in err[0]


def test_a_flipped_bit_in_a_pretrained_model_is_refused(ft_env, tmp_path):
    """A finished pretrain output records its weights' sha256; a flipped bit in
    model.safetensors is refused instead of fine-tuned."""
    import shutil

    from muonft.train.finetune import finetune

    root, task = ft_env
    bad = tmp_path / "pt"
    shutil.copytree(root / "pt", bad)
    assert json.loads((bad / "run.json").read_text())["weights_sha256"]
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-5] ^= 0x01
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"does not match the sha256 its run\.json "
                                              r"recorded"):
        finetune({"init": str(bad), "task": task, "steps": 0}, tmp_path / "o")
    assert not (tmp_path / "o").exists()
