"""Fine-tuning real-model style: tiny random HF models (BERT, Llama) from local directories."""

from __future__ import annotations

import json
from typing import ClassVar

import numpy as np
import pytest
import torch

from ft_data import write_text_tasks
from hf_tiny import save_tiny_bert, save_tiny_llama
from muonft.cli import main
from muonft.errors import ConfigError
from muonft.train import finetune as skeleton
from muonft.train.families import hf as hf_family
from muonft.train.finetune import finetune
from muonft.train.plugins import Loaded, TaskData, find_task, spec_from_options


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT, a tiny Llama, a GLUE-format SST-2 with a learnable rule, two text corpora."""
    root = tmp_path_factory.mktemp("hfft")
    return {"bert": save_tiny_bert(root / "bert"), "llama": save_tiny_llama(root / "llama"),
            **write_text_tasks(root, np.random.default_rng(0))}


@pytest.fixture
def general_corpus(tiny, monkeypatch, tmp_cache):
    monkeypatch.setattr(hf_family, "GENERAL_CORPUS", tiny["general"])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_dispatch_and_spec_defaults(tiny, tmp_path):
    s = spec_from_options(init="minilm", task="rt-sentiment", optimizer="muon", method="lora")
    assert s.lr == hf_family.DEFAULT_LR[("muon", "lora")] and s.batch_size == 32
    lm = spec_from_options(init="smollm2")
    assert lm.task == "lm:rt" and (lm.batch_size, lm.block_size) == (8, 128)
    with pytest.raises(ConfigError, match="encoder"):
        finetune(spec_from_options(init=f"hf:{tiny['bert']}", task="lm:kjv").model_copy(
            update={"init": "minilm"}), tmp_path / "o")
    with pytest.raises(ConfigError, match="unknown finetune option"):
        spec_from_options(init="minilm", nope=1)
    assert not (tmp_path / "o").exists()


def _check_record(rec, lora):
    assert rec["status"] == "done"
    m = rec["metrics"]
    for k in ("target", "zero_shot", "test", "forgetting", "update_rms"):
        assert np.isfinite(m[k]), k
    assert set(rec["diagnostics"]["overall"]) >= {"stable_rank", "l2_drift", "cosine_to_init"}
    assert "overall" in rec["diagnostics_update"]
    assert ("diagnostics_lora" in rec) == lora
    assert rec["curves"]["train_loss"] and rec["timings"]["step_s"] > 0
    assert rec["metrics"]["best_step"] == rec["best"]["step"] > 0


def test_classification_full_muon_learns_and_resumes(tiny, general_corpus, tmp_path):
    spec = {"init": f"hf:{tiny['bert']}", "task": tiny["task"], "optimizer": "muon",
            "method": "full", "lr": 2e-2, "steps": 60, "batch_size": 16, "warmup": 4,
            "eval_every": 20}
    rec = finetune(spec, tmp_path / "run", progress=False)
    _check_record(rec, lora=False)
    m = rec["metrics"]
    assert m["target_name"] == "val_accuracy" and m["higher_is_better"] is True
    assert m["target"] >= 0.8 > m["zero_shot"] - 0.2  # the word rule is learnable
    assert 0 <= m["forgetting"] <= 2 and -1 <= m["similarity_corr"] <= 1
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["metrics"] == rec["metrics"]
    again = finetune(spec, tmp_path / "run", progress=False)
    assert again["resumed"] == "already finished"


def test_classification_lora_keeps_classifier_trainable(tiny, general_corpus, tmp_path):
    spec = {"init": f"hf:{tiny['bert']}", "task": tiny["task"], "optimizer": "muon",
            "method": "lora", "lr": 1e-2, "steps": 6, "batch_size": 16, "warmup": 1,
            "lora_rank": 4, "eval_every": 0}
    rec = finetune(spec, tmp_path / "lora", progress=False)
    _check_record(rec, lora=True)
    # The new classifier trained (AdamW) although everything but the adapters is frozen.
    assert rec["diagnostics"]["head"]["l2_drift"] > 0
    assert {"attn_q", "attn_v", "mlp_in", "mlp_out"} <= set(rec["diagnostics_lora"])


def test_causal_lm_with_forgetting_on_general_corpus(tiny, general_corpus, tmp_path):
    spec = {"init": f"hf:{tiny['llama']}", "task": tiny["target"], "optimizer": "adamw",
            "method": "full", "lr": 3e-3, "steps": 8, "batch_size": 4, "block_size": 16,
            "warmup": 1, "eval_every": 0, "eval_batches": 2}
    rec = finetune(spec, tmp_path / "lm", progress=False)
    _check_record(rec, lora=False)
    m = rec["metrics"]
    assert m["target_name"] == "val_loss" and m["target"] < m["zero_shot"]
    assert m["forgetting"] == pytest.approx(m["pretrain_loss_after"] - m["pretrain_loss_before"])
    assert m["forgetting_corpus"] == tiny["general"]


def test_cli_classification_run_and_missing_model(tiny, general_corpus, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["finetune", "--init", f"hf:{tiny['bert']}", "--task", tiny["task"],
                 "--optimizer", "adamw", "--method", "lora", "--steps", "2", "--lr", "1e-3",
                 "--out", str(out), "--quiet"]) == 0
    assert "target val_accuracy" in capsys.readouterr().out
    assert json.loads((out / "result.json").read_text())["status"] == "done"
    assert main(["finetune", "--init", "minilm", "--task", "rt-sentiment", "--steps", "1",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "muonft data fetch minilm" in err[0]


def test_constrained_muon_options_on_an_hf_encoder(tiny, general_corpus, tmp_path):
    """update_rank, max_drift and lora_muon=joint reach Muon for HF models too (issue 10)."""
    base = {"init": f"hf:{tiny['bert']}", "task": tiny["task"], "optimizer": "muon",
            "lr": 2e-2, "steps": 4, "batch_size": 16, "warmup": 1, "eval_every": 0}
    rho = 0.01
    rec = finetune({**base, "method": "full", "max_drift": rho, "update_rank": 1},
                   tmp_path / "drift", progress=False)
    m = rec["metrics"]
    assert rec["status"] == "done" and m["drift_checks"] > 0 and m["drift_max"] <= rho + 1e-6
    assert m["drift_binds"] > 0  # lr 2e-2 moves far more than 1% in 4 steps
    assert rec["spec"]["update_rank"] == 1 and m["update_rms_muon"] > 0
    joint = finetune({**base, "method": "lora", "lora_rank": 2, "lora_muon": "joint"},
                     tmp_path / "joint", progress=False)
    assert joint["status"] == "done" and joint["spec"]["lora_muon"] == "joint"
    with pytest.raises(ConfigError, match="use optimizer muon"):
        finetune({**base, "optimizer": "adamw", "method": "full", "update_rank": 2},
                 tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="use method full"):
        finetune({**base, "method": "lora", "max_drift": 0.1}, tmp_path / "bad2",
                 progress=False)


def test_baselines_are_cached_per_source_manifest_and_seed(tmp_cache, monkeypatch, tmp_path):
    import torch

    import muonft.models.hf as hf

    src = tmp_path / "minilm"
    src.mkdir()
    (src / hf.MANIFEST).write_text(json.dumps({"files": {"model.safetensors": "ab" * 32}}))
    monkeypatch.setattr(hf_family, "model_dir", lambda name: src)
    calls = []

    class Probe:
        key: ClassVar[dict] = {"probe": "embedding"}

        def before(self, model):
            calls.append(1)
            return {"emb_before": torch.arange(6.0).reshape(2, 3)}

    data = TaskData(None, None, lambda m, split: {"val_accuracy": 0.123456789}, None, "d")
    task = find_task("rt-sentiment")

    def baselines(init, seed):
        spec = spec_from_options(init="minilm", task="rt-sentiment", seed=seed)
        loaded = Loaded(torch.nn.Linear(2, 2), Probe(), new_head=True,
                        identity=hf_family._identity(init))
        return skeleton._baselines(spec, loaded, task, data, 64, torch.device("cpu"))

    a, b = baselines("minilm", 3), baselines("minilm", 3)
    assert len(calls) == 1 and b["zero_shot"] == a["zero_shot"] == 0.123456789
    assert torch.equal(b["emb_before"], a["emb_before"])
    baselines("minilm", 4)  # a new head
    assert len(calls) == 2
    (src / hf.MANIFEST).write_text(json.dumps({"files": {"model.safetensors": "cd" * 32}}))
    baselines("minilm", 3)  # other weights
    assert len(calls) == 3
    for f in (tmp_cache / "baselines").iterdir():  # torn cache files are measured again
        f.write_bytes(b"torn")
    assert baselines("minilm", 3)["zero_shot"] == 0.123456789
    assert len(calls) == 4
    baselines("hf:/some/dir", 3)  # hf: inits are always measured
    baselines("hf:/some/dir", 3)
    assert len(calls) == 6


def test_a_flipped_byte_in_a_cached_baseline_is_measured_again(tmp_cache):
    """A failing disk flips a byte of a cached zero-shot: it is detected (sha256 recorded at
    write) and measured again, never used (it changed a run's zero-shot silently before)."""
    import torch

    from muonft.train.baselines import cached_measurements

    calls = []

    def compute():
        calls.append(1)
        return {"zero_shot": 7.94, "emb": torch.arange(8.0)}

    key = {"weights": "w", "task": "t"}
    assert cached_measurements(key, compute)["zero_shot"] == 7.94
    (path,) = (tmp_cache / "baselines").iterdir()
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x40  # inside the tensor bytes, after the header
    path.write_bytes(bytes(data))
    again = cached_measurements(key, compute)
    assert again["zero_shot"] == 7.94 and torch.equal(again["emb"], torch.arange(8.0))
    assert len(calls) == 2
    assert cached_measurements(key, compute)["zero_shot"] == 7.94 and len(calls) == 2


@pytest.mark.parametrize("method", ["full", "lora"])
def test_the_saved_model_loads_with_from_pretrained_and_scores_the_same(tiny, general_corpus,
                                                                        tmp_path, method):
    """OUT/model is a save_pretrained directory (LoRA merged in) with the tokenizer: the model
    AutoModelForSequenceClassification loads from it scores the held-out split exactly as the
    run recorded."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from muonft.train.tasks import CLASSIFICATION

    spec = spec_from_options(init=f"hf:{tiny['bert']}", task=tiny["task"], optimizer="muon",
                             method=method, lr=1e-2, steps=4, batch_size=16, warmup=1,
                             eval_every=0, lora_rank=4)
    rec = finetune(spec, tmp_path / "r", progress=False, save_model=True)
    model_dir = tmp_path / "r" / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    assert not any("lora" in n for n, _ in model.named_parameters())  # merged
    data = CLASSIFICATION.prepare(spec, Loaded(model, None, hf_tokenizer=tok), spec.block_size)
    assert data.evaluate(model, "test")["test_accuracy"] == rec["metrics"]["test"]
    assert data.evaluate(model, "val")["val_accuracy"] == rec["metrics"]["target"]


def test_the_saved_causal_lm_has_the_recorded_test_loss(tiny, general_corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from muonft.train.tasks import LM

    spec = spec_from_options(init=f"hf:{tiny['llama']}", task=tiny["target"], method="lora",
                             lr=1e-2, steps=4, batch_size=4, block_size=16, warmup=1,
                             eval_every=0, eval_batches=2, lora_rank=2)
    rec = finetune(spec, tmp_path / "r", progress=False, save_model=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "r" / "model")
    loaded = hf_family.SOURCE.load(spec, "lm", 16, torch.device("cpu"))
    loaded.model = model
    loaded.lm_loss = hf_family.causal_lm_loss
    data = LM.prepare(spec, loaded, 16)
    assert data.evaluate(model, "test")["test_loss"] == pytest.approx(rec["metrics"]["test"],
                                                                      rel=1e-6)
