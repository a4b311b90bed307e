"""Read-only measurements of model weights: spectra, drift, LoRA factors, update RMS.

```python
from muonft.diagnostics import layer_group, weight_diagnostics, lora_diagnostics
diag = weight_diagnostics(now, init)               # {group: {stable_rank, ..., l2_drift}}
upd = weight_diagnostics(now, init, update=True)   # spectra of ΔW = W − W₀
```
"""

from muonft.diagnostics.lora import lora_diagnostics
from muonft.diagnostics.spectral import (
    DRIFT_KEYS,
    SPECTRAL_KEYS,
    batched_spectral_metrics,
    drift,
    lowrank_spectral_metrics,
    metrics_from_singular_values,
    parameter_drift,
    spectral_metrics,
    weight_diagnostics,
)
from muonft.diagnostics.update_rms import UpdateRMSTracker
from muonft.models.naming import GROUPS, layer_group, module_path

__all__ = [
    "DRIFT_KEYS",
    "GROUPS",
    "SPECTRAL_KEYS",
    "UpdateRMSTracker",
    "batched_spectral_metrics",
    "drift",
    "layer_group",
    "lora_diagnostics",
    "lowrank_spectral_metrics",
    "metrics_from_singular_values",
    "module_path",
    "parameter_drift",
    "spectral_metrics",
    "weight_diagnostics",
]
