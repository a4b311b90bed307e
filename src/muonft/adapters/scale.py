"""The LoRA-aware ``lora_balanced`` scale rule, kept importable from here for compatibility;
it lives in :mod:`muonft.optim.scale` and is registered whenever :mod:`muonft.optim` is
imported."""

from muonft.optim.scale import LORA_BALANCED, lora_balanced_scale, register_lora_scale_rule

__all__ = ["LORA_BALANCED", "lora_balanced_scale", "register_lora_scale_rule"]
