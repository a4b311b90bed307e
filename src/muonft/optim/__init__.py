"""The Muon optimizer, its orthogonalizers, and the Muon/AdamW parameter partition.

```python
from muonft.optim import Muon, muon_param_groups, orthogonalize
opt = Muon(muon_param_groups(model), lr=0.02)
```
"""

from muonft.optim.muon import SCALE_RULES, Muon, register_scale_rule, update_scale
from muonft.optim.orthogonalize import ORTHOGONALIZERS, orthogonality_error, orthogonalize
from muonft.optim.partition import Partition, PartitionRow, muon_param_groups, partition_parameters
from muonft.optim.scale import LORA_BALANCED, lora_balanced_scale

__all__ = [
    "LORA_BALANCED",
    "ORTHOGONALIZERS",
    "SCALE_RULES",
    "Muon",
    "Partition",
    "PartitionRow",
    "lora_balanced_scale",
    "muon_param_groups",
    "orthogonality_error",
    "orthogonalize",
    "partition_parameters",
    "register_scale_rule",
    "update_scale",
]
