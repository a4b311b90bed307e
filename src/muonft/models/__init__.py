"""In-house models (a nanochat-style GPT, a small ViT) and the registry that rebuilds them.

A saved model directory holds ``config.json`` = ``{"kind": "gpt", "config": {...}}``;
:func:`build_model` turns that dict back into a freshly initialised module, and
:func:`model_config` is its inverse. New model kinds (the ViT, HF loaders) register a builder
with :func:`register_model` instead of adding another ``if`` to every caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from muonft.models.gpt import GPT, PRESETS, GPTConfig, build_gpt
from muonft.models.vit import ViT, ViTConfig, build_vit

ModelBuilder = Callable[[dict[str, Any]], nn.Module]

_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(kind: str, builder: ModelBuilder) -> None:
    """Register ``builder(config_dict) -> nn.Module`` under ``kind`` (e.g. ``"gpt"``)."""
    if kind in _REGISTRY and _REGISTRY[kind] is not builder:
        raise ValueError(f"model kind {kind!r} is already registered")
    _REGISTRY[kind] = builder


def model_kinds() -> tuple[str, ...]:
    """The registered model kinds."""
    return tuple(_REGISTRY)


def build_model(saved: dict[str, Any]) -> nn.Module:
    """A fresh model from ``{"kind": ..., "config": {...}}`` (what ``config.json`` holds)."""
    kind = saved.get("kind") if isinstance(saved, dict) else None
    if kind not in _REGISTRY:
        raise ValueError(f"unknown model kind {kind!r}; registered kinds: "
                         f"{', '.join(_REGISTRY)}")
    return _REGISTRY[kind](dict(saved.get("config", {})))


def model_config(model: nn.Module) -> dict[str, Any]:
    """The ``{"kind", "config"}`` dict that :func:`build_model` turns back into ``model``."""
    if isinstance(model, GPT):
        return {"kind": "gpt", "config": model.config.to_dict()}
    if isinstance(model, ViT):
        return {"kind": "vit", "config": model.config.to_dict()}
    raise ValueError(f"no registered kind for {type(model).__name__}; register one with "
                     f"muonft.models.register_model")


register_model("gpt", build_gpt)
register_model("vit", build_vit)

__all__ = ["GPT", "PRESETS", "GPTConfig", "ViT", "ViTConfig", "build_gpt", "build_model",
           "build_vit", "model_config", "model_kinds", "register_model"]
