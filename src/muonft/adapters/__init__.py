"""LoRA and its variants on any nn.Module, through PEFT (the LoRA-aware Muon scale rule
``lora_balanced`` is one of :mod:`muonft.optim`'s).

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

__all__ = ["ADAPTED_GROUPS", "VARIANTS", "LoRASpec", "apply_lora", "lora_factors",
           "lora_layers", "lora_one_init", "lora_pairs", "merge_and_unload", "merge_lora",
           "merged_state_dict", "resolve_targets", "top_singular_triplets",
           "trainable_parameter_names", "unmerge_lora"]
