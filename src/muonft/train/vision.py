"""ViT pretraining: train a small ViT on MNIST, the start point of the vision study.

``vision_pretrain(spec, out)`` trains :mod:`muonft.models.vit` on the ``mnist`` task of
:mod:`muonft.data.images` with the shared loop and writes ``out/model.safetensors``,
``out/config.json`` (``{"kind": "vit", ...}``, rebuilt by :func:`muonft.models.build_model`) and
``out/run.json`` (``spec`` — whose ``optimizer`` the sweeps read as the pretraining optimizer —,
status, metrics) exactly as :func:`muonft.train.pretrain.pretrain` does for the GPT; the default
``out`` is the cache checkpoint ``vit-<size>-<optimizer>-s<seed>`` (see
:func:`pretrain_checkpoint_name`). Re-running resumes from ``out/ckpt`` or returns the finished
record. Fine-tuning a ViT is the shared skeleton (:mod:`muonft.train.finetune`) with the ViT
model source (:mod:`muonft.train.families.vision`) and the image task.
"""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import torch

from muonft.atomic import atomic_write_json, sha256_file
from muonft.cache import cache_dir
from muonft.data.images import PRETRAIN_TASK, ImageBatcher, load_task
from muonft.errors import ConfigError
from muonft.models import model_config
from muonft.models.vit import PRESETS, build_vit
from muonft.train.checkpoint import checkpoint_name, save_weights
from muonft.train.loop import TrainConfig, resolve_device, train
from muonft.train.pretrain import (
    OPTIMIZERS,
    build_optimizer,
    check_same_spec,
    check_writable,
    hidden_weight_stats,
)
from muonft.train.tasks import eval_mode, image_metrics

# Chosen by the LR probe recorded in the README ("Vision (ViT)").
PRETRAIN_LR = {"adamw": 1e-2, "muon": 1e-2}
DEFAULT_PRETRAIN_STEPS = 600
SCHEDULES = ("constant", "cosine", "linear")


def _filled(defaults: dict[str, Any], overrides: dict[str, Any], what: str) -> dict[str, Any]:
    """``defaults`` updated by the non-None ``overrides``; unknown keys refused by name."""
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = set(given) - set(defaults)
    if unknown:
        raise ConfigError(f"unknown {what} option(s) {sorted(unknown)}; valid: "
                          f"{sorted(defaults)}")
    return {**defaults, **given}


def _check_common(spec: dict[str, Any]) -> None:
    if spec["optimizer"] not in OPTIMIZERS:
        raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {spec['optimizer']!r}")
    for k in ("steps", "warmup", "eval_every", "seed"):
        if isinstance(spec[k], bool) or not isinstance(spec[k], int) or spec[k] < 0:
            raise ConfigError(f"{k} must be an integer >= 0, got {spec[k]!r}")
    for k in ("batch_size", "eval_batches"):
        if isinstance(spec[k], bool) or not isinstance(spec[k], int) or spec[k] < 1:
            raise ConfigError(f"{k} must be a positive integer, got {spec[k]!r}")
    if not spec["lr"] > 0:
        raise ConfigError(f"lr must be > 0, got {spec['lr']}")
    if spec["weight_decay"] < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {spec['weight_decay']}")
    if spec["schedule"] not in SCHEDULES:
        raise ConfigError(f"schedule must be one of {SCHEDULES}, got {spec['schedule']!r}")


# --------------------------------------------------------------------------- pretraining
def default_pretrain_spec(**overrides: Any) -> dict[str, Any]:
    """A complete, validated ViT pretraining spec (``None`` values mean "default")."""
    spec = _filled({
        "model": "vit-tiny", "optimizer": "adamw", "task": PRETRAIN_TASK,
        "steps": DEFAULT_PRETRAIN_STEPS, "lr": None, "weight_decay": 0.05, "batch_size": 128,
        "seed": 0, "warmup": 30, "schedule": "cosine", "grad_clip": 1.0, "eval_every": 200,
        "eval_batches": 10,
    }, overrides, "vision pretrain")
    if spec["optimizer"] in OPTIMIZERS and spec["lr"] is None:
        spec["lr"] = PRETRAIN_LR[spec["optimizer"]]
    _check_common(spec)
    if spec["steps"] < 1:
        raise ConfigError(f"steps must be a positive integer, got {spec['steps']}")
    if spec["model"] not in PRESETS:
        raise ConfigError(f"unknown ViT {spec['model']!r}; choose one of {', '.join(PRESETS)}")
    if spec["task"] != PRETRAIN_TASK:
        raise ConfigError(f"ViT pretraining runs on {PRETRAIN_TASK!r} (the fine-tuning tasks "
                          f"are other domains), got task {spec['task']!r}")
    return spec


