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

A sharded (FSDP2) model is saved by all ranks together (:func:`save_sharded_checkpoint`)::

    step-0000120/dcp/                   model and optimizer tensors through
                                        ``torch.distributed.checkpoint``: each rank writes its
                                        own shards, ``.metadata`` maps them to the full tensors
    step-0000120/state.pt               the sidecar, with the optimizer's param groups (params
                                        named by parameter name) instead of its state
    latest.json                         {"step", "dir", "layout": "dcp", "sha256": {…}}

with the same temp-directory/rename/commit protocol (rank 0 commits). Either layout restores
into any model (:meth:`Checkpoint.restore`): a DCP checkpoint into shards at any world size
(DCP reshards) or into a plain model, a safetensors one into a plain model or, distributed,
into shards — so a run resumes at another world size and under another parallel mode.
"""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import pickle
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from muonft.atomic import atomic_write, atomic_write_json, sha256_file
from muonft.errors import CheckpointError
from muonft.optim.distributed import is_sharded, local_shard

LATEST = "latest.json"
SHARDED_LAYOUT = "dcp"


def checkpoint_name(stem: str, spec: dict[str, Any], reference: dict[str, Any],
                    default_steps: int) -> str:
    """The one naming rule of pretrained checkpoints in the cache:
    ``<stem>-<optimizer>-s<seed>``, plus ``-<steps>steps`` when ``spec["steps"]`` differs
    from ``default_steps``, plus the first 6 hex digits of the spec's sha256 when any other
    setting differs from ``reference`` (the recipe's defaults at the same stem, optimizer,
    steps and seed)."""
    name = f"{stem}-{spec['optimizer']}-s{spec['seed']}"
    if spec["steps"] != default_steps:
        name += f"-{spec['steps']}steps"
    if spec != reference:
        name += "-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:6]
    return name


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
    name = _fresh_name(ckpt_dir, step)
    final = ckpt_dir / name
    if final.exists():  # left by a save that was killed before its commit
        shutil.rmtree(final)
    for stale in ckpt_dir.glob(".*.tmp"):  # temp dirs/files of saves killed midway
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
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
    _commit(ckpt_dir, step, name, hashes, keep)
    return final


@dataclass
class Checkpoint:
    """A verified checkpoint on disk: its step, its sidecar ``state`` and where its tensors
    are (``layout`` ``safetensors`` or ``dcp``). Tensors are read by :meth:`restore` (into a
    model and optimizer, plain or sharded) or :meth:`full_weights` / :meth:`full_state`."""

    step: int
    dir: Path
    state: dict[str, Any]
    layout: str = "safetensors"

    def full_weights(self) -> dict[str, torch.Tensor]:
        """The model's full tensors (CPU), whatever the layout."""
        if self.layout != SHARDED_LAYOUT:
            return load_weights(self.dir / "model.safetensors")
        tensors = _read_dcp(self.dir / "dcp", lambda key: key.startswith("model."))
        return {k[len("model."):]: v for k, v in tensors.items()}

    def full_state(self) -> dict[str, Any]:
        """The sidecar with ``optimizer`` = a full ``optimizer.state_dict()`` (CPU)."""
        if self.layout != SHARDED_LAYOUT:
            return self.state
        groups = self.state["optimizer_groups"]
        index = {n: i for i, n in enumerate(n for g in groups for n in g["params"])}
        tensors = _read_dcp(self.dir / "dcp", lambda key: key.startswith("optim."))
        opt_state: dict[int, dict[str, Any]] = {}
        for key, t in tensors.items():
            name, entry = key[len("optim."):].rsplit(".", 1)
            opt_state.setdefault(index[name], {})[entry] = t
        return {**{k: v for k, v in self.state.items() if k != "optimizer_groups"},
                "optimizer": {"state": opt_state,
                              "param_groups": _groups_with_ids(groups, index)}}

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load weights and optimizer state into ``model`` and ``optimizer``. A sharded model
        (DTensor parameters) must call this on every rank (a collective); each rank then
        reads only its shards of a DCP checkpoint."""
        sharded = any(is_sharded(p) for p in model.parameters())
        if self.layout != SHARDED_LAYOUT:
            weights, osd = self.full_weights(), self.state["optimizer"]
            if sharded:
                weights, osd = _distribute_full(model, optimizer, weights, osd)
            model.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(osd)
            return
        if not sharded:
            model.load_state_dict(self.full_weights(), strict=True)
            optimizer.load_state_dict(self.full_state()["optimizer"])
            return
        import torch.distributed.checkpoint as dcp

        path = self.dir / "dcp"
        meta = safe_reader(path).read_metadata().state_dict_metadata
        targets = {f"model.{k}": v for k, v in model.state_dict().items()}
        missing = sorted(k for k in targets if k not in meta)
        if missing:
            raise KeyError(f"the checkpoint has no {missing[0][len('model.'):]!r}")
        extra = sorted(k for k in meta if k.startswith("model.") and k not in targets)
        if extra:
            raise KeyError(f"unexpected key {extra[0][len('model.'):]!r} in the checkpoint")
        by_name = _param_names(model, optimizer)
        live = {n: p for p, n in by_name}
        opt_keys = []
        for key, md in meta.items():
            if not key.startswith("optim."):
                continue
            name, _ = key[len("optim."):].rsplit(".", 1)
            if name not in live:
                raise KeyError(f"optimizer state for {name!r}, which the optimizer lacks")
            p = live[name]
            dtype = md.properties.dtype
            if tuple(md.size) == tuple(p.shape):  # param-shaped: shard it like the parameter
                targets[key] = torch.zeros_like(p, dtype=dtype)
            else:  # counters and small replicated state (CPU when 0-d, as torch keeps steps)
                dev = "cpu" if len(md.size) == 0 else local_shard(p).device
                targets[key] = torch.zeros(tuple(md.size), dtype=dtype, device=dev)
            opt_keys.append(key)
        dcp.load(targets, checkpoint_id=str(path), storage_reader=safe_reader(path))
        model.load_state_dict({k[len("model."):]: targets[k] for k in targets
                               if k.startswith("model.")}, strict=True)
        groups = self.state["optimizer_groups"]
        index = {n: i for i, (_, n) in enumerate(by_name)}
        opt_state: dict[int, dict[str, Any]] = {}
        for key in opt_keys:
            name, entry = key[len("optim."):].rsplit(".", 1)
            opt_state.setdefault(index[name], {})[entry] = targets[key]
        optimizer.load_state_dict({"state": opt_state,
                                   "param_groups": _groups_with_ids(groups, index)})


def open_checkpoint(ckpt_dir: Path) -> Checkpoint | None:
    """The latest checkpoint of ``ckpt_dir``, every file checked against its sha256, with
    its sidecar read; None if there is none."""
    ckpt_dir = Path(ckpt_dir)
    ptr = ckpt_dir / LATEST
    if not ptr.exists():
        return None
    try:
        meta = json.loads(ptr.read_text())
        d = ckpt_dir / meta["dir"]
        hashes = meta["sha256"]
        step = int(meta["step"])
        layout = meta.get("layout", "safetensors")
        want = ({"state.pt", "dcp/.metadata"} if layout == SHARDED_LAYOUT
                else {"model.safetensors", "state.pt"})
        if Path(meta["dir"]).name != meta["dir"] or not want <= set(hashes) or \
                (layout != SHARDED_LAYOUT and set(hashes) != want) or \
                any(".." in Path(n).parts or Path(n).is_absolute() for n in hashes):
            raise ValueError("unexpected directory or file list")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise CheckpointError(f"checkpoint pointer {ptr} is corrupt ({e}); delete {ckpt_dir} "
                              f"to start over") from None
    for name, want_hash in hashes.items():
        f = d / name
        if not f.exists():
            raise CheckpointError(f"checkpoint file {f} is missing; delete {ckpt_dir} to start "
                                  f"over")
        if sha256_file(f) != want_hash:
            raise CheckpointError(f"checkpoint file {f} is corrupt (sha256 mismatch); delete "
                                  f"{ckpt_dir} to start over")
    try:
        state = torch.load(d / "state.pt", map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {d / 'state.pt'}: {e}") from None
    return Checkpoint(step=step, dir=d, state=state, layout=layout)


def load_checkpoint(ckpt_dir: Path) -> tuple[int, dict[str, torch.Tensor], dict[str, Any]] | None:
    """The latest checkpoint as (step, model state, sidecar state), or None if there is none;
    full tensors on CPU, whatever the layout (the sidecar carries ``optimizer``)."""
    ck = open_checkpoint(Path(ckpt_dir))
    if ck is None:
        return None
    return ck.step, ck.full_weights(), ck.full_state()


def save_sharded_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module,
                            optimizer: torch.optim.Optimizer, state: dict[str, Any],
                            keep: int = 2) -> Path:
    """Write checkpoint ``step`` of a sharded (FSDP2) model and make it ``latest``; every rank
    must call it. Model and optimizer tensors go through ``torch.distributed.checkpoint``
    (each rank writes its shards; no rank gathers a full tensor), named ``model.<param>`` and
    ``optim.<param>.<state key>``; rank 0 writes the sidecar ``state`` (plus the optimizer's
    param groups) and commits as :func:`save_checkpoint` does."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    ckpt_dir = Path(ckpt_dir)
    main = dist.get_rank() == 0
    where: list[Any] = [None, None]
    if main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        name = _fresh_name(ckpt_dir, step)
        if (ckpt_dir / name).exists():  # left by a save that was killed before its commit
            shutil.rmtree(ckpt_dir / name)
        where = [name, tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=ckpt_dir)]
    dist.broadcast_object_list(where, src=0)
    name, tmp = where[0], Path(where[1])
    tensors, groups = _sharded_tensors(model, optimizer)
    try:
        dcp.save(tensors, checkpoint_id=str(tmp / "dcp"))
        if main:
            sidecar = {**{k: v for k, v in state.items() if k != "optimizer"},
                       "optimizer_groups": groups}
            buf = io.BytesIO()
            torch.save(sidecar, buf)
            atomic_write(tmp / "state.pt", lambda f: f.write(buf.getvalue()), mode="wb")
            files = sorted(f for f in tmp.rglob("*") if f.is_file())
            for f in files:
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            hashes = {str(f.relative_to(tmp)): sha256_file(f) for f in files}
            os.rename(tmp, ckpt_dir / name)
            _commit(ckpt_dir, step, name, hashes, keep, layout=SHARDED_LAYOUT)
    except BaseException:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    dist.barrier()  # nobody reads or writes the next checkpoint before this one is committed
    return ckpt_dir / name


