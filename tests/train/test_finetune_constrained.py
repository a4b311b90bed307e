"""Constrained-update Muon options (issue 10) through the finetune recipe, the CLI and the
sweep runner adapter: each runs and is recorded in result.json."""

import json
import os

import numpy as np
import pytest

from ft_data import pretrain_tiny_gpt, write_lm_corpora
from muonft.cli import main
from muonft.errors import ConfigError
from muonft.train.finetune import finetune
from muonft.train.plugins import spec_from_options


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ft_constrained")
    old = os.environ.get("MUONFT_CACHE")
    os.environ["MUONFT_CACHE"] = str(root / "cache")
    pre, task = write_lm_corpora(root, np.random.default_rng(0))
    pretrain_tiny_gpt(root, pre, steps=2, eval_batches=1)
    yield root, task
    if old is None:
        os.environ.pop("MUONFT_CACHE")
    else:
        os.environ["MUONFT_CACHE"] = old


def _spec(env, **kw):
    root, task = env
    return dict(init=str(root / "pt"), task=task, steps=3, batch_size=2, block_size=32,
                eval_every=0, eval_batches=1, warmup=1) | kw


@pytest.mark.parametrize("options", [
    {"update_rank": 2}, {"max_drift": 1e-3}, {"method": "lora", "lora_muon": "joint"},
])
def test_finetune_runs_each_option_and_records_it(env, tmp_path, options):
    rec = finetune(_spec(env, **options), tmp_path / "r", progress=False)
    assert rec["status"] == "done"
    doc = json.loads((tmp_path / "r" / "result.json").read_text())
    for k, v in options.items():
        assert doc["spec"][k] == v
    m = doc["metrics"]
    if "max_drift" in options:
        assert m["drift_checks"] > 0 and 0 <= m["drift_bind_rate"] <= 1
        assert m["drift_max"] <= 1e-3 * (1 + 1e-4)
    if "update_rank" in options:
        assert m["low_rank_matrices"] > 0


def test_cli_flags_reach_result_json(env, tmp_path, capsys):
    root, task = env
    out = tmp_path / "cli"
    main(["finetune", "--init", str(root / "pt"), "--task", task, "--steps", "2",
          "--batch-size", "2", "--block-size", "32", "--eval-batches", "1", "--quiet",
          "--update-rank", "2", "--max-drift", "0.05", "--out", str(out)])
    spec = json.loads((out / "result.json").read_text())["spec"]
    assert spec["update_rank"] == 2 and spec["max_drift"] == 0.05
    out2 = tmp_path / "cli-lora"
    main(["finetune", "--init", str(root / "pt"), "--task", task, "--steps", "2",
          "--batch-size", "2", "--block-size", "32", "--eval-batches", "1", "--quiet",
          "--method", "lora", "--lora-muon", "joint", "--out", str(out2)])
    assert json.loads((out2 / "result.json").read_text())["spec"]["lora_muon"] == "joint"


@pytest.mark.parametrize("kw,match", [
    ({"optimizer": "adamw", "update_rank": 2}, "Muon option"),
    ({"update_rank": 0}, "update_rank"),
    ({"max_drift": -1.0}, "max_drift"),
    ({"lora_muon": "joint"}, "method lora"),
    ({"lora_muon": "both", "method": "lora"}, "lora_muon"),
    ({"method": "lora", "max_drift": 0.1}, "max_drift"),
])
def test_invalid_constraint_options_are_refused(kw, match):
    with pytest.raises(ConfigError, match=match):
        spec_from_options(**kw)


def test_the_spec_passes_the_options_to_the_optimizer():
    from muonft.spec import RunSpec

    kw = RunSpec(lr=1e-2, update_rank=4, max_drift=0.1).optimizer_kwargs()
    assert kw["update_rank"] == 4 and kw["max_drift"] == 0.1
    kw = RunSpec(lr=1e-2, method="lora", lora_muon="joint").optimizer_kwargs()
    assert kw["lora_muon"] == "joint"
    assert "update_rank" not in RunSpec(lr=1e-2).optimizer_kwargs()
