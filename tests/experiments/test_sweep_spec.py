"""RunSpec / SweepSpec: validation messages, run ids, grid expansion."""

from __future__ import annotations

import pytest

from muonft.errors import ConfigError
from muonft.experiments.sweep_spec import expand, load_sweep_spec, parse_sweep_spec
from muonft.spec import RunSpec, cell_key, normalise, run_id


def test_run_id_is_stable_and_fills_defaults():
    a = RunSpec(lr=0.01)
    b = RunSpec.model_validate({"lr": 0.01, "steps": 200, "kind": "finetune", "seed": 0})
    assert run_id(a) == run_id(b)
    assert len(run_id(a)) == 16
    # floats are normalised: 0.1 + 0.2 is 0.30000000000000004
    assert run_id(RunSpec(lr=0.1 + 0.2)) == run_id(RunSpec(lr=0.3))


@pytest.mark.parametrize("change", [
    {"lr": 0.02}, {"seed": 1}, {"optimizer": "adamw"}, {"method": "lora"}, {"steps": 100},
    {"init": "gpt-tiny-muon-s0"}, {"task": "lm:kjv"}, {"muon": {"scale": "spectral"}},
    {"weight_decay": 0.1}, {"update_rank": 4},
])
def test_run_id_sensitive_to_fields_that_change_the_run(change):
    assert run_id(RunSpec(lr=0.01)) != run_id(RunSpec.model_validate({"lr": 0.01, **change}))


def test_run_id_ignores_settings_that_cannot_matter():
    full = RunSpec(lr=0.01, method="full")
    assert run_id(full) == run_id(RunSpec(lr=0.01, method="full", lora={"rank": 64}))
    adamw = RunSpec(lr=0.01, optimizer="adamw")
    assert run_id(adamw) == run_id(RunSpec(lr=0.01, optimizer="adamw",
                                           muon={"scale": "spectral"}))
    # ...but they do matter where they apply
    assert run_id(RunSpec(lr=0.01, method="lora")) != \
        run_id(RunSpec(lr=0.01, method="lora", lora={"rank": 64}))
    assert "lora" not in normalise(full) and "muon" not in normalise(adamw)
    assert cell_key(RunSpec(lr=0.01, seed=3)) == cell_key(RunSpec(lr=0.5, seed=0))


def test_expand_per_optimizer_lr_grids_and_dedup():
    s = parse_sweep_spec({
        "name": "t", "base": {"kind": "synthetic", "task": "synthetic"},
        "grid": {"optimizer": ["adamw", "muon"], "method": ["full", "lora"],
                 "lr": {"adamw": [1e-3, 3e-3], "muon/lora": [1e-2], "muon": [3e-3, 1e-2, 3e-2]},
                 "lora.rank": [4, 8]},
        "seeds": [0, 1]})
    specs = expand(s)
    # adamw: full (rank irrelevant → 1 cell) + lora (2 ranks) → 3 cells × 2 lrs;
    # muon: full 1 cell × 3 lrs + lora 2 cells × 1 lr; all × 2 seeds
    assert len(specs) == (3 * 2 + 3 + 2) * 2
    assert len({run_id(x) for x in specs}) == len(specs)
    assert {x.lr for x in specs if x.optimizer == "muon" and x.method == "lora"} == {1e-2}


@pytest.mark.parametrize("data, words", [
    ({"name": "x", "base": {"lr": 1, "bogus": 1}}, ["base.bogus", "allowed", "optimizer"]),
    ({"name": "x", "base": {"optimizer": "sgd", "lr": 1}}, ["base.optimizer", "'adamw'"]),
    ({"name": "x", "grid": {"lora.rnk": [1]}, "base": {"lr": 1}}, ["lora.rnk", "lora.rank"]),
    ({"name": "x", "base": {"lora": {"rank": 0}, "lr": 1}}, ["base.lora.rank", "greater than 0"]),
    ({"name": "x", "grid": {"lr": [0.1, -1]}}, ["grid.lr", "greater than 0"]),
    ({"name": "x", "grid": {"lr": {"sgd": [1]}}}, ["sgd", "adamw"]),
    ({"name": "x", "wokers": 2, "base": {"lr": 1}}, ["wokers", "workers"]),
    ({"name": "x", "base": {"steps": "many", "lr": 1}}, ["base.steps", "integer"]),
    ({"base": {"lr": 1}}, ["name", "missing"]),
    ({"name": "x", "grid": {"optimizer": ["adamw"]}}, ["no lr"]),
])
def test_invalid_sweep_specs_name_the_field(data, words):
    with pytest.raises(ConfigError) as e:
        parse_sweep_spec(data, "s.yaml")
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, (w, msg)


def test_load_sweep_spec_yaml_errors(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("name: x\nbase: {lr: [1, \n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_sweep_spec(p)
    p.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_sweep_spec(p)


def test_huge_grids_and_booleans_are_refused_before_expansion():
    huge = {"name": "h", "base": {"kind": "synthetic", "task": "synthetic", "lr": 0.1},
            "grid": {"steps": list(range(1, 1001)), "lora.rank": list(range(1, 1001))}}
    with pytest.raises(ConfigError, match=r"grid: 1,000,000 runs exceed the cap of 100,000"):
        parse_sweep_spec(huge)
    with pytest.raises(ConfigError, match=r"base.steps: Input should be a valid integer"):
        parse_sweep_spec({"name": "b", "base": {"steps": True, "lr": 0.1}})
    with pytest.raises(ConfigError, match="lr: expected a number, got True"):
        parse_sweep_spec({"name": "b", "base": {"lr": True}})


def test_a_binary_spec_file_is_named_in_its_error(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_bytes(b"\x80\x81 binary")
    with pytest.raises(ConfigError, match=r"s\.yaml is not a UTF-8 text file \(byte 0"):
        load_sweep_spec(path)
