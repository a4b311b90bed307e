"""apply_lora on the in-house GPT and on tiny HF models built from configs (no hub access)."""

import pytest
import torch

from muonft.adapters import (
    LoRASpec,
    apply_lora,
    lora_factors,
    merge_and_unload,
    merge_lora,
    unmerge_lora,
)
from muonft.models import GPTConfig, build_gpt
from muonft.optim import partition_parameters

CFG = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16)


def _x(vocab=64, T=16):
    return torch.randint(0, vocab, (2, T), generator=torch.Generator().manual_seed(1))


def test_gpt_lora_one_and_partition():
    torch.manual_seed(0)
    m = build_gpt(CFG)
    with torch.no_grad():
        before = m(_x())[0]

    def grad_fn(model):
        model(_x(), _x())[1].backward()

    apply_lora(m, LoRASpec(rank=4, variant="lora_one", preserve_output=True), grad_fn=grad_fn)
    with torch.no_grad():
        torch.testing.assert_close(m(_x())[0], before, rtol=1e-4, atol=1e-4)
    assert {n for n, *_ in lora_factors(m)} == {
        f"blocks.{i}.{s}" for i in range(2)
        for s in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc_in", "mlp.fc_out")}
    rows = partition_parameters(m).rows  # Muon gets exactly the factors, never frozen weights
    assert {r.name for r in rows} == {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(r.group == "muon" and ".lora_" in r.name for r in rows)


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
                     bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def test_hf_gpt2_conv1d_targets_merge_and_lora_one():
    m = _gpt2()
    with torch.no_grad():
        ref = m(_x()).logits
    apply_lora(m, LoRASpec(rank=4))
    ends = {n.split(".", 3)[-1] for n, *_ in lora_factors(m)}
    assert ends == {"attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"}
    with torch.no_grad():
        torch.testing.assert_close(m(_x()).logits, ref, rtol=1e-4, atol=1e-5)
        for _, _, B, _ in lora_factors(m):
            B.normal_(std=0.1)
        out = m(_x()).logits
    plain = merge_and_unload(m)
    with torch.no_grad():
        torch.testing.assert_close(plain(_x()).logits, out, rtol=1e-4, atol=1e-4)

    # LoRA-One through Conv1D's transposed (in, out) weight: the base correction must match.
    def grad_fn(model):
        x = _x()
        model(x, labels=x).loss.backward()

    m = apply_lora(_gpt2(), LoRASpec(rank=2, variant="lora_one", preserve_output=True),
                   grad_fn=grad_fn)
    with torch.no_grad():
        torch.testing.assert_close(m(_x()).logits, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_hf_default_targets_exclude_heads_and_embeddings(family):
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama":
        m = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16))
        want = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    else:
        m = tf.BertForSequenceClassification(tf.BertConfig(
            vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=16, num_labels=2))
        want = {"attention.self.query", "attention.self.key", "attention.self.value",
                "attention.output.dense", "intermediate.dense", "output.dense"}
    m.eval()
    with torch.no_grad():
        ref = m(_x()).logits
    apply_lora(m, LoRASpec(rank=4))
    names = [n for n, *_ in lora_factors(m)]
    assert {n.split(".0.", 1)[1] for n in names} == want
    merge_lora(m)
    unmerge_lora(m)
    with torch.no_grad():
        torch.testing.assert_close(m(_x()).logits, ref, rtol=1e-4, atol=1e-5)
