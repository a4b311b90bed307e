"""HF image classifiers (ViT, CLIP's vision tower, DeiT, SigLIP …) for the vision recipe.

``load_hf_image_classifier("hf:<path-or-id>", num_labels=10)`` loads
``AutoModelForImageClassification`` (for a CLIP checkpoint such as
``openai/clip-vit-base-patch32`` that is ``CLIPForImageClassification``: the vision tower and a
new linear head over the mean patch token; the text tower is not loaded) and wraps it in
:class:`HFImageClassifier`, which takes the vision recipe's batches — grey images
(B, 1, S, S) in [-1, 1] — and turns them into the model's input on the fly: three channels,
resized to the model's ``image_size``, normalised with its preprocessor's mean and std. The
wrapped model keeps its HF parameter names under ``model.``, which the Muon/AdamW partition and
the layer groups already know (``patch_embedding`` / ``position_embedding`` / norms / biases /
``classifier`` → AdamW, encoder matrices → Muon). Sources resolve like every ``hf:`` init
(:func:`muonft.models.hf.resolve_source`: a local directory, or a hub id — the HF cache only
under ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from muonft.errors import DataMissingError, MuonftError
from muonft.models.hf import quiet_transformers, resolve_source

# Preprocessor statistics when a checkpoint ships none: CLIP's own, else the HF ViT default.
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
DEFAULT_MEAN, DEFAULT_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)


class HFImageClassifier(nn.Module):
    """An HF image classifier fed grey (B, 1, ``input_size``, ``input_size``) images in
    [-1, 1]; ``forward(images, targets=None) -> (logits, loss)`` like the in-house ViT."""

    # PEFT (under transformers 5) asks the root module of an injection that contains an HF
    # model for its ``base_model_prefix``; ours holds no weights of its own.
    base_model_prefix = ""

    def __init__(self, model: nn.Module, mean: tuple[float, ...], std: tuple[float, ...],
                 input_size: int = 28) -> None:
        super().__init__()
        self.model = model
        self.config = model.config
        vision = getattr(model.config, "vision_config", model.config)
        self.image_size = int(vision.image_size)
        self.num_channels = int(getattr(vision, "num_channels", 3))
        self.input_size = input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def check_images(self, x: torch.Tensor) -> None:
        s = self.input_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, s, s):
            raise ValueError(f"expected grey images of shape (B, 1, {s}, {s}), got "
                             f"{tuple(x.shape)}")

    def pixel_values(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] grey (B, 1, s, s) → normalised (B, C, S, S) at the model's size."""
        self.check_images(x)
        x = (x + 1.0) / 2.0
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False)
        x = x.expand(-1, self.num_channels, -1, -1)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.model(pixel_values=self.pixel_values(x)).logits
        loss = None if targets is None else F.cross_entropy(logits.float(), targets)
        return logits, loss

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over tokens of the last hidden state (B, hidden)."""
        out = self.model(pixel_values=self.pixel_values(x), output_hidden_states=True)
        return out.hidden_states[-1].mean(1)


def _preprocessor_stats(ref: str | Path, model_type: str) -> tuple[tuple, tuple]:
    """(mean, std) from a local ``preprocessor_config.json``, else per model type."""
    p = Path(str(ref)) / "preprocessor_config.json"
    if p.is_file():
        try:
            cfg = json.loads(p.read_text())
            return tuple(cfg["image_mean"]), tuple(cfg["image_std"])
        except (json.JSONDecodeError, KeyError, TypeError):
            pass
    if model_type in ("clip", "clip_vision_model"):
        return CLIP_MEAN, CLIP_STD
    return DEFAULT_MEAN, DEFAULT_STD


def load_hf_image_classifier(init: str, num_labels: int = 10, input_size: int = 28,
                             ) -> HFImageClassifier:
    """``hf:<path-or-id>`` as an :class:`HFImageClassifier` with a new ``num_labels`` head
    (initialised from torch's RNG: seed it first) taking grey ``input_size`` images."""
    from transformers import AutoModelForImageClassification

    ref, local_only = resolve_source(init)
    kwargs: dict[str, Any] = {"num_labels": num_labels, "ignore_mismatched_sizes": True,
                              "local_files_only": local_only, "dtype": torch.float32}
    try:
        with quiet_transformers():
            model = AutoModelForImageClassification.from_pretrained(ref, **kwargs)
    except OSError as e:
        if local_only and not Path(str(ref)).is_dir():
            raise DataMissingError(f"HF model {ref!r} is not in the local HF cache and "
                                   f"HF_HUB_OFFLINE is set; download it once with network "
                                   f"access, or pass hf:<local directory>") from None
        raise MuonftError(f"cannot load {init!r} as an image classifier: "
                          f"{str(e).splitlines()[0]}") from None
    except ValueError as e:  # a config with no image-classification class (e.g. a text model)
        raise MuonftError(f"cannot load {init!r} as an image classifier: "
                          f"{str(e).splitlines()[0]}") from None
    mean, std = _preprocessor_stats(ref, model.config.model_type)
    return HFImageClassifier(model, mean, std, input_size=input_size)
