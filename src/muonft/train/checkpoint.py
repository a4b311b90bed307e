"""Atomic, verifiable checkpoints: weights in safetensors, everything else in a sidecar.

Layout of a checkpoint directory::

    step-000120/model.safetensors   model weights
    step-000120/state.pt            optimizer state, RNG states, step, curves (weights_only-safe)
    latest.json                     {"step", "dir", "sha256": {file: hash}} — the commit point

Files are written into the step directory first (each via temp file + fsync + rename), then
``latest.json`` is replaced atomically. A run killed at any moment leaves either the previous
checkpoint or the new one as ``latest``, never a half-written one; a file that does not match
its recorded sha256 is refused with :class:`~muonft.errors.CheckpointError`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from muonft.atomic import atomic_write, atomic_write_json
from muonft.errors import CheckpointError

LATEST = "latest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_weights(model_state: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors atomically (contiguous, detached copies)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in model_state.items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file, turning any decoding failure into a CheckpointError."""
    try:
        return load_file(str(path))
    except Exception as e:
        raise CheckpointError(f"cannot read weights {path}: {e}") from None


def save_checkpoint(ckpt_dir: Path, step: int, model_state: dict[str, torch.Tensor],
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` and make it ``latest``; keep the newest ``keep`` ones."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    d = ckpt_dir / f"step-{step:07d}"
    d.mkdir(exist_ok=True)
    save_weights(model_state, d / "model.safetensors")
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(d / "state.pt", lambda f: f.write(buf.getvalue()), mode="wb")
    hashes = {name: _sha256(d / name) for name in ("model.safetensors", "state.pt")}
    atomic_write_json(ckpt_dir / LATEST, {"step": step, "dir": d.name, "sha256": hashes})
    old = sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir() and p != d)
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    return d


def load_checkpoint(ckpt_dir: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The latest checkpoint as (step, model state, sidecar state), or None if there is none."""
    ptr = ckpt_dir / LATEST
    if not ptr.exists():
        return None
    try:
        meta = json.loads(ptr.read_text())
        d = ckpt_dir / meta["dir"]
        hashes = meta["sha256"]
        step = int(meta["step"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint pointer {ptr} is corrupt ({e}); delete {ckpt_dir} "
                              f"to start over") from None
    for name, want in hashes.items():
        f = d / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} is missing; delete {ckpt_dir} to start "
                                  f"over")
        if _sha256(f) != want:
            raise CheckpointError(f"checkpoint file {f} is corrupt (sha256 mismatch); delete "
                                  f"{ckpt_dir} to start over")
    weights = load_weights(d / "model.safetensors")
    try:
        state = torch.load(d / "state.pt", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {d / 'state.pt'}: {e}") from None
    return step, weights, state
