import pytest
import torch

from muonft.adapters import (
    VARIANTS,
    LoRASpec,
    apply_lora,
    lora_factors,
    merge_and_unload,
    merge_lora,
    merged_state_dict,
    trainable_parameter_names,
    unmerge_lora,
)
from muonft.errors import ConfigError

TARGETS = {f"blocks.{i}.{s}" for i in range(2)
           for s in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc_in", "mlp.fc_out")}


@pytest.mark.parametrize("variant", ["lora", "rslora", "dora", "pissa", "olora"])
def test_init_leaves_output_unchanged(tiny, tokens, variant):
    m = tiny().eval()
    with torch.no_grad():
        before = m(tokens)
    apply_lora(m, LoRASpec(rank=4, alpha=8, variant=variant))
    with torch.no_grad():
        after = m(tokens)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)
    B_zero = all(float(B.detach().abs().sum()) == 0 for _, _, B, _ in lora_factors(m))
    assert B_zero == (variant in ("lora", "rslora", "dora"))


def test_default_targets_and_only_factors_train(tiny):
    m = apply_lora(tiny(), LoRASpec(rank=4))
    assert {n for n, *_ in lora_factors(m)} == TARGETS
    names = trainable_parameter_names(m)
    assert len(names) == 2 * len(TARGETS)
    assert all(".lora_A." in n or ".lora_B." in n for n in names)
    assert not any(p.requires_grad for n, p in m.named_parameters() if n not in names)


def test_targets_by_ending(tiny):
    m = apply_lora(tiny(), LoRASpec(rank=2, targets=("attn.q", "fc_out")))
    assert {n for n, *_ in lora_factors(m)} == {"blocks.0.attn.q", "blocks.1.attn.q",
                                                "blocks.0.mlp.fc_out", "blocks.1.mlp.fc_out"}
    m = apply_lora(tiny(), LoRASpec(rank=2, targets="head"))  # explicit targets may be heads
    assert [n for n, *_ in lora_factors(m)] == ["head"]
    spec = LoRASpec(rank=2, targets=["attn.v"])  # a list (from YAML) becomes a tuple
    assert spec.targets == ("attn.v",) and hash(spec)
    m = apply_lora(tiny(), spec)
    assert [n for n, *_ in lora_factors(m)] == ["blocks.0.attn.v", "blocks.1.attn.v"]


def test_scaling_of_variants(tiny):
    for variant, s in (("lora", 2.0), ("rslora", 4.0), ("lora_one", 4.0)):
        spec = LoRASpec(rank=4, alpha=8, variant=variant)
        assert spec.scaling == s
    m = apply_lora(tiny(), LoRASpec(rank=4, alpha=8))
    assert {s for *_, s in lora_factors(m)} == {2.0}
    m = apply_lora(tiny(), LoRASpec(rank=4, alpha=8, variant="rslora"))
    assert {s for *_, s in lora_factors(m)} == {4.0}


def _trained(tiny, variant="lora"):
    m = apply_lora(tiny(), LoRASpec(rank=4, variant=variant))
    with torch.no_grad():
        for _, _, B, _ in lora_factors(m):
            B.normal_(std=0.1)
    return m


@pytest.mark.parametrize("variant", ["lora", "dora"])
def test_merge_unmerge_roundtrip_and_plain_checkpoint(tiny, tokens, variant):
    m = _trained(tiny, variant)
    base = {n: p.detach().clone() for n, p in m.named_parameters() if "base_layer" in n}
    with torch.no_grad():
        out = m(tokens)
    merge_lora(m)
    merged = {n: p.detach().clone() for n, p in m.named_parameters() if n in base}
    assert any(not torch.allclose(merged[n], base[n]) for n in base)
    with torch.no_grad():
        torch.testing.assert_close(m(tokens), out, rtol=1e-4, atol=1e-4)
    unmerge_lora(m)
    for n, p in m.named_parameters():
        if n in base:
            torch.testing.assert_close(p, base[n], rtol=0, atol=1e-5)
    plain = tiny()
    plain.load_state_dict(merged_state_dict(m))
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens), out, rtol=1e-4, atol=1e-4)


def test_merge_and_unload_gives_plain_module(tiny, tokens):
    m = _trained(tiny)
    with torch.no_grad():
        out = m(tokens)
    plain = merge_and_unload(m)
    assert type(plain.blocks[0].attn.q) is torch.nn.Linear
    assert set(dict(plain.named_parameters())) == set(dict(tiny().named_parameters()))
    with torch.no_grad():
        torch.testing.assert_close(plain(tokens), out, rtol=1e-4, atol=1e-4)
    assert lora_factors(m)  # the original keeps its adapters
    assert merge_and_unload(m, inplace=True) is m and not lora_factors(m)


