"""The pretraining recipe: a GPT on the pretraining corpus with AdamW or Muon.

``pretrain(spec, out)`` builds the tokenizer, data, model and optimizer, runs the loop with
checkpoints in ``out/ckpt`` and writes ``out/model.safetensors``, ``out/config.json`` and
``out/run.json`` (spec, status, metrics) atomically. Re-running with the same ``out`` resumes
from the latest checkpoint, or returns the finished result; a different spec is refused.

Defaults use decoupled weight decay for both optimizers so that AdamW- and Muon-pretrained
models end with comparable hidden-weight scale (without decay a Muon-pretrained tiny GPT ends
with several times larger hidden weights, which would confound every later comparison).
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

import torch

from muonft import cache
from muonft.atomic import atomic_write_json, sha256_file
from muonft.data import LMBatcher, eval_batches, get_tokenizer, load_lm_splits
from muonft.diagnostics import spectral_metrics
from muonft.errors import CheckpointError, ConfigError
from muonft.models import PRESETS, build_gpt, model_config
from muonft.optim import Muon, muon_param_groups
from muonft.train import distributed as dd
from muonft.train.checkpoint import checkpoint_name as named_checkpoint
from muonft.train.checkpoint import save_weights
from muonft.train.loop import SCHEDULES, TrainConfig, train

OPTIMIZERS = ("adamw", "muon")
DEFAULT_STEPS = 600  # a checkpoint pretrained for another budget gets a -<steps>steps suffix
# Per-optimizer defaults, chosen by the LR sweep recorded in the README.
DEFAULT_LR = {"adamw": 0.03, "muon": 0.02}
DEFAULT_WD = {"adamw": 0.1, "muon": 0.1}


def default_spec(**overrides: Any) -> dict[str, Any]:
    """A complete pretraining spec with the defaults filled in (validated).

    ``tokens=T`` may be given instead of ``steps``: steps = max(1, T // (batch_size ·
    block_size)); the spec records the resulting ``steps``.
    """
    overrides = dict(overrides)
    tokens = overrides.pop("tokens", None)
    opt = overrides.get("optimizer", "adamw")
    spec = {
        "model": "tiny", "optimizer": opt, "steps": DEFAULT_STEPS, "lr": None, "weight_decay": None,
        "batch_size": 16, "block_size": 128, "seed": 0, "corpus": "kjv", "tokenizer_corpus": "kjv",
        "vocab_size": 4096,
        "warmup": 30, "schedule": "cosine", "grad_clip": 1.0, "eval_every": 100,
        "eval_batches": 20,
    }
    unknown = set(overrides) - set(spec)
    if unknown:
        raise ConfigError(f"unknown pretrain option(s) {sorted(unknown)}; valid: {sorted(spec)}")
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if spec["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {spec['optimizer']!r}")
    if spec["lr"] is None:
        spec["lr"] = DEFAULT_LR[spec["optimizer"]]
    if spec["weight_decay"] is None:
        spec["weight_decay"] = DEFAULT_WD[spec["optimizer"]]
    if tokens is not None:
        if overrides.get("steps") is not None:
            raise ConfigError("give --steps or --tokens, not both")
        if not isinstance(tokens, int) or tokens <= 0:
            raise ConfigError(f"tokens must be a positive integer, got {tokens}")
        if isinstance(spec["batch_size"], int) and isinstance(spec["block_size"], int) and \
                spec["batch_size"] > 0 and spec["block_size"] > 0:
            spec["steps"] = max(1, tokens // (spec["batch_size"] * spec["block_size"]))
    for k in ("steps", "batch_size", "block_size", "vocab_size", "eval_batches"):
        if not isinstance(spec[k], int) or isinstance(spec[k], bool) or spec[k] <= 0:
            raise ConfigError(f"{k} must be a positive integer, got {spec[k]}")
    for k in ("warmup", "eval_every", "seed"):
        if not isinstance(spec[k], int) or spec[k] < 0:
            raise ConfigError(f"{k} must be an integer >= 0, got {spec[k]}")
    if not spec["lr"] > 0:
        raise ConfigError(f"lr must be > 0, got {spec['lr']}")
    if spec["weight_decay"] < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {spec['weight_decay']}")
    if spec["model"] not in PRESETS:
        raise ConfigError(f"unknown model {spec['model']!r}; choose one of {', '.join(PRESETS)}")
    if spec["block_size"] > PRESETS[spec["model"]].block_size:
        raise ConfigError(f"block_size {spec['block_size']} exceeds the {spec['model']} model's "
                          f"{PRESETS[spec['model']].block_size}")
    if spec["schedule"] not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {spec['schedule']!r}")
    return spec


def checkpoint_name(spec: dict[str, Any]) -> str:
    """Cache name of a pretrained GPT: ``gpt-<model>-<optimizer>-s<seed>``, plus
    ``-<steps>steps`` for a budget other than :data:`DEFAULT_STEPS` and a short hash of the
    spec when any other setting differs from the defaults (``gpt-tiny-muon-s0-150steps``).
    ``muonft pretrain`` and ``muonft reproduce`` both name checkpoints by it."""
    spec = default_spec(**spec)
    ref = default_spec(model=spec["model"], optimizer=spec["optimizer"], steps=spec["steps"],
                       seed=spec["seed"])
    return named_checkpoint(f"gpt-{spec['model']}", spec, ref, DEFAULT_STEPS)


def default_out(spec: dict[str, Any]) -> Path:
    """``$MUONFT_CACHE/checkpoints/<checkpoint_name(spec)>``."""
    return cache.cache_dir() / "checkpoints" / checkpoint_name(spec)


def build_optimizer(model: torch.nn.Module, optimizer: str, lr: float, weight_decay: float,
                    **muon_options: Any) -> torch.optim.Optimizer:
    """AdamW (betas 0.9, 0.95) on everything, or Muon on hidden matrices + AdamW elsewhere.

    Under Muon the AdamW groups use ``adamw_lr`` (default: the same ``lr``, as the
    ``match_adamw_rms`` scale rule intends) unless given in ``muon_options``.
    """
    if optimizer == "adamw":
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay,
                                 foreach=True)
    if optimizer == "muon":
        return Muon(muon_param_groups(model), lr=lr, weight_decay=weight_decay, **muon_options)
    raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")


def hidden_weight_stats(model: torch.nn.Module | dict[str, torch.Tensor]) -> dict[str, float]:
    """RMS and mean spectral norm of the GPT's block matrices (of a model, or of its full
    state dict)."""
    named = model.items() if isinstance(model, dict) else model.named_parameters()
    mats = [p.detach().float() for n, p in named if n.startswith("blocks.") and p.ndim == 2]
    if not mats:
        return {}
    rms = math.sqrt(sum(float(m.square().sum()) for m in mats) / sum(m.numel() for m in mats))
    spec = sum(float(spectral_metrics(m)["spectral_norm"]) for m in mats) / len(mats)
    return {"hidden_rms": rms, "hidden_mean_spectral_norm": spec}


def lm_eval_fn(tokens, block_size: int, batch_size: int, max_batches: int):
    """A closure returning {"val_loss": mean token cross-entropy over fixed windows}."""
    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        total, n = 0.0, 0
        dev = next(model.parameters()).device
        for x, y in eval_batches(tokens, block_size, batch_size, max_batches):
            _, loss = model(x.to(dev), y.to(dev))
            total += float(loss) * y.numel()
            n += y.numel()
        return {"val_loss": total / max(1, n)}

    return evaluate


def check_same_spec(out: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    run = out / "run.json"
    if not run.exists():
        return None
    try:
        prev = json.loads(run.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{run} is corrupt; delete {out} to start over") from None
    if prev.get("spec") != spec:
        diff = sorted(k for k in spec if prev.get("spec", {}).get(k) != spec[k])
        raise ConfigError(f"{out} holds a run with a different spec (differs in {diff}); use "
                          f"another --out or delete it")
    return prev


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    if not os.access(out, os.W_OK):
        raise ConfigError(f"output directory {out} is not writable; pass another --out")


def pretrain(spec: dict[str, Any], out: Path | None = None, *, threads: int | None = None,
             progress: bool = True, checkpoint_every: int = 100,
             device: str | None = None, parallel: str | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished) pretraining described by ``spec``.

    ``spec`` holds any subset of :func:`default_spec`'s keys; ``out`` defaults to
    :func:`default_out`. Writes ``out/model.safetensors``, ``out/config.json`` (what
    :func:`muonft.models.build_model` rebuilds the model from, plus the tokenizer) and
    ``out/run.json`` = ``{"spec", "status", "metrics", "curves", "timings", "versions"}``
    with ``metrics.val_loss`` the final validation loss on the pretraining corpus and
    ``hidden_rms`` / ``hidden_mean_spectral_norm`` of the block matrices. ``device``: ``auto``
    (default: CUDA when available) or a torch device; it is not part of the spec, so a run
    may be resumed on another device. ``parallel`` (under ``torchrun``): ``ddp`` or ``fsdp``
    (default ``$MUONFT_PARALLEL``, else ``ddp``; see :mod:`muonft.train.distributed`), not part
    of the spec either: a run resumes at another world size and under the other mode.
    """
    spec = default_spec(**spec)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    out = Path(out) if out is not None else default_out(spec)
    check_writable(out)
    prev = check_same_spec(out, spec)
    if prev is not None and prev.get("status") in ("done", "diverged") and \
            (out / "model.safetensors").exists():
        prev["resumed"] = "already finished"
        return prev
    ctx = dd.setup(device, parallel)
    dd.check_batch(spec["batch_size"], ctx)
    tok = get_tokenizer(spec["vocab_size"], corpus=spec["tokenizer_corpus"])
    splits = load_lm_splits(spec["corpus"], tok)
    torch.manual_seed(spec["seed"])
    model = build_gpt(spec["model"], vocab_size=tok.vocab_size).to(ctx.device)
    # DDP all-reduces gradients (the loop keeps the plain module's names); FSDP2 shards the
    # parameters in place, so the optimizer is built after
    loss_fn = dd.parallelize(model, ctx)
    opt = build_optimizer(model, spec["optimizer"], spec["lr"], spec["weight_decay"])
    batcher = LMBatcher(splits.train, spec["block_size"], spec["batch_size"], seed=spec["seed"])
    cfg = TrainConfig(steps=spec["steps"], schedule=spec["schedule"], warmup=spec["warmup"],
                      grad_clip=spec["grad_clip"], eval_every=spec["eval_every"],
                      checkpoint_every=checkpoint_every, threads=threads,
                      progress=progress and ctx.main,
                      description=f"pretrain {spec['model']} {spec['optimizer']}")
    if ctx.main:
        atomic_write_json(out / "run.json", {"spec": spec, "status": "running"})
    try:
        result = train(model, opt, dd.shard(batcher.get, ctx), cfg, ckpt_dir=out / "ckpt",
                       spec=spec, loss_fn=loss_fn,
                       eval_fn=lm_eval_fn(splits.val, spec["block_size"], 32,
                                          spec["eval_batches"]))
        weights = dd.full_state_dict(model)  # FSDP2: gathered to rank 0 (a collective)
    except BaseException:
        dd.teardown(ctx, wait=False)
        raise
    if not ctx.main:
        dd.teardown(ctx)
        return {"spec": spec, "status": result["status"], "metrics": {}, "rank": ctx.rank}
    # Weights and config first, run.json last: a run.json saying "done" implies both exist.
    save_weights(weights, out / "model.safetensors")
    atomic_write_json(out / "config.json", {
        **model_config(model), "pretrain_corpus": spec["corpus"],
        "tokenizer": {"corpus": spec["tokenizer_corpus"], "vocab_size": spec["vocab_size"]}})
    metrics = {"val_loss": result["final"].get("val_loss"),
               "best_val_loss": result["best"].get("val_loss"),
               "train_loss": result["train_loss"], "initial_loss": result["initial_loss"],
               **hidden_weight_stats(weights), **result["timings"]}
    record = {"spec": spec, "status": result["status"], "metrics": metrics,
              "curves": result["curves"], "timings": result["timings"],
              "versions": {"torch": torch.__version__, "python": platform.python_version()},
              "weights_sha256": sha256_file(out / "model.safetensors"), "error": None}
    atomic_write_json(out / "run.json", record)
    dd.teardown(ctx)
    return record
