import pytest
import torch

from muonft.adapters import (
    LoRASpec,
    apply_lora,
    lora_factors,
    merge_lora,
    merged_state_dict,
    unmerge_lora,
)
from muonft.models import GPTConfig, build_gpt
from muonft.optim import partition_parameters

CFG = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16)


def _model():
    torch.manual_seed(0)
    return build_gpt(CFG)


def _x():
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora"])
def test_zero_init_leaves_output_unchanged(variant):
    m = _model().eval()
    with torch.no_grad():
        before = m(_x())[0]
    apply_lora(m, LoRASpec(rank=4, alpha=8, variant=variant))
    with torch.no_grad():
        after = m(_x())[0]
    torch.testing.assert_close(before, after, rtol=1e-5, atol=1e-5)


def test_default_targets_and_only_factors_train():
    m = apply_lora(_model(), LoRASpec(rank=4))
    wrapped = {n for n, _, _, _ in lora_factors(m)}
    assert wrapped == {f"blocks.{i}.{s}" for i in range(2)
                       for s in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc_in",
                                 "mlp.fc_out")}
    trainable = [n for n, p in m.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    rows = partition_parameters(m).rows
    assert {r.name for r in rows} == set(trainable) and all(r.group == "muon" for r in rows)


def test_scaling_of_variants():
    m = apply_lora(_model(), LoRASpec(rank=4, alpha=8))
    assert {s for *_, s in lora_factors(m)} == {2.0}
    m = apply_lora(_model(), LoRASpec(rank=4, alpha=8, variant="rslora"))
    assert {s for *_, s in lora_factors(m)} == {4.0}


def test_merge_unmerge_roundtrip_and_plain_checkpoint():
    m = apply_lora(_model(), LoRASpec(rank=4))
    with torch.no_grad():
        for _, _A, B, _ in lora_factors(m):
            B.normal_()
    base = {n: p.detach().clone() for n, p in m.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        out = m(_x())[0]
    merge_lora(m)
    unmerge_lora(m)
    for n, p in m.named_parameters():
        if n in base:
            torch.testing.assert_close(p, base[n], rtol=0, atol=1e-5)
    plain = _model()
    plain.load_state_dict(merged_state_dict(m))
    with torch.no_grad():
        torch.testing.assert_close(plain(_x())[0], out, rtol=1e-4, atol=1e-4)


def test_pissa_reconstructs_base_weight():
    m0 = _model()
    W0 = m0.blocks[0].attn.q.weight.detach().clone()
    m = apply_lora(m0, LoRASpec(rank=4, alpha=4, variant="pissa", targets=("attn.q",)))
    layer = m.blocks[0].attn.q
    A = layer.lora_A["default"].weight
    B = layer.lora_B["default"].weight
    recon = layer.base_layer.weight + layer.scaling["default"] * B @ A
    torch.testing.assert_close(recon, W0, rtol=1e-4, atol=1e-5)
    assert B.abs().sum() > 0  # PiSSA: not a zero init


@pytest.mark.parametrize(("spec", "msg"), [
    (dict(rank=0), "rank must be a positive integer, got 0"),
    (dict(rank=-2), "rank must be a positive integer, got -2"),
    (dict(variant="lora-xl"), "unknown LoRA variant 'lora-xl'"),
    (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(ValueError, match=msg):
        LoRASpec(**spec)


def test_bad_targets_and_rank():
    with pytest.raises(ValueError, match=r"LoRA target .mlp\.gate. matches no linear module"):
        apply_lora(_model(), LoRASpec(targets=("mlp.gate",)))
    with pytest.raises(ValueError, match=r"rank 40 exceeds min\(in, out\) = 32"):
        apply_lora(_model(), LoRASpec(rank=40))