def _fresh_name(ckpt_dir: Path, step: int) -> str:
    current = _current_dir(ckpt_dir)
    name = f"step-{step:07d}"
    k = 0
    while name == current or (k and (ckpt_dir / name).exists()):
        k += 1
        name = f"step-{step:07d}.{k}"
    return name


def _commit(ckpt_dir: Path, step: int, name: str, hashes: dict[str, str], keep: int,
            layout: str | None = None) -> None:
    """Make ``name`` the latest checkpoint, then drop all but the newest ``keep``."""
    _fsync_dir(ckpt_dir)
    meta: dict[str, Any] = {"step": step, "dir": name, "sha256": hashes}
    if layout is not None:
        meta["layout"] = layout
    atomic_write_json(ckpt_dir / LATEST, meta)
    _fsync_dir(ckpt_dir)
    final = ckpt_dir / name
    old = [p for p in _step_dirs(ckpt_dir) if p != final]
    for p in old[: max(0, len(old) - (keep - 1))]:
        shutil.rmtree(p, ignore_errors=True)
    for p in ckpt_dir.glob(".step-*.tmp"):  # temp dirs of killed saves
        shutil.rmtree(p, ignore_errors=True)


def _param_names(model: torch.nn.Module, optimizer: torch.optim.Optimizer
                 ) -> list[tuple[torch.Tensor, str]]:
    """(parameter, name) in the optimizer's order (the ids of its ``state_dict``)."""
    names = {id(p): n for n, p in model.named_parameters()}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    missing = [tuple(p.shape) for p in flat if id(p) not in names]
    if missing:
        raise ValueError(f"the optimizer holds a tensor of shape {missing[0]} that is not a "
                         f"parameter of the model")
    return [(p, names[id(p)]) for p in flat]


