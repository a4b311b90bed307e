"""The typed run spec (muonft.spec): ids stay those of earlier versions, stored specs of
earlier versions still load, and a results store written before the one-recipe refactor is
recognised as done and still reports."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from muonft.cli import main
from muonft.errors import ConfigError
from muonft.experiments.sweep_spec import expand, load_sweep_spec
from muonft.spec import RunSpec, normalise, run_id, same_run, stored_spec
from muonft.store import Store

OLD = Path(__file__).parent / "fixtures" / "store_v0"


def test_run_ids_of_earlier_versions_are_unchanged():
    """42 specs over every field and kind, hashed by the pre-refactor code."""
    ids = json.loads((OLD / "run_ids.json").read_text())
    assert len(ids) == 42
    for rid, dump in ids.items():
        assert run_id(RunSpec.model_validate(dump)) == rid


def test_fields_added_later_are_hashed_only_off_their_default():
    a = RunSpec(lr=0.01)
    assert "diag_every" not in normalise(a)
    b = a.model_copy(update={"diag_every": 5})
    assert normalise(b)["diag_every"] == 5 and run_id(b) != run_id(a)


def test_an_old_store_is_recognised_as_done_and_reports(tmp_path, capsys):
    shutil.copy(OLD / "results.sqlite", tmp_path / "results.sqlite")
    store = Store(tmp_path / "results.sqlite")
    done = {r["id"] for r in store.rows("SELECT id FROM runs WHERE status = 'done'")}
    store.close()
    want = [run_id(s) for y in ("sweep.yaml", "sweep_b.yaml")
            for s in expand(load_sweep_spec(OLD / y))]
    assert len(want) == 26 and set(want) <= done  # the base grids; adaptive LRs are extra
    for y in ("sweep.yaml", "sweep_b.yaml"):  # nothing to run again
        assert main(["sweep", str(OLD / y), "--out", str(tmp_path), "--workers", "0",
                     "--quiet"]) == 0
        assert "0 run now" in capsys.readouterr().out
    assert main(["report", str(tmp_path)]) == 0
    assert "38 done, 0 diverged, 0 failed" in (tmp_path / "report" / "report.md").read_text()


def test_stored_specs_of_earlier_versions_load():
    flat = {"init": "gpt-tiny-adamw-s0", "task": "lm:rt", "optimizer": "muon",
            "method": "lora", "lr": 0.01, "steps": 200, "batch_size": 16, "block_size": 128,
            "seed": 0, "weight_decay": 0.0, "warmup": 10, "schedule": "cosine",
            "grad_clip": 1.0, "eval_every": 50, "eval_batches": 10, "lora_rank": 8,
            "lora_alpha": 16.0, "lora_variant": "lora", "scale": "match_adamw_rms",
            "lora_dropout": 0.0, "lora_targets": None, "orthogonalizer": "polar_express",
            "ns_steps": 5, "momentum": 0.95, "nesterov": True, "adamw_lr_ratio": 1.0,
            "diag_every": 0, "update_rank": None, "max_drift": None, "lora_muon": None}
    spec = stored_spec(flat)  # the flat record of the GPT recipe before the typed spec
    assert spec == RunSpec(lr=0.01, method="lora", block_size=128)
    assert stored_spec(spec.model_dump(mode="json")) == spec
    assert stored_spec([1, 2]) is None and stored_spec({"lr": -1}) is None
    assert same_run(spec, spec.model_copy(update={"kind": "vision"})) == []
    assert same_run(spec, spec.model_copy(update={"lr": 0.02})) == ["lr"]


@pytest.mark.parametrize(("options", "msg"), [
    ({"optimizer": "adamw", "update_rank": 2}, "update_rank: Muon options; use optimizer muon"),
    ({"lora_muon": "joint"}, "lora_muon 'joint' steps LoRA factor pairs; use method lora"),
    ({"method": "lora", "max_drift": 0.1}, "max_drift bounds full weights"),
    ({"seed": 10**23}, "seed: Input should be less than"),
    ({"lr": 0.0}, "lr: Input should be greater than 0"),
])
def test_cross_field_rules_name_the_fields(options, msg):
    with pytest.raises(ConfigError, match=msg):
        RunSpec.from_options(**{"lr": 1e-2, **options})
