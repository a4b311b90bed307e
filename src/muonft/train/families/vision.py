"""Model source: our small ViT, from a ViT pretraining output (``muonft pretrain --model
vit-tiny``; :mod:`muonft.train.vision`).

``init`` is the output directory or its cache name (``vit-tiny-adamw-s0``), recognised by
``"kind": "vit"`` in its ``config.json``. The model trains on image tasks with its pretrained
ten-class head (the same digits), which LoRA leaves frozen; forgetting is the held-out loss of
the pretraining task (MNIST) after − before, with accuracies and the class-token feature drift.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from muonft.data.images import PRETRAIN_TASK, load_task
from muonft.models import build_model
from muonft.spec import RunSpec
from muonft.train.checkpoint import load_weights
from muonft.train.families.gpt import (
    checkpoint_config,
    checkpoint_kind,
    export_checkpoint,
    resolve_init,
    verified_weights,
)
from muonft.train.plugins import Loaded
from muonft.train.probes import ImageProbe

# Chosen by the LR probe recorded in the README ("Vision (ViT)").
DEFAULT_LR = 1e-2


class ViTSource:
    name, tasks = "vit", ("image",)
    forms = "a ViT pretrain output dir or cache name (vit-tiny-adamw-s0)"
    distributed = False

    def claims(self, init: str) -> bool:
        return checkpoint_kind(init) == "vit"

    def default_task(self, init: str) -> str:
        return "digits"

    def defaults(self, task_kind: str, optimizer: str, method: str) -> dict[str, Any]:
        return {"lr": DEFAULT_LR, "steps": 150, "batch_size": 64}

    def tokenizer(self, spec: RunSpec):
        return None

    def export(self, spec: RunSpec, model: torch.nn.Module, loaded: Loaded,
               directory: Path) -> None:
        export_checkpoint(spec, model, directory)

    def load(self, spec: RunSpec, task_kind: str, block_size: int | None,
             device: torch.device) -> Loaded:
        path = resolve_init(spec.init)
        cfg = checkpoint_config(path)
        model = build_model(cfg)
        model.load_state_dict(load_weights(path / "model.safetensors"), strict=True)
        model = model.to(device)
        size = model.config.image_size
        pretrain_task = cfg.get("pretrain_task", PRETRAIN_TASK)
        probe = ImageProbe(pretrain_task, load_task(pretrain_task, size).heldout, True)
        return Loaded(model, probe, image_size=size, identity={"weights": verified_weights(path)})


SOURCE = ViTSource()
