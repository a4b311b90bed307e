"""The finetune runner's adapter from a RunSpec to the engine's spec."""

import pytest

from muonft.errors import ConfigError
from muonft.experiments.runners import finetune_kwargs
from muonft.experiments.spec import LoRAConfig, MuonConfig, RunSpec
from muonft.train.finetune import default_spec

NEW_KEYS = ("lora_dropout", "lora_targets", "orthogonalizer", "ns_steps", "momentum",
            "nesterov", "adamw_lr_ratio")


def test_muon_and_lora_options_pass_through():
    spec = RunSpec(lr=0.01, method="lora",
                   lora=LoRAConfig(rank=4, dropout=0.1, targets=("attn.q",), variant="lora_one"),
                   muon=MuonConfig(scale="lora_balanced", orthogonalizer="exact_thin",
                                   ns_steps=3, momentum=0.9, nesterov=False,
                                   adamw_lr_ratio=0.5))
    got = default_spec(**finetune_kwargs(spec))
    assert {k: got[k] for k in ("lora_rank", "lora_variant", "scale", *NEW_KEYS)} == {
        "lora_rank": 4, "lora_variant": "lora_one", "scale": "lora_balanced",
        "lora_dropout": 0.1, "lora_targets": ["attn.q"], "orthogonalizer": "exact_thin",
        "ns_steps": 3, "momentum": 0.9, "nesterov": False, "adamw_lr_ratio": 0.5}


def test_default_options_are_left_to_the_engine():
    kw = finetune_kwargs(RunSpec(lr=0.01, method="lora"))
    assert not set(NEW_KEYS) & set(kw)  # an engine without them (HF) still accepts the spec
    assert default_spec(**kw)["orthogonalizer"] == "polar_express"
    # Muon settings of an AdamW run cannot change it and are not passed.
    kw = finetune_kwargs(RunSpec(lr=0.01, optimizer="adamw", muon=MuonConfig(ns_steps=2)))
    assert "ns_steps" not in kw


@pytest.mark.parametrize("field", [{"update_rank": 2}, {"max_drift": 0.1},
                                   {"lora_muon": "joint"}])
def test_constrained_updates_are_passed_through(field):
    kw = finetune_kwargs(RunSpec(lr=0.01, **field))
    assert {k: kw[k] for k in field} == field
    with pytest.raises(ConfigError, match="does not support model"):  # still unimplemented
        finetune_kwargs(RunSpec(lr=0.01, model="x", **field))