def _sharded_tensors(model: torch.nn.Module, optimizer: torch.optim.Optimizer
                     ) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    """The DCP state of a model and optimizer, and the optimizer's param groups with their
    params as names (so they map onto a model rebuilt at any world size)."""
    tensors: dict[str, torch.Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    names = [n for _, n in _param_names(model, optimizer)]
    osd = optimizer.state_dict()
    for i, st in osd["state"].items():
        for k, v in st.items():
            if not isinstance(v, torch.Tensor):
                raise ValueError(f"optimizer state {k!r} of {names[i]} is not a tensor "
                                 f"({type(v).__name__}); a sharded checkpoint stores tensors")
            tensors[f"optim.{names[i]}.{k}"] = v
    groups = [{**{k: v for k, v in g.items() if k != "params"},
               "params": [names[i] for i in g["params"]]} for g in osd["param_groups"]]
    return tensors, groups


def _groups_with_ids(groups: list[dict[str, Any]], index: dict[str, int]) -> list[dict]:
    try:
        return [{**g, "params": [index[n] for n in g["params"]]} for g in groups]
    except KeyError as e:
        raise KeyError(f"the checkpoint's optimizer has parameter {e.args[0]!r}, which the "
                       f"model lacks") from None


def _read_dcp(path: Path, keep) -> dict[str, torch.Tensor]:
    """Full CPU tensors of the entries of a DCP checkpoint whose key satisfies ``keep``
    (read in this process alone, with or without a process group)."""
    import torch.distributed.checkpoint as dcp

    meta = safe_reader(path).read_metadata().state_dict_metadata
    out = {k: torch.empty(tuple(m.size), dtype=m.properties.dtype) for k, m in meta.items()
           if keep(k) and hasattr(m, "size")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assuming the intent is to load in a single process"
        dcp.load(out, checkpoint_id=str(path), no_dist=True, storage_reader=safe_reader(path))
    return out


def _distribute_full(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     weights: dict[str, torch.Tensor], osd: dict[str, Any]
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Full weights and optimizer state cut into the shards of a sharded model's parameters
    (param-shaped entries sharded like their parameter, the rest as they are)."""
    from torch.distributed.tensor import distribute_tensor

    def like(full: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not is_sharded(target) or tuple(full.shape) != tuple(target.shape):
            return full
        return distribute_tensor(full.to(local_shard(target).device), target.device_mesh,
                                 target.placements)

    live = model.state_dict()
    weights = {k: like(v, live[k]) if k in live else v for k, v in weights.items()}
    flat = [p for g in optimizer.param_groups for p in g["params"]]
    state = {i: {k: like(v, flat[i]) if isinstance(v, torch.Tensor) and i < len(flat) else v
                 for k, v in st.items()} for i, st in osd["state"].items()}
    return weights, {**osd, "state": state}


# ---------------------------------------------------------------------------------------------
# DCP metadata is a pickle: read it as data, never as code

class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP's ``.metadata`` admitting only the classes DCP writes there (its metadata
    dataclasses and enums, torch dtypes/sizes/layouts, paths, plain containers). A checkpoint
    directory may come from anyone; a crafted ``.metadata`` whose pickle names any other
    callable (``os.system``, ``builtins.eval`` …) is refused instead of run."""

    _BUILTINS = frozenset({"set", "frozenset", "slice", "complex", "bytearray", "range"})
    _PATHS = frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath", "Path"})

    def find_class(self, module: str, name: str) -> Any:
        if self._admitted(module, name):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")

    def _admitted(self, module: str, name: str) -> bool:
        if module == "torch.distributed.checkpoint.metadata":
            return not name.startswith("__") and isinstance(
                getattr(importlib.import_module(module), name, None), type)
        if module == "torch.distributed.checkpoint.filesystem":
            return name == "_StorageInfo"
        if module == "torch":
            return name == "Size" or isinstance(getattr(torch, name, None),
                                                (torch.dtype, torch.layout, torch.memory_format))
        if module == "torch.serialization":
            return name == "_get_layout"
        if module == "pathlib":
            return name in self._PATHS
        if module == "collections":
            return name == "OrderedDict"
        return module == "builtins" and name in self._BUILTINS


def safe_reader(path: Path):
    """A ``torch.distributed.checkpoint`` FileSystemReader of ``path`` whose metadata goes
    through :class:`_MetadataUnpickler`; a refused or broken ``.metadata`` is one
    CheckpointError line."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any):
            meta_path = self._get_metadata_path(kwargs.get("rank"))
            try:
                with self.fs.create_stream(meta_path, "rb") as f:
                    metadata = _MetadataUnpickler(f).load()
            except (pickle.UnpicklingError, EOFError, AttributeError, TypeError,
                    ValueError) as e:
                raise CheckpointError(f"{meta_path} is not DCP metadata ({e}); refusing to read "
                                      f"this checkpoint") from None
            if not isinstance(metadata, Metadata):
                raise CheckpointError(f"{meta_path} holds a {type(metadata).__name__}, not DCP "
                                      f"metadata; refusing to read this checkpoint")
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeFileSystemReader(str(path))

