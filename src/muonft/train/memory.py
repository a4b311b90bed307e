"""A rough memory estimate of a training step, checked against the memory this machine has
before a run starts: a batch or a model far too large for it is one clear error line instead of
the kernel's OOM killer (or an allocator traceback) in the middle of the run.

The estimate is deliberately a lower bound of the real need — weights, gradients and two
optimizer moments (16 bytes per parameter) plus fp32 activations of every linear/embedding output
per unit of the batch, ×2 for backward, and the output logits ×3 — so it refuses only steps that
cannot fit, never one that might.
"""

from __future__ import annotations

import os

from torch import nn

from muonft.errors import ConfigError

GIB = 2**30


def available_bytes() -> int | None:
    """``MemAvailable`` of /proc/meminfo (Linux), else ``None`` (no check)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def step_bytes(model: nn.Module, units_per_step: int) -> int:
    """Lower bound of a training step's memory: 16 B per trainable-or-not parameter and
    4·(2·Σ outputs + 3·last output) B per unit of the batch (token or example)."""
    outs = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    outs += [m.embedding_dim for m in model.modules() if isinstance(m, nn.Embedding)]
    per_unit = 4 * (2 * sum(outs) + 3 * (outs[-1] if outs else 0))
    return 16 * sum(p.numel() for p in model.parameters()) + per_unit * units_per_step


def check_fits(need: int, what: str, fix: str) -> None:
    """ConfigError when ``need`` bytes exceed the available memory."""
    have = available_bytes()
    if os.environ.get("MUONFT_NO_MEMORY_CHECK") or have is None or need <= have:
        return
    raise ConfigError(f"{what} needs at least {need / GIB:.1f} GiB of memory; this machine has "
                      f"{have / GIB:.1f} GiB available. {fix} (or set "
                      f"MUONFT_NO_MEMORY_CHECK=1 to try anyway)")
