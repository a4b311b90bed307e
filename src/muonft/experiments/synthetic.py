"""A synthetic runner (``kind: synthetic``): instant, deterministic runs whose truth is known.

It returns the same result record as ``muonft finetune`` (``docs/CONTRACTS.md``) from a closed-form
model of the study, so sweeps, the store, best-LR selection, verdicts and the report can be
exercised in seconds and checked against a known answer. Nothing is trained.

Model (validation loss, lower is better), with ``x = log10(lr)``:

    target = 3 − 1 + c·(x − x*)² + mismatch + noise·ε(seed, lr)
    x*     = −2.5 (AdamW) or −2.0 (Muon), +0.5 under LoRA
    mismatch = gap                         full fine-tuning, optimizer ≠ pretraining optimizer
             = gap·log2(rank)/log2(512)    LoRA (vanishes at rank 1, full gap at rank 512)
    diverged when lr ≥ diverge_lr

and ``test = target + 0.02``, ``forgetting = 0.05·(lr/lr*)·(1 + 5·mismatch)``, ``l2_drift`` and
``update_rms`` proportional to lr, ``cosine_to_init = 1 − l2_drift²/2``, stable rank /
spectral entropy of ΔW higher for Muon by ``spectral_gap``. The pretraining optimizer is read
from ``init`` (``…muon…`` → Muon, else AdamW).
Parameters come from ``task = "synthetic[:key=value,…]"``: ``gap`` (0.1; of the Muon-pretrained
direction too unless ``gap_muon_pretrained`` is given), ``noise`` (0.01),
``curvature`` (0.5), ``diverge_lr`` (1.0), ``spectral_gap`` (2.0), ``sleep`` (seconds per run, 0),
``crash_lr`` (raise RuntimeError at this lr), ``hard_crash_lr`` (the process exits at this lr).
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from pathlib import Path
from typing import Any

DEFAULTS = {"gap": 0.1, "gap_muon_pretrained": math.nan, "noise": 0.01, "curvature": 0.5,
            "diverge_lr": 1.0, "spectral_gap": 2.0, "sleep": 0.0, "crash_lr": -1.0,
            "hard_crash_lr": -1.0}
GROUPS = ("attn_q", "attn_k", "attn_v", "attn_o", "mlp_in", "mlp_out")


def task_params(task: str) -> dict[str, float]:
    """Parameters of a ``synthetic[:k=v,…]`` task string (unknown keys are an error)."""
    name, _, rest = task.partition(":")
    if name != "synthetic":
        raise ValueError(f"synthetic runs need task 'synthetic[:key=value,...]', got {task!r}")
    params = dict(DEFAULTS)
    for item in filter(None, rest.split(",")):
        k, _, v = item.partition("=")
        if k not in DEFAULTS:
            raise ValueError(f"unknown synthetic task parameter {k!r}; allowed: "
                             f"{', '.join(DEFAULTS)}")
        params[k] = float(v)
    return params


def _eps(*parts: Any) -> float:
    """A deterministic standard-normal-ish draw from the hash of ``parts`` (Box–Muller)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    u1 = (int.from_bytes(h[:8], "big") + 1) / (2**64 + 2)
    u2 = int.from_bytes(h[8:16], "big") / 2**64
    return math.sqrt(-2 * math.log(u1)) * math.cos(2 * math.pi * u2)


def synthetic_runner(spec: Any, run_dir: Path) -> dict[str, Any]:
    """Compute the synthetic result record of ``spec`` (a RunSpec); see the module docstring."""
    p = task_params(spec.task)
    lr, opt, method = spec.lr, spec.optimizer, spec.method
    if p["sleep"] > 0:
        time.sleep(p["sleep"])
    if math.isclose(lr, p["hard_crash_lr"], rel_tol=1e-9):
        os._exit(3)
    if math.isclose(lr, p["crash_lr"], rel_tol=1e-9):
        raise RuntimeError(f"synthetic crash at lr={lr}")
    pre = "muon" if "muon" in spec.init.lower() else "adamw"
    x_star = (-2.0 if opt == "muon" else -2.5) + (0.5 if method == "lora" else 0.0)
    mism = 0.0
    gap = p["gap_muon_pretrained"] if pre == "muon" and not math.isnan(
        p["gap_muon_pretrained"]) else p["gap"]
    if opt != pre:
        mism = gap if method == "full" else gap * math.log2(spec.lora.rank) / math.log2(512)
    if spec.lora.variant != "lora" and method == "lora":
        mism += 0.01  # variants: slightly worse, never better
    x = math.log10(lr)
    rel = lr / 10**x_star
    target = 2.0 + p["curvature"] * (x - x_star) ** 2 + mism + \
        p["noise"] * _eps(spec.init, opt, method, spec.lora.rank, lr, spec.seed)
    status = "diverged" if lr >= p["diverge_lr"] else "done"
    if status == "diverged":
        target = float("nan")
    s_rank = 1.5 + (p["spectral_gap"] if opt == "muon" else 0.0) + 0.1 * _eps("sr", spec.seed)
    entropy = min(0.99, 0.4 + (0.2 if opt == "muon" else 0.0) + 0.02 * _eps("se", spec.seed))
    diag_update = {g: {"stable_rank": s_rank * (1 + 0.1 * i), "spectral_entropy": entropy,
                       "l2_drift": 0.01 * rel * (1 + mism)} for i, g in enumerate(GROUPS)}
    diag_update["overall"] = {"stable_rank": s_rank, "spectral_entropy": entropy,
                              "l2_drift": 0.01 * rel * (1 + mism)}
    metrics = {"target": target, "target_name": "val_loss", "higher_is_better": False,
               "zero_shot": 3.0, "test": target + 0.02,
               "forgetting": 0.05 * rel * (1 + 5 * mism) + 0.002 * _eps("f", spec.seed, lr),
               "l2_drift": 0.01 * rel * (1 + mism),
               "cosine_to_init": 1.0 - 0.5 * (0.01 * rel * (1 + mism)) ** 2,
               "update_rms": 0.2 * lr,
               "relative_ppl": math.exp(target - 3.0)}
    return {"status": status, "metrics": metrics,
            "curves": {"val_loss": [[0, 3.0], [spec.steps, target]]},
            "diagnostics": {g: {"stable_rank": 20.0, "spectral_entropy": 0.9,
                                "l2_drift": 0.01 * rel} for g in GROUPS},
            "diagnostics_update": diag_update,
            "timings": {"wall_s": p["sleep"]}, "versions": {"synthetic": "1"}, "error": None}
