"""Model source: our nanochat-style GPT, from a ``muonft pretrain`` output.

``init`` is the output directory or a checkpoint name in the cache (``gpt-tiny-adamw-s0``).
The model trains on ``lm:<corpus>`` tasks with its own tokenizer; forgetting is the held-out
loss of its *pretraining* corpus (recorded in the checkpoint's ``config.json``). Runs under
``torchrun`` (DDP or FSDP2, :mod:`muonft.train.distributed`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from muonft.atomic import atomic_write_json, sha256_file
from muonft.data import cache_dir, get_tokenizer, load_lm_splits
from muonft.errors import CheckpointError, DataMissingError
from muonft.models import GPTConfig, build_gpt
from muonft.spec import RunSpec
from muonft.train.checkpoint import load_weights, save_weights
from muonft.train.memory import check_fits
from muonft.train.plugins import Loaded
from muonft.train.probes import LMProbe

# Windows per evaluation batch of LM tasks: the pretraining evaluation's.
EVAL_WINDOWS = 32
DEFAULT_LR = {("adamw", "full"): 3e-3, ("muon", "full"): 3e-3,
              ("adamw", "lora"): 1e-2, ("muon", "lora"): 1e-2}


def resolve_init(init: str) -> Path:
    """A pretrain output directory from a path or a checkpoint name in the cache."""
    p = Path(init).expanduser()
    if not p.exists():
        p = cache_dir() / "checkpoints" / init
    if not (p / "config.json").exists() or not (p / "model.safetensors").exists():
        raise DataMissingError(f"no pretrained checkpoint at {init!r} (looked for config.json "
                               f"and model.safetensors); run `muonft pretrain` first")
    return p


def checkpoint_config(path: Path) -> dict[str, Any]:
    """The ``config.json`` of a pretrain output directory (CheckpointError when corrupt)."""
    try:
        cfg = json.loads((path / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path / 'config.json'} is corrupt") from None
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path / 'config.json'} is not a JSON object")
    return cfg


def load_pretrained(path: Path):
    """(model, tokenizer, config dict) of a ``muonft pretrain`` output directory."""
    cfg = checkpoint_config(path)
    if not isinstance(cfg.get("config"), dict) or not isinstance(cfg.get("tokenizer"), dict):
        raise CheckpointError(f"{path / 'config.json'} has no 'config'/'tokenizer' entry; not "
                              f"a muonft pretrain checkpoint")
    try:
        gcfg = GPTConfig(**cfg["config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / 'config.json'}: bad model config ({e})") from None
    d, layers, v = gcfg.n_embd, gcfg.n_layer, gcfg.vocab_size
    check_fits(4 * (12 * layers * d * d + 2 * v * d), f"the model of {path}",
               "It cannot be built here")
    tok = _tokenizer(cfg)
    if tok.vocab_size > gcfg.vocab_size:
        raise CheckpointError(f"{path / 'config.json'}: its tokenizer has {tok.vocab_size} "
                              f"tokens but the model embeds {gcfg.vocab_size}; not one "
                              f"checkpoint")
    model = build_gpt(gcfg)
    model.load_state_dict(load_weights(path / "model.safetensors"), strict=True)
    return model, tok, cfg


def _tokenizer(cfg: dict[str, Any]):
    return get_tokenizer(cfg["tokenizer"]["vocab_size"], corpus=cfg["tokenizer"]["corpus"])


def verified_weights(path: Path) -> str:
    """sha256 of ``path/model.safetensors``, checked against the digest its ``run.json``
    recorded when it was written (outputs of earlier versions have none): a flipped bit in a
    pretrained model is refused instead of fine-tuned."""
    digest = sha256_file(path / "model.safetensors")
    try:
        recorded = json.loads((path / "run.json").read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    if recorded is not None and recorded != digest:
        raise CheckpointError(f"{path / 'model.safetensors'} does not match the sha256 its "
                              f"run.json recorded (corrupt or replaced); pretrain it again")
    return digest


def checkpoint_kind(init: str) -> str | None:
    """The ``kind`` in the ``config.json`` of a pretrain output (``gpt`` when it names none),
    ``None`` when ``init`` is no such output (path or cache name)."""
    if init.startswith("hf:"):
        return None
    try:
        path = resolve_init(init)
    except DataMissingError:
        return None
    return checkpoint_config(path).get("kind", "gpt")  # a corrupt one: CheckpointError


def export_checkpoint(spec: RunSpec, model: torch.nn.Module, directory: Path) -> None:
    """``model.safetensors`` + the init's ``config.json`` (with ``finetuned_from``): a
    checkpoint that ``--init`` takes, like a pretrain output."""
    cfg = checkpoint_config(resolve_init(spec.init))
    directory.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), directory / "model.safetensors")
    atomic_write_json(directory / "config.json", {**cfg, "finetuned_from": spec.init})


class GPTSource:
    name, tasks = "gpt", ("lm",)
    forms = "a `muonft pretrain` output dir or cache name (gpt-tiny-adamw-s0)"
    distributed = True

    def claims(self, init: str) -> bool:
        return checkpoint_kind(init) == "gpt"

    def default_task(self, init: str) -> str:
        return "lm:rt"

    def defaults(self, task_kind: str, optimizer: str, method: str) -> dict[str, Any]:
        return {"lr": DEFAULT_LR[(optimizer, method)], "block_size": 128}

    def tokenizer(self, spec: RunSpec):
        return _tokenizer(checkpoint_config(resolve_init(spec.init)))

    def export(self, spec: RunSpec, model: torch.nn.Module, loaded: Loaded,
               directory: Path) -> None:
        export_checkpoint(spec, model, directory)

    def load(self, spec: RunSpec, task_kind: str, block_size: int | None,
             device: torch.device) -> Loaded:
        path = resolve_init(spec.init)
        model, tok, cfg = load_pretrained(path)
        corpus = cfg.get("pretrain_corpus", "kjv")
        probe = LMProbe(corpus, load_lm_splits(corpus, tok).heldout, block_size, EVAL_WINDOWS,
                        spec.eval_batches, None)
        return Loaded(model.to(device), probe, tokenizer=tok, lm_eval_windows=EVAL_WINDOWS,
                      identity={"weights": verified_weights(path)})


SOURCE = GPTSource()