def pretrain_checkpoint_name(spec: dict[str, Any]) -> str:
    """Cache name of a pretrained ViT: ``<model>-<optimizer>-s<seed>`` (``vit-tiny-adamw-s0``),
    plus ``-<steps>steps`` for another step budget and a short hash of the spec when any other
    setting differs from the defaults."""
    spec = default_pretrain_spec(**spec)
    ref = default_pretrain_spec(model=spec["model"], optimizer=spec["optimizer"],
                                steps=spec["steps"], seed=spec["seed"])
    return checkpoint_name(spec["model"], spec, ref, DEFAULT_PRETRAIN_STEPS)


def default_pretrain_out(spec: dict[str, Any]) -> Path:
    """``$MUONFT_CACHE/checkpoints/<pretrain_checkpoint_name(spec)>``."""
    return cache_dir() / "checkpoints" / pretrain_checkpoint_name(spec)


def image_eval_fn(split, max_batches: int | None):
    """The loop's ``eval_fn``: ``{"val_accuracy", "val_loss"}`` on ``split``."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        with eval_mode(model):
            m = image_metrics(model, split, max_batches)
        return {"val_accuracy": m["accuracy"], "val_loss": m["loss"]}

    return evaluate


def vision_pretrain(spec: dict[str, Any], out: Path | None = None, *,
                    threads: int | None = None, progress: bool = True,
                    checkpoint_every: int = 200, device: str | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished) ViT pretraining described by ``spec``.

    ``spec``: any subset of :func:`default_pretrain_spec`'s keys; ``out`` defaults to
    :func:`default_pretrain_out`. Writes ``model.safetensors``, ``config.json`` and ``run.json``
    = ``{"spec", "status", "metrics", "curves", "timings", "versions"}`` with
    ``metrics.val_accuracy`` / ``val_loss`` (MNIST validation split), ``heldout_accuracy`` and
    the block matrices' ``hidden_rms`` / ``hidden_mean_spectral_norm``. ``device``: ``auto``
    (CUDA when available) or a torch device; not part of the spec.
    """
    spec = default_pretrain_spec(**spec)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    out = Path(out) if out is not None else default_pretrain_out(spec)
    check_writable(out)
    prev = check_same_spec(out, spec)
    if prev is not None and prev.get("status") in ("done", "diverged") and \
            (out / "model.safetensors").exists():
        prev["resumed"] = "already finished"
        return prev
    torch.manual_seed(spec["seed"])
    model = build_vit(spec["model"]).to(resolve_device(device))
    data = load_task(spec["task"], model.config.image_size)
    opt = build_optimizer(model, spec["optimizer"], spec["lr"], spec["weight_decay"])
    batcher = ImageBatcher(data.train, spec["batch_size"], seed=spec["seed"])
    cfg = TrainConfig(steps=spec["steps"], schedule=spec["schedule"], warmup=spec["warmup"],
                      grad_clip=spec["grad_clip"], eval_every=spec["eval_every"],
                      checkpoint_every=checkpoint_every, threads=threads, progress=progress,
                      best_metric="val_accuracy", higher_is_better=True,
                      description=f"pretrain {spec['model']} {spec['optimizer']}")
    atomic_write_json(out / "run.json", {"spec": spec, "status": "running"})
    result = train(model, opt, batcher.get, cfg, ckpt_dir=out / "ckpt", spec=spec,
                   eval_fn=image_eval_fn(data.val, spec["eval_batches"]))
    # Weights and config first, run.json last: a run.json saying "done" implies both exist.
    save_weights(model.state_dict(), out / "model.safetensors")
    atomic_write_json(out / "config.json", {**model_config(model), "pretrain_task": spec["task"]})
    with eval_mode(model):
        held = image_metrics(model, data.heldout, None)
    t = result["timings"]
    metrics = {"val_accuracy": result["final"].get("val_accuracy"),
               "val_loss": result["final"].get("val_loss"),
               "best_val_accuracy": result["best"].get("val_accuracy"),
               "heldout_accuracy": held["accuracy"], "heldout_loss": held["loss"],
               "train_loss": result["train_loss"], "initial_loss": result["initial_loss"],
               **hidden_weight_stats(model), **t,
               "images_per_s": t["train_s"] and result["steps"] * spec["batch_size"] / t["train_s"]}
    record = {"spec": spec, "status": result["status"], "metrics": metrics,
              "curves": result["curves"], "timings": t, "versions": _versions(),
              "weights_sha256": sha256_file(out / "model.safetensors"), "error": None}
    atomic_write_json(out / "run.json", record)
    return record


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version()}
