"""The small ViT: shapes, errors, registry round trip, partition, a loss decrease."""

import pytest
import torch

from muonft.models import build_model, model_config
from muonft.models.vit import PRESETS, ViTConfig, build_vit
from muonft.optim import partition_parameters

SMALL = ViTConfig(image_size=8, patch_size=4, dim=16, depth=2, n_head=2)


def test_shapes_and_parameter_names():
    m = build_vit(SMALL)
    logits, loss = m(torch.randn(3, 1, 8, 8), torch.tensor([0, 1, 2]))
    assert logits.shape == (3, 10) and loss.ndim == 0
    assert m.patches(torch.randn(3, 1, 8, 8)).shape == (3, 4, 16)
    names = dict(m.named_parameters())
    assert names["pos_embed"].shape == (1, 5, 16) and names["cls_token"].shape == (1, 1, 16)
    for n in ("patch_embed.weight", "blocks.1.attn.q.weight", "blocks.1.attn.o.bias",
              "blocks.0.mlp.fc_in.weight", "blocks.0.mlp.fc_out.weight", "blocks.0.norm1.weight",
              "blocks.0.norm2.bias", "norm.weight", "head.weight", "head.bias"):
        assert n in names
    assert set(m.hidden_matrices()) == {f"blocks.{i}.{s}.weight" for i in range(2)
                                        for s in ("attn.q", "attn.k", "attn.v", "attn.o",
                                                  "mlp.fc_in", "mlp.fc_out")}


def test_patches_are_row_major_blocks():
    x = torch.arange(64.0).view(1, 1, 8, 8)
    p = build_vit(SMALL).patches(x)
    assert p[0, 1].tolist() == x[0, 0, :4, 4:].reshape(-1).tolist()  # top-right patch
    assert p[0, 2].tolist() == x[0, 0, 4:, :4].reshape(-1).tolist()  # bottom-left patch


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 8, 8), (2, 8, 8), (1, 1, 8, 4)])
def test_wrong_image_size_names_expected_and_given(shape):
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 1, 8, 8\), got"):
        build_vit(SMALL)(torch.randn(*shape))


def test_bad_configs():
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        ViTConfig(image_size=28, patch_size=5)
    with pytest.raises(ValueError, match="heads"):
        ViTConfig(dim=30, n_head=4)
    with pytest.raises(ValueError, match="positive integer"):
        ViTConfig(depth=0)
    with pytest.raises(ValueError, match="unknown ViT 'vit-huge'"):
        build_vit("vit-huge")


def test_registry_round_trip():
    m = build_vit("vit-tiny")
    saved = model_config(m)
    assert saved["kind"] == "vit" and saved["config"] == PRESETS["vit-tiny"].to_dict()
    m2 = build_model(saved)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(m.eval()(x)[0], m2.eval()(x)[0])


def test_partition_puts_only_block_matrices_on_muon():
    """The study's CLIP rule: patch embedding, class/position embeddings, norms, biases and
    head on AdamW; the block matrices on Muon."""
    m = build_vit(SMALL)
    rows = {r.name: r for r in partition_parameters(m).rows}
    muon = {n for n, r in rows.items() if r.group == "muon"}
    assert muon == set(m.hidden_matrices())
    assert rows["patch_embed.weight"].rule == "embedding"
    assert rows["cls_token"].rule == rows["pos_embed"].rule == "embedding"
    assert rows["blocks.0.norm1.weight"].rule == "norm"
    assert rows["blocks.0.attn.q.bias"].group == "adamw"
    assert rows["head.weight"].rule == "output head / classifier"
    assert len(rows) == len(list(m.parameters()))


def test_loss_decreases_on_a_separable_task():
    torch.manual_seed(0)
    m = build_vit(SMALL)
    y = torch.arange(32) % 4
    x = torch.randn(32, 1, 8, 8) * 0.1
    for i, c in enumerate(y.tolist()):  # the class lights one quadrant (one patch)
        x[i, 0, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 1.0
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    first = None
    for _ in range(40):
        _, loss = m(x, y)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
