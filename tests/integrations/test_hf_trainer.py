"""Our Muon inside a real transformers.Trainer: partition, loss goes down, PEFT models."""

from __future__ import annotations

import pytest
import torch

from hf_tiny import save_tiny_bert
from muonft.integrations.hf import MuonTrainer, create_optimizer
from muonft.optim import Muon

POS, NEG = ["great", "good", "fun", "love"], ["awful", "bad", "boring", "hate"]


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


def _model_and_data(bert_dir, n=64):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    tok = AutoTokenizer.from_pretrained(bert_dir)
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (n,), generator=g).tolist()
    words = [(POS if y else NEG)[int(torch.randint(0, 4, (1,), generator=g))] for y in labels]
    enc = tok([f"the movie was very {w}" for w in words], padding="max_length", max_length=8)
    rows = [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "labels": labels[i]} for i in range(n)]
    batch = {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}
    return model, rows, batch


def _args(tmp_path, **kw):
    from transformers import TrainingArguments

    base = dict(output_dir=str(tmp_path / "out"), max_steps=25, per_device_train_batch_size=16,
                learning_rate=2e-2, lr_scheduler_type="constant", logging_steps=5,
                save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                dataloader_num_workers=0)
    return TrainingArguments(**{**base, **kw})


@torch.no_grad()
def _loss(model, batch):
    model.eval()
    out = float(model(**batch).loss)
    model.train()
    return out


def test_partition_of_a_bert_classifier(bert_dir):
    model, _, _ = _model_and_data(bert_dir, n=2)
    opt = create_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, Muon)
    group = {r.name: r.group for r in opt.partition.rows}
    for name, g in group.items():
        if name.startswith("bert.embeddings.") or "LayerNorm" in name or name.endswith(".bias") \
                or name.startswith("classifier."):
            assert g == "adamw", name
    assert group["bert.encoder.layer.0.attention.self.query.weight"] == "muon"
    assert group["bert.encoder.layer.1.output.dense.weight"] == "muon"
    decay = {n: g["weight_decay"] for g in opt.param_groups for n in g["names"]}
    assert decay["classifier.weight"] == 0.1 and decay["classifier.bias"] == 0.0
    assert decay["bert.embeddings.LayerNorm.weight"] == 0.0
    with pytest.raises(ValueError, match="lr must be > 0"):
        create_optimizer(model, lr=0)


def test_adamw_groups_take_their_own_lr_and_weight_decay(bert_dir):
    model, _, _ = _model_and_data(bert_dir, n=2)
    opt = create_optimizer(model, lr=3e-3, weight_decay=0.1, adamw_lr=1e-3,
                           adamw_weight_decay=0.01)
    by_name = {n: g for g in opt.param_groups for n in g["names"]}
    muon = by_name["bert.encoder.layer.0.attention.self.query.weight"]
    head = by_name["classifier.weight"]
    assert (muon["use_muon"], muon["lr"], muon["weight_decay"]) == (True, 3e-3, 0.1)
    assert (head["use_muon"], head["lr"], head["weight_decay"]) == (False, 1e-3, 0.01)
    assert by_name["classifier.bias"]["weight_decay"] == 0.0
    with pytest.raises(ValueError, match="adamw_lr must be > 0"):
        create_optimizer(model, adamw_lr=-1.0)


def test_trainer_with_our_optimizer_lowers_the_loss(bert_dir, tmp_path):
    from transformers import Trainer

    model, rows, batch = _model_and_data(bert_dir)
    before = _loss(model, batch)
    opt = create_optimizer(model, lr=2e-2)
    trainer = Trainer(model=model, args=_args(tmp_path), train_dataset=rows,
                      optimizers=(opt, None))
    trainer.train()
    assert trainer.optimizer.optimizer is opt or trainer.optimizer is opt
    assert _loss(model, batch) < 0.5 * before


def test_muon_trainer_builds_from_training_arguments_and_trains_peft(bert_dir, tmp_path):
    from peft import LoraConfig, TaskType, get_peft_model

    model, rows, batch = _model_and_data(bert_dir)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8,
                                             target_modules=["query", "value"]))
    before = _loss(model, batch)
    trainer = MuonTrainer(model=model, args=_args(tmp_path, weight_decay=0.01,
                                                  adam_beta2=0.98, max_steps=30),
                          train_dataset=rows, muon_options={"scale": "match_adamw_rms"})
    trainer.train()
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") \
        else trainer.optimizer
    assert isinstance(opt, Muon)
    rows_by_group = {}
    for r in opt.partition.rows:
        rows_by_group.setdefault(r.group, []).append(r.name)
    assert rows_by_group["muon"] and all(".lora_" in n for n in rows_by_group["muon"])
    assert all("classifier" in n for n in rows_by_group["adamw"])  # modules_to_save only
    assert all(g["betas"] == (0.9, 0.98) for g in opt.param_groups if not g["use_muon"])
    assert _loss(model, batch) < before
