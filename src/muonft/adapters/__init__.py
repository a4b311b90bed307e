"""LoRA and its variants on any nn.Module, through PEFT; plus a LoRA-aware Muon scale rule.

```python
from muonft.adapters import LoRASpec, apply_lora, merged_state_dict
model = apply_lora(model, LoRASpec(rank=8, alpha=16, variant="lora"))
```
"""

from muonft.adapters.lora import (
    ADAPTED_GROUPS,
    VARIANTS,
    LoRASpec,
    apply_lora,
    lora_factors,
    lora_layers,
    lora_one_init,
    lora_pairs,
    merge_and_unload,
    merge_lora,
    merged_state_dict,
    resolve_targets,
    top_singular_triplets,
    trainable_parameter_names,
    unmerge_lora,
)
from muonft.adapters.scale import LORA_BALANCED, lora_balanced_scale, register_lora_scale_rule

register_lora_scale_rule()

__all__ = ["ADAPTED_GROUPS", "LORA_BALANCED", "VARIANTS", "LoRASpec", "apply_lora",
           "lora_balanced_scale", "lora_factors", "lora_layers", "lora_one_init", "lora_pairs",
           "merge_and_unload", "merge_lora", "merged_state_dict", "register_lora_scale_rule",
           "resolve_targets", "top_singular_triplets", "trainable_parameter_names",
           "unmerge_lora"]
