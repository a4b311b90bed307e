"""In-house models (a nanochat-style GPT) and, later, loaders for HF models."""

from muonft.models.gpt import GPT, PRESETS, GPTConfig, build_gpt

__all__ = ["GPT", "PRESETS", "GPTConfig", "build_gpt"]
