"""Spectral metrics, weight drift and layer grouping of model weights (read-only)."""

from muonft.diagnostics.spectral import (
    GROUPS,
    drift,
    layer_group,
    module_path,
    spectral_metrics,
    weight_diagnostics,
)

__all__ = ["GROUPS", "drift", "layer_group", "module_path", "spectral_metrics",
           "weight_diagnostics"]