@pytest.mark.parametrize("variant", ["pissa", "olora"])
def test_residual_inits_reconstruct_base_weight(tiny, variant):
    m0 = tiny()
    W0 = m0.blocks[0].attn.q.weight.detach().clone()
    m = apply_lora(m0, LoRASpec(rank=4, alpha=4, variant=variant, targets=("attn.q",)))
    layer = m.blocks[0].attn.q
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    recon = layer.base_layer.weight + layer.scaling["default"] * B @ A
    torch.testing.assert_close(recon, W0, rtol=1e-4, atol=1e-5)
    assert B.abs().sum() > 0


def test_pissa_factors_are_top_singular_directions(tiny):
    m0 = tiny()
    W0 = m0.blocks[0].mlp.fc_in.weight.detach().clone()
    m = apply_lora(m0, LoRASpec(rank=3, alpha=3, variant="pissa", targets=("0.mlp.fc_in",)))
    layer = m.blocks[0].mlp.fc_in
    BA = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    U, S, Vh = torch.linalg.svd(W0, full_matrices=False)
    torch.testing.assert_close(BA, U[:, :3] * S[:3] @ Vh[:3], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("spec", "msg"), [
    (dict(rank=0), "rank must be a positive integer, got 0"),
    (dict(rank=-2), "rank must be a positive integer, got -2"),
    (dict(rank=2.5), "rank must be a positive integer, got 2.5"),
    (dict(variant="lora-xl"), "unknown LoRA variant 'lora-xl'; choose one of lora, rslora"),
    (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
    (dict(alpha=0), "alpha must be > 0, got 0"),
    (dict(gamma=-1), "gamma must be > 0, got -1"),
    (dict(targets=()), "targets must name at least one module"),
])
def test_bad_specs(spec, msg):
    with pytest.raises(ConfigError, match=msg):
        LoRASpec(**spec)
    assert set(VARIANTS) == {"lora", "rslora", "pissa", "dora", "olora", "lora_one"}


def test_bad_targets_rank_and_grad_fn(tiny):
    with pytest.raises(ValueError, match=r"LoRA target .mlp\.gate. matches no linear module"):
        apply_lora(tiny(), LoRASpec(targets=("mlp.gate",)))
    with pytest.raises(ValueError, match=r"LoRA target .blocks\.0\.attn. matches no linear"):
        apply_lora(tiny(), LoRASpec(targets=("blocks.0.attn",)))  # a module, not a linear
    with pytest.raises(ValueError, match=r"rank 17 exceeds min\(in, out\) = 16 of blocks\.0"):
        apply_lora(tiny(), LoRASpec(rank=17))
    with pytest.raises(ValueError, match="'lora_one' needs grad_fn="):
        apply_lora(tiny(), LoRASpec(variant="lora_one"))
    with pytest.raises(ValueError, match="grad_fn is only used by variant 'lora_one'"):
        apply_lora(tiny(), LoRASpec(), grad_fn=lambda m: None)
    m = apply_lora(tiny(), LoRASpec(rank=2))
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(m, LoRASpec(rank=2))
    with pytest.raises(ValueError, match="no attention or MLP linear"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoRASpec(rank=2))


def test_pissa_uses_fast_svd_on_large_layers(tiny, monkeypatch):
    import muonft.adapters.lora as lora_mod

    m = tiny()
    small = lora_mod._peft_config(m, LoRASpec(rank=2, variant="pissa"), ["blocks.0.attn.q"])
    assert small.init_lora_weights == "pissa"
    monkeypatch.setattr(lora_mod, "PISSA_FAST_MIN_DIM", 16)
    cfg = lora_mod._peft_config(m, LoRASpec(rank=2, variant="pissa"), ["blocks.0.attn.q"])
    assert cfg.init_lora_weights == "pissa_niter_16"
    W0 = m.blocks[0].attn.q.weight.detach().clone()
    apply_lora(m, LoRASpec(rank=2, alpha=2, variant="pissa", targets=("0.attn.q",)))
    layer = m.blocks[0].attn.q
    BA = layer.lora_B["default"].weight @ layer.lora_A["default"].weight
    torch.testing.assert_close(layer.base_layer.weight + BA, W0, rtol=1e-4, atol=1e-5)
    assert float(torch.linalg.matrix_rank(BA.detach())) == 2
