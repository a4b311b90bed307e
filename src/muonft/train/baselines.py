"""Measurements taken before fine-tuning starts, cached across runs.

Every run of a sweep that starts from the same pretrained weights measures the same zero-shot
metric and the same "before" side of the forgetting probe; recomputing them costs several
evaluations per run. :func:`cached_measurements` stores them in
``$MUONFT_CACHE/baselines/<sha256 of the key>.safetensors`` (written atomically); the key must
hold everything the values depend on — the recipes put in the weights' sha256 (or a
sha-pinned source manifest), the evaluation data, sizes, seeds that shape the model, the
device type and the library versions. Each file records the sha256 of its tensors' bytes
(safetensors metadata) and is verified before use: a torn, flipped or foreign cache file is
measured again and overwritten, never read as a wrong number; an unwritable cache only costs
the time to measure again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as to_bytes

from muonft.atomic import atomic_write
from muonft.cache import cache_dir


def cached_measurements(key: dict[str, Any], compute: Callable[[], dict[str, Any]]
                        ) -> dict[str, Any]:
    """``compute()`` (floats and tensors by name), or what it returned for the same ``key``
    before. Floats round-trip exactly (stored as float64)."""
    key = {**key, "torch": torch.__version__}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir() / "baselines" / f"{digest[:24]}.safetensors"
    if path.exists():
        try:
            with safe_open(str(path), "pt") as f:
                recorded = (f.metadata() or {}).get("sha256")
            tensors = load_file(str(path))
            if recorded == tensors_digest(tensors):
                return {k: (v if v.ndim else float(v)) for k, v in tensors.items()}
        except Exception:  # safetensors' own error on a torn or foreign file: measure again
            pass
    out = compute()
    tensors = {k: v.detach().cpu().contiguous() if isinstance(v, torch.Tensor)
               else torch.tensor(float(v), dtype=torch.float64) for k, v in out.items()}
    try:
        blob = to_bytes(tensors, metadata={"sha256": tensors_digest(tensors)})
        atomic_write(path, lambda f: f.write(blob), mode="wb")
    except OSError:
        pass
    return out


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name)."""
    h = hashlib.sha256()
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def array_digest(*arrays: Any) -> str:
    """sha256 over the bytes of token arrays / memmaps (identifies evaluation data)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str((a.dtype, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()
