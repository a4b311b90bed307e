"""hf: image classifiers (CLIP vision tower, ViT) on tiny random configs saved locally."""

import pytest
import torch

from image_fakes import fetch_fakes
from muonft.models.hf_vision import CLIP_MEAN, load_hf_image_classifier
from muonft.optim import partition_parameters


def save_tiny_clip(path):
    """A full (text + vision) tiny CLIP, as a hub CLIP checkpoint is stored."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=64, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8)
    CLIPModel(cfg).save_pretrained(path)
    return path


def save_tiny_vit(path):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, image_size=16, patch_size=8, num_labels=3)
    ViTForImageClassification(cfg).save_pretrained(path)
    return path


def test_clip_vision_tower_with_a_new_head(tmp_path):
    m = load_hf_image_classifier(f"hf:{save_tiny_clip(tmp_path / 'clip')}", num_labels=10)
    assert type(m.model).__name__ == "CLIPForImageClassification"
    assert not any("text_model" in n for n, _ in m.named_parameters())
    assert m.image_size == 32 and torch.allclose(m.mean.flatten(), torch.tensor(CLIP_MEAN))
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    logits, loss = m(x, torch.tensor([1, 2, 3]))
    assert logits.shape == (3, 10) and loss.ndim == 0
    assert m.pixel_values(x).shape == (3, 3, 32, 32) and m.features(x).shape == (3, 16)
    with pytest.raises(ValueError, match=r"expected grey images of shape \(B, 1, 28, 28\)"):
        m(torch.rand(3, 3, 32, 32))
    rows = {r.name.removeprefix("model."): r for r in partition_parameters(m).rows}
    assert rows["classifier.weight"].group == "adamw"
    assert rows["vision_model.embeddings.patch_embedding.weight"].group == "adamw"
    assert rows["vision_model.embeddings.position_embedding.weight"].group == "adamw"
    assert rows["vision_model.embeddings.class_embedding"].group == "adamw"
    assert rows["vision_model.encoder.layers.0.self_attn.q_proj.weight"].group == "muon"
    assert rows["vision_model.encoder.layers.1.mlp.fc2.weight"].group == "muon"
    assert rows["vision_model.encoder.layers.1.mlp.fc2.bias"].group == "adamw"


def test_vit_classifier_gets_a_ten_way_head(tmp_path):
    m = load_hf_image_classifier(f"hf:{save_tiny_vit(tmp_path / 'vit')}", num_labels=10)
    assert m(torch.zeros(2, 1, 28, 28))[0].shape == (2, 10)
    assert m.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_missing_directory_is_a_clear_error(tmp_path):
    from muonft.errors import DataMissingError

    with pytest.raises(DataMissingError, match="no model directory"):
        load_hf_image_classifier(f"hf:{tmp_path / 'nope'}")


def test_lora_finetune_of_an_hf_clip(tmp_path, tmp_cache, monkeypatch):
    from muonft.train.finetune import finetune

    fetch_fakes(monkeypatch)
    init = f"hf:{save_tiny_clip(tmp_path / 'clip')}"
    rec = finetune(dict(init=init, task="digits", method="lora", optimizer="muon",
                        lora_rank=2, steps=3, batch_size=8, warmup=1, eval_every=3),
                   tmp_path / "ft", progress=False)
    m = rec["metrics"]
    assert rec["status"] == "done" and m["forgetting_name"].startswith("mnist heldout feature")
    assert m["forgetting"] == pytest.approx(m["feature_drift"])
    assert rec["diagnostics"]["head"]["l2_drift"] > 0  # the new classifier trains under LoRA
    assert "diagnostics_lora" in rec
