import pytest
import torch
from torch import nn

from muonft.optim import Muon, partition_parameters


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.blocks = nn.ModuleList([nn.ModuleDict({
            "q": nn.Linear(16, 16, bias=False), "fc_in": nn.Linear(16, 64),
            "norm": nn.LayerNorm(16), "conv": nn.Conv1d(16, 16, 3)}) for _ in range(2)])
        self.head = nn.Linear(16, 50, bias=False)
        self.frozen = nn.Linear(16, 16)
        self.frozen.requires_grad_(False)


def test_partition_rules_and_table():
    part = partition_parameters(TinyLM())
    by = {r.name: (r.group, r.rule) for r in part.rows}
    assert by["embed.weight"] == ("adamw", "embedding")
    assert by["head.weight"] == ("adamw", "output head / classifier")
    assert by["blocks.0.q.weight"] == ("muon", "hidden matrix")
    assert by["blocks.0.fc_in.bias"][0] == "adamw"
    assert by["blocks.1.norm.weight"] == ("adamw", "norm")
    assert by["blocks.0.conv.weight"] == ("muon", "hidden conv (flattened)")
    assert not any(n.startswith("frozen") for n in by)  # frozen excluded
    table = part.table()
    assert "blocks.0.q.weight" in table and "16x16" in table and "hidden matrix" in table
    muon, adamw = part.groups
    assert muon["use_muon"] and not adamw["use_muon"]
    assert all(p.ndim >= 2 for p in muon["params"])
    Muon(part.groups, lr=0.01)  # the groups are accepted as they are


def test_user_patterns_override():
    part = partition_parameters(TinyLM(), adamw_names=["blocks.1.q.*"], muon_names=["head.weight"])
    by = {r.name: r.group for r in part.rows}
    assert by["blocks.1.q.weight"] == "adamw" and by["head.weight"] == "muon"
    with pytest.raises(ValueError, match="cannot be a Muon matrix"):
        partition_parameters(TinyLM(), muon_names=["blocks.0.fc_in.bias"])


def test_hf_model_partition_bert_like():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg)
    by = {r.name: r.group for r in partition_parameters(model).rows}
    assert by["bert.embeddings.word_embeddings.weight"] == "adamw"
    assert by["bert.embeddings.position_embeddings.weight"] == "adamw"
    assert by["bert.embeddings.LayerNorm.weight"] == "adamw"
    assert by["classifier.weight"] == "adamw"
    assert by["bert.encoder.layer.0.attention.self.query.weight"] == "muon"
    assert by["bert.encoder.layer.0.attention.self.query.bias"] == "adamw"
    assert by["bert.encoder.layer.0.output.dense.weight"] == "muon"
    assert by["bert.pooler.dense.weight"] == "muon"


def test_peft_lora_factors_are_muon_and_base_frozen():
    from peft import LoraConfig, inject_adapter_in_model

    model = TinyLM()
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["q"]), model)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    rows = partition_parameters(model).rows
    assert rows and all(r.group == "muon" and r.rule == "LoRA factor" for r in rows)
    assert {r.name.split(".lora_")[1].split(".")[0] for r in rows} == {"A", "B"}
