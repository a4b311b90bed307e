"""A model family and a task added as plugins (one module + one registration line each) run
through the fine-tuning skeleton unchanged: optimizer groups, LoRA, update RMS, diagnostics,
forgetting, resume and the CLI all apply to them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from muonft.cli import main
from muonft.errors import ConfigError
from muonft.spec import RunSpec
from muonft.train import plugins
from muonft.train.finetune import finetune, steps_for_epochs

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def toy_plugins(monkeypatch):
    monkeypatch.setattr(plugins, "_SOURCES", list(plugins._SOURCES))
    monkeypatch.setattr(plugins, "_TASKS", list(plugins._TASKS))
    plugins.register_source("toy_family:SOURCE")
    plugins.register_task("toy_family:TASK")


@pytest.mark.parametrize("optimizer,method", [("muon", "full"), ("adamw", "lora")])
def test_a_registered_family_runs_through_the_skeleton(tmp_path, optimizer, method):
    spec = plugins.spec_from_options(init="toy:0", optimizer=optimizer, method=method,
                                     lora_rank=2, diag_every=10)
    assert (spec.task, spec.steps, spec.lr) == ("toy-regression", 30, 3e-2)  # its defaults
    rec = finetune(spec, tmp_path / "r", progress=False)
    m = rec["metrics"]
    assert rec["status"] == "done" and m["target"] < m["zero_shot"]  # the loss fell
    assert m["update_rms"] > 0 and "forgetting" in m and m["best_step"] in (10, 20, 30)
    assert [s for s, _ in rec["curves"]["diag_l2_drift"]] == [10, 20, 30]
    assert "mlp_in" in rec["diagnostics"]
    assert ("diagnostics_lora" in rec) == (method == "lora")
    if optimizer == "muon":
        assert m["update_rms_muon"] > 0
    assert finetune(spec, tmp_path / "r", progress=False)["resumed"] == "already finished"
    assert steps_for_epochs(spec, 1.0) == 8


def test_the_cli_reaches_a_registered_family(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["finetune", "--init", "toy:1", "--steps", "5", "--out", str(out),
                 "--quiet"]) == 0
    assert "target val_loss" in capsys.readouterr().out
    assert RunSpec.model_validate(json.loads((out / "result.json").read_text())["spec"]) \
        .init == "toy:1"


def test_a_task_the_family_does_not_train_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"task: 'lm:rt' \(lm\) does not fit init 'toy:0' "
                                          r"\(toy\), which trains regression tasks"):
        finetune(RunSpec(init="toy:0", task="lm:rt", lr=0.01), tmp_path / "o")
    with pytest.raises(ConfigError, match="task: unknown task 'toy-classes'; choose one of: "):
        finetune(RunSpec(init="toy:0", task="toy-classes", lr=0.01), tmp_path / "o")
    with pytest.raises(ConfigError, match="LoRA target 'attn_q' matches no"):
        finetune(RunSpec(init="toy:0", task="toy-regression", lr=0.01, method="lora",
                         lora={"targets": ["attn_q"]}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_asking_a_family_without_export_to_save_the_model_fails_up_front(tmp_path):
    spec = plugins.spec_from_options(init="toy:0")
    with pytest.raises(ConfigError, match="the toy family cannot export a model"):
        finetune(spec, tmp_path / "o", save_model=True)
    assert not (tmp_path / "o").exists()
