"""The runners take the RunSpec itself: its Muon and LoRA options reach the optimizer and the
adapters with no translation in between."""

import pytest

from muonft.errors import ConfigError
from muonft.experiments.runners import finetune_runner, get_runner
from muonft.spec import LoRAConfig, MuonConfig, RunSpec


def test_muon_options_build_the_optimizer_kwargs():
    spec = RunSpec(lr=0.01, method="lora",
                   lora=LoRAConfig(rank=4, dropout=0.1, targets=("attn.q",), variant="lora_one"),
                   muon=MuonConfig(scale="lora_balanced", orthogonalizer="exact_thin",
                                   ns_steps=3, momentum=0.9, nesterov=False,
                                   adamw_lr_ratio=0.5))
    assert spec.optimizer_kwargs() == {
        "scale": "lora_balanced", "orthogonalizer": "exact_thin", "ns_steps": 3,
        "momentum": 0.9, "nesterov": False, "adamw_lr": 0.005}
    assert RunSpec(lr=0.01, optimizer="adamw", muon=MuonConfig(ns_steps=2)) \
        .optimizer_kwargs() == {}


def test_flat_options_map_to_the_typed_parts():
    spec = RunSpec.from_options(lr=0.01, method="lora", lora_rank=4, lora_targets=["attn.q"],
                                orthogonalizer="ns5", scale="spectral", update_rank=None)
    assert spec.lora == LoRAConfig(rank=4, targets=("attn.q",))
    assert spec.muon == MuonConfig(orthogonalizer="ns5", scale="spectral")
    with pytest.raises(ConfigError, match=r"unknown finetune option\(s\) \['rnak'\]"):
        RunSpec.from_options(lr=0.01, rnak=4)


@pytest.mark.parametrize("field", [{"update_rank": 2}, {"max_drift": 0.1}])
def test_constrained_updates_reach_the_optimizer_kwargs(field):
    assert {k: RunSpec(lr=0.01, **field).optimizer_kwargs()[k] for k in field} == field


def test_vision_kind_is_the_same_runner_and_model_is_refused(tmp_path):
    assert get_runner("vision") is get_runner("finetune") is finetune_runner
    with pytest.raises(ConfigError, match="model: fine-tuning takes its model from init"):
        finetune_runner(RunSpec(lr=0.01, model="x"), tmp_path / "r")
    assert not (tmp_path / "r").exists()
