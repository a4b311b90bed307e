"""Atomic, verifiable checkpoints: weights in safetensors, everything else in a sidecar.

Layout of a checkpoint directory::

    step-0000120/model.safetensors  model weights
    step-0000120/state.pt           optimizer state, RNG states, schedule, spec, curves
                                    (a ``torch.save`` file that loads with ``weights_only=True``)
    latest.json                     {"step", "dir", "sha256": {file: hash}} — the commit point

Both files are written into a hidden temp directory (fsynced), which is renamed to its step
name; then ``latest.json`` is replaced atomically. A run killed at any moment leaves either the
previous checkpoint or the new one as ``latest``, never a half-written one; a file that does
not match its recorded sha256 is refused with :class:`~muonft.errors.CheckpointError`.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from muonft.atomic import atomic_write, atomic_write_json, sha256_file
from muonft.errors import CheckpointError

LATEST = "latest.json"


def save_weights(model_state: dict[str, torch.Tensor], path: Path) -> None:
    """Write a state dict as safetensors atomically (contiguous, detached copies).

    Tensors that share memory (tied input/output embeddings of HF models) are written once
    each under their own name, as safetensors refuses shared storage.
    """
    tensors, seen = {}, set()
    for k, v in model_state.items():
        t = v.detach().contiguous().cpu()
        ptr = t.untyped_storage().data_ptr()
        tensors[k] = t.clone() if ptr in seen and t.numel() else t
        seen.add(ptr)
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


def _fsync_dir(path: Path) -> None:
    # Makes a rename inside ``path`` durable; not every platform can open a directory.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _current_dir(ckpt_dir: Path) -> str | None:
    try:
        return json.loads((ckpt_dir / LATEST).read_text()).get("dir")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def _step_dirs(ckpt_dir: Path) -> list[Path]:
    """Checkpoint directories, oldest step first (``step-0000120`` < ``step-0000120.1``)."""
    return sorted(p for p in ckpt_dir.glob("step-*") if p.is_dir())


def save_checkpoint(ckpt_dir: Path, step: int, model_state: dict[str, torch.Tensor],
                    state: dict[str, Any], keep: int = 2) -> Path:
    """Write checkpoint ``step`` and make it ``latest``; keep the newest ``keep`` ones.

    The pair (weights, sidecar) is written into a hidden temp directory, fsynced, renamed to
    ``step-<step>`` (a fresh name, never one ``latest.json`` points to) and only then committed
    by atomically replacing ``latest.json`` with their sha256. A kill at any moment leaves the
    previous checkpoint intact and current.
    """
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    current = _current_dir(ckpt_dir)
    name = f"step-{step:07d}"
    k = 0
    while name == current or (k and (ckpt_dir / name).exists()):
        k += 1
        name = f"step-{step:07d}.{k}"
    final = ckpt_dir / name
    if final.exists():  # left by a save that was killed before its commit
        shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=ckpt_dir))
    try:
        save_weights(model_state, tmp / "model.safetensors")
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(tmp / "state.pt", lambda f: f.write(buf.getvalue()), mode="wb")
        hashes = {n: sha256_file(tmp / n) for n in ("model.safetensors", "state.pt")}
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(ckpt_dir)
    atomic_write_json(ckpt_dir / LATEST, {"step": step, "dir": name, "sha256": hashes})
    _fsync_dir(ckpt_dir)
    old = [p for p in _step_dirs(ckpt_dir) if p != final]
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".step-*.tmp"):  # temp dirs of killed saves
        shutil.rmtree(p, ignore_errors=True)
    return final


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
        if Path(meta["dir"]).name != meta["dir"] or \
                set(hashes) != {"model.safetensors", "state.pt"}:
            raise ValueError("unexpected directory or file list")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint pointer {ptr} is corrupt ({e}); delete {ckpt_dir} "
                              f"to start over") from None
    for name, want in hashes.items():
        f = d / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} is missing; delete {ckpt_dir} to start "
                                  f"over")
        if sha256_file(f) != want:
            raise CheckpointError(f"checkpoint file {f} is corrupt (sha256 mismatch); delete "
                                  f"{ckpt_dir} to start over")
    weights = load_weights(d / "model.safetensors")
    try:
        state = torch.load(d / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {d / 'state.pt'}: {e}") from None
    return step, weights, state
