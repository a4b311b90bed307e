"""LoRA and its variants on any nn.Module, through PEFT."""

from muonft.adapters.lora import (
    VARIANTS,
    LoRASpec,
    apply_lora,
    lora_factors,
    lora_layers,
    merge_lora,
    merged_state_dict,
    resolve_targets,
    unmerge_lora,
)

__all__ = ["VARIANTS", "LoRASpec", "apply_lora", "lora_factors", "lora_layers", "merge_lora",
           "merged_state_dict", "resolve_targets", "unmerge_lora"]
