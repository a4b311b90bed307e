import pytest
import torch

from muonft.models import GPTConfig, build_gpt
from muonft.optim import partition_parameters

CFG = GPTConfig(vocab_size=64, n_layer=2, n_head=2, n_embd=32, block_size=16)


def test_forward_shapes_and_loss():
    m = build_gpt(CFG)
    x = torch.randint(0, 64, (3, 16))
    logits, loss = m(x, x)
    assert logits.shape == (3, 16, 64) and loss.ndim == 0
    assert abs(loss.item() - torch.log(torch.tensor(64.0)).item()) < 0.5  # near-uniform at init
    logits, loss = m(x[:, :5])
    assert logits.shape == (3, 5, 64) and loss is None


def test_causal_masking():
    m = build_gpt(CFG).eval()
    x = torch.randint(0, 64, (2, 16))
    y = x.clone()
    y[:, 10:] = torch.randint(0, 64, (2, 6))
    with torch.no_grad():
        a, _ = m(x)
        b, _ = m(y)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_parameter_names_and_partition():
    m = build_gpt(CFG)
    names = {n for n, _ in m.named_parameters()}
    assert {"embed.weight", "head.weight", "blocks.0.attn.q.weight", "blocks.1.attn.o.weight",
            "blocks.0.mlp.fc_in.weight", "blocks.1.mlp.fc_out.weight"} <= names
    groups = {r.name: r.group for r in partition_parameters(m).rows}
    assert groups["embed.weight"] == groups["head.weight"] == "adamw"
    assert all(g == "muon" for n, g in groups.items() if n.startswith("blocks."))


def test_tiny_preset_size():
    n = sum(p.numel() for p in build_gpt("tiny").parameters())
    assert 1_000_000 <= n <= 3_000_000


def test_bad_configs():
    with pytest.raises(ValueError, match="unknown model 'huge'"):
        build_gpt("huge")
    with pytest.raises(ValueError, match="heads of even size"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="exceeds block_size"):
        build_gpt(CFG)(torch.zeros(1, 17, dtype=torch.long))


def test_registry_round_trip():
    from muonft.models import build_model, model_config, model_kinds

    m = build_gpt(CFG)
    saved = model_config(m)
    assert saved == {"kind": "gpt", "config": CFG.to_dict()} and "gpt" in model_kinds()
    rebuilt = build_model(saved)
    assert rebuilt.config == CFG
    rebuilt.load_state_dict(m.state_dict(), strict=True)
    with pytest.raises(ValueError, match="unknown model kind 'resnet'"):
        build_model({"kind": "resnet", "config": {}})


def test_zero_init_free_gradients_reach_every_matrix():
    # Our init keeps o/fc_out/head non-zero so every matrix gets a gradient at step 0.
    m = build_gpt(CFG)
    x = torch.randint(0, 64, (2, 16))
    m(x, x)[1].backward()
    for n, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
