"""A LoRA-aware Muon update-scale rule: equal update RMS for the factors A and B.

Muon replaces a matrix's update by its orthogonal polar factor O and multiplies it by a scale
that depends only on the shape (m, n) = (out, in). A full-rank O has min(m, n) unit singular
values, so ‖O‖_F² = min(m, n) and RMS(O) = 1/√max(m, n). For LoRA factors A (r×d_in) and
B (d_out×r) with r ≪ d:

- ``spectral`` = √max(1, m/n) leaves A at RMS 1/√d_in but lifts B to 1/√r — B's update is
  √(d/r) times larger than A's (4× at d = 128, r = 8), although the two factors enter BA
  symmetrically;
- ``lora_balanced`` = √(max(m, n) / min(m, n)) gives *every* factor RMS 1/√min(m, n) = 1/√r,
  so A and B move equally. On square and tall matrices it equals ``spectral`` (√(m/n)), so
  any full matrix sharing the Muon group is treated as Keller Jordan's rule would; only wide
  matrices (such as A) get the mirrored boost √(n/m).

(``match_adamw_rms`` = 0.2·√max(m, n) also equalises the factors, at RMS 0.2 for every shape;
``lora_balanced`` is the spectral-family rule whose update size grows as the rank shrinks,
like rsLoRA's α/√r.) One of Muon's built-in rules in :data:`muonft.optim.SCALE_RULES`, so
``Muon(scale="lora_balanced")`` needs no adapter code.
"""

from __future__ import annotations

import math

LORA_BALANCED = "lora_balanced"


def lora_balanced_scale(m: int, n: int) -> float:
    """√(max(m, n) / min(m, n)): the orthogonalized update of any m×n matrix then has RMS
    1/√min(m, n), so LoRA's A (r×d) and B (d×r) get equal update RMS 1/√r."""
    if m <= 0 or n <= 0:
        raise ValueError(f"matrix shape must be positive, got ({m}, {n})")
    return math.sqrt(max(m, n) / min(m, n))

