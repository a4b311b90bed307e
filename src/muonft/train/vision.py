"""The vision recipes: pretrain a small ViT on MNIST, fine-tune it (full or LoRA, AdamW or
Muon) on another image domain, and measure the mismatch.

``vision_pretrain(spec, out)`` trains :mod:`muonft.models.vit` on the ``mnist`` task of
:mod:`muonft.data.images` with the shared loop and writes ``out/model.safetensors``,
``out/config.json`` (``{"kind": "vit", ...}``, rebuilt by :func:`muonft.models.build_model`) and
``out/run.json`` (``spec`` — whose ``optimizer`` the sweeps read as the pretraining optimizer —,
status, metrics) exactly as :func:`muonft.train.pretrain.pretrain` does for the GPT; the default
``out`` is the cache checkpoint ``vit-<size>-<optimizer>-s<seed>`` (see
:func:`pretrain_checkpoint_name`). Re-running resumes from ``out/ckpt`` or returns the finished
record.

``vision_finetune(spec, out)`` loads such a checkpoint (or an ``hf:`` ViT/CLIP image classifier,
:mod:`muonft.models.hf_vision`), trains on ``spec["task"]`` (``digits``, ``mnist-rot``,
``mnist-inv``) and writes ``out/result.json`` with the record of ``docs/CONTRACTS.md``:

- ``target`` = accuracy on the task's validation split (``target_name: val_accuracy``,
  ``higher_is_better: true``; accuracy is what the study reports per cell), ``zero_shot`` = the
  same before fine-tuning (the pretrained MNIST head, same ten classes), ``test`` = held-out
  accuracy, ``val_loss``;
- ``forgetting`` = cross-entropy on the held-out split of the *pretraining* task (original
  MNIST) after − before (0 after zero steps), with ``pretrain_acc_before/after`` and
  ``forgetting_acc`` = accuracy before − after; ``feature_drift`` = 1 − mean cosine of the
  class-token features of those images after vs before. For ``hf:`` inits (a new random head,
  not pretrained on MNIST) ``forgetting`` is that feature drift (``forgetting_name``);
- ``update_rms`` (+ per optimizer group), ``diagnostics`` / ``diagnostics_update`` (and
  ``diagnostics_lora``) from :func:`muonft.diagnostics.weight_diagnostics`, curves as the GPT
  recipe.

LoRA (:func:`muonft.adapters.apply_lora`, default targets: every block q/k/v/o/fc_in/fc_out)
trains the adapters only; the pretrained head already maps to the same ten digits (a new
``hf:`` head stays trainable). The optimizer is :func:`muonft.train.pretrain.build_optimizer`
(Muon on block matrices, AdamW on patch/class/position embeddings, norms, biases and head).
"""

from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from muonft.atomic import atomic_write_json
from muonft.errors import CheckpointError, ConfigError
from muonft.train.loop import TrainConfig, best_metrics, train
from muonft.train.pretrain import OPTIMIZERS, build_optimizer

METHODS = ("full", "lora")
# Chosen by the LR probe recorded in the README ("Vision (ViT)").
PRETRAIN_LR = {"adamw": 1e-2, "muon": 1e-2}
FINETUNE_LR = {("adamw", "full"): 1e-2, ("muon", "full"): 1e-2,
               ("adamw", "lora"): 1e-2, ("muon", "lora"): 1e-2}
DEFAULT_PRETRAIN_STEPS = 600
EVAL_BATCH = 250
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


def is_vision_task(task: str | None) -> bool:
    """Whether a fine-tuning task is an image task of :mod:`muonft.data.images`."""
    from muonft.data.images import TASKS

    return task in TASKS


# --------------------------------------------------------------------------- pretraining
def default_pretrain_spec(**overrides: Any) -> dict[str, Any]:
    """A complete, validated ViT pretraining spec (``None`` values mean "default")."""
    from muonft.data.images import PRETRAIN_TASK
    from muonft.models.vit import PRESETS

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
    name = f"{spec['model']}-{spec['optimizer']}-s{spec['seed']}"
    if spec["steps"] != DEFAULT_PRETRAIN_STEPS:
        name += f"-{spec['steps']}steps"
    ref = default_pretrain_spec(model=spec["model"], optimizer=spec["optimizer"],
                                steps=spec["steps"], seed=spec["seed"])
    if spec != ref:
        name += "-" + hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:6]
    return name


def default_pretrain_out(spec: dict[str, Any]) -> Path:
    """``$MUONFT_CACHE/checkpoints/<pretrain_checkpoint_name(spec)>``."""
    from muonft.data import cache_dir

    return cache_dir() / "checkpoints" / pretrain_checkpoint_name(spec)


def image_metrics(model: torch.nn.Module, split, max_batches: int | None = None
                  ) -> dict[str, float]:
    """``{"accuracy", "loss"}`` of ``model`` over the first ``max_batches`` batches of
    ``EVAL_BATCH`` images of ``split`` (all of it when ``None``), in eval mode, no grad."""
    from muonft.data.images import eval_batches

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    correct, loss, n = 0, 0.0, 0
    try:
        with torch.no_grad():
            for x, y in eval_batches(split, EVAL_BATCH, max_batches):
                logits, _ = model(x.to(dev))
                y = y.to(dev)
                loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
                correct += int((logits.argmax(-1) == y).sum())
                n += len(y)
    finally:
        model.train(was_training)
    return {"accuracy": correct / max(1, n), "loss": loss / max(1, n)}


def image_eval_fn(split, max_batches: int | None):
    """The loop's ``eval_fn``: ``{"val_accuracy", "val_loss"}`` on ``split``."""

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
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
    from muonft.data.images import ImageBatcher, load_task
    from muonft.models import model_config
    from muonft.models.vit import build_vit
    from muonft.train.checkpoint import save_weights
    from muonft.train.loop import resolve_device
    from muonft.train.pretrain import _check_same_spec, _check_writable, hidden_weight_stats

    spec = default_pretrain_spec(**spec)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    out = Path(out) if out is not None else default_pretrain_out(spec)
    _check_writable(out)
    prev = _check_same_spec(out, spec)
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
    held = image_metrics(model, data.heldout)
    t = result["timings"]
    metrics = {"val_accuracy": result["final"].get("val_accuracy"),
               "val_loss": result["final"].get("val_loss"),
               "best_val_accuracy": result["best"].get("val_accuracy"),
               "heldout_accuracy": held["accuracy"], "heldout_loss": held["loss"],
               "train_loss": result["train_loss"], "initial_loss": result["initial_loss"],
               **hidden_weight_stats(model), **t,
               "images_per_s": t["train_s"] and result["steps"] * spec["batch_size"] / t["train_s"]}
    record = {"spec": spec, "status": result["status"], "metrics": metrics,
              "curves": result["curves"], "timings": t, "versions": _versions(), "error": None}
    atomic_write_json(out / "run.json", record)
    return record


def _versions() -> dict[str, str]:
    return {"torch": torch.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------- fine-tuning
def default_finetune_spec(**overrides: Any) -> dict[str, Any]:
    """A complete, validated ViT fine-tuning spec (``None`` values mean "default").

    Keys as the GPT recipe's (:func:`muonft.train.finetune.default_spec`) where they apply; no
    ``block_size``, and the constrained-update Muon options are not offered here.
    """
    from muonft.data.images import TASKS
    from muonft.optim import METHODS as ORTHOGONALIZERS
    from muonft.optim import SCALE_RULES

    spec = _filled({
        "init": "vit-tiny-adamw-s0", "task": "digits", "optimizer": "muon", "method": "full",
        "lr": None, "steps": 150, "batch_size": 64, "seed": 0, "weight_decay": 0.0,
        "warmup": 10, "schedule": "cosine", "grad_clip": 1.0, "eval_every": 50,
        "eval_batches": 10, "lora_rank": 8, "lora_alpha": 16.0, "lora_variant": "lora",
        "lora_dropout": 0.0, "lora_targets": None, "scale": "match_adamw_rms",
        "orthogonalizer": "polar_express", "ns_steps": 5, "momentum": 0.95, "nesterov": True,
        "adamw_lr_ratio": 1.0, "diag_every": 0,
    }, overrides, "vision finetune")
    if spec["method"] not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {spec['method']!r}")
    if spec["optimizer"] in OPTIMIZERS and spec["lr"] is None:
        spec["lr"] = FINETUNE_LR[(spec["optimizer"], spec["method"])]
    _check_common(spec)
    if spec["task"] not in TASKS or spec["task"] == "mnist":
        raise ConfigError(f"vision task must be one of "
                          f"{', '.join(t for t in TASKS if t != 'mnist')} (mnist is the "
                          f"pretraining task), got {spec['task']!r}")
    if isinstance(spec["diag_every"], bool) or not isinstance(spec["diag_every"], int) or \
            spec["diag_every"] < 0:
        raise ConfigError(f"diag_every must be an integer >= 0, got {spec['diag_every']!r}")
    if spec["orthogonalizer"] not in ORTHOGONALIZERS:
        raise ConfigError(f"orthogonalizer must be one of {', '.join(ORTHOGONALIZERS)}, got "
                          f"{spec['orthogonalizer']!r}")
    if spec["scale"] not in SCALE_RULES:
        raise ConfigError(f"unknown scale rule {spec['scale']!r}; choose one of "
                          f"{', '.join(sorted(SCALE_RULES))}")
    if not 0.0 <= spec["momentum"] < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {spec['momentum']}")
    if spec["method"] == "full":  # LoRA settings do not change a full fine-tune
        for k in LORA_KEYS:
            spec[k] = None
    else:
        t = spec["lora_targets"]
        if t is not None:  # JSON-shaped, so result.json compares equal
            spec["lora_targets"] = [t] if isinstance(t, str) else list(t)
        _lora_spec(spec)  # validates rank, alpha, dropout, variant
    return spec


LORA_KEYS = ("lora_rank", "lora_alpha", "lora_variant", "lora_dropout", "lora_targets")


def _lora_spec(spec: dict[str, Any]):
    from muonft.adapters import LoRASpec

    t = spec["lora_targets"]
    return LoRASpec(rank=spec["lora_rank"], alpha=spec["lora_alpha"],
                    dropout=spec["lora_dropout"], variant=spec["lora_variant"],
                    targets=None if t is None else tuple(t))


def load_vision_init(init: str) -> tuple[torch.nn.Module, str, bool]:
    """(model, pretraining task, whether the head is pretrained) of a fine-tuning ``init``: a
    ``vision_pretrain`` output (directory or cache name) or ``hf:<path-or-id>``."""
    from muonft.data.images import NUM_CLASSES, PRETRAIN_TASK
    from muonft.models import build_model
    from muonft.train.checkpoint import load_weights
    from muonft.train.finetune import resolve_init

    if init.startswith("hf:"):
        from muonft.models.hf_vision import load_hf_image_classifier

        return load_hf_image_classifier(init, num_labels=NUM_CLASSES), PRETRAIN_TASK, False
    path = resolve_init(init)
    try:
        cfg = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path / 'config.json'} is corrupt") from None
    if cfg.get("kind") != "vit":
        raise ConfigError(f"{init!r} is a {cfg.get('kind')!r} checkpoint; vision tasks need a "
                          f"ViT (`muonft pretrain --model vit-tiny`) or an hf: image model")
    model = build_model(cfg)
    model.load_state_dict(load_weights(path / "model.safetensors"), strict=True)
    return model, cfg.get("pretrain_task", PRETRAIN_TASK), True


def _features(model: torch.nn.Module, split) -> torch.Tensor:
    from muonft.data.images import eval_batches

    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    try:
        with torch.no_grad():
            return torch.cat([model.features(x.to(dev)).float().cpu()
                              for x, _ in eval_batches(split, EVAL_BATCH)])
    finally:
        model.train(was_training)


def vision_finetune(spec: dict[str, Any], out: Path, *, threads: int | None = None,
                    progress: bool = True, checkpoint_every: int = 50,
                    device: str | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished) ViT fine-tuning described by ``spec``; writes
    and returns the ``result.json`` record (module docstring). ``device``: ``auto`` (CUDA when
    available) or a torch device; not part of the spec."""
    from muonft.adapters import apply_lora, merge_lora, merged_state_dict, unmerge_lora
    from muonft.data.images import ImageBatcher, load_task
    from muonft.diagnostics import layer_group, weight_diagnostics
    from muonft.train.finetune import (
        _matrix_rms_tracker,
        diag_curves,
        diag_row,
        lora_one_grad_fn,
        muon_options,
        step_update_rms,
        update_rms_metrics,
    )
    from muonft.train.finetune_hf import embedding_drift
    from muonft.train.loop import resolve_device

    spec = default_finetune_spec(**spec)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    res_path = out / "result.json"
    if res_path.exists():
        prev = json.loads(res_path.read_text())
        if prev.get("spec") != spec:
            diff = sorted(k for k in spec if (prev.get("spec") or {}).get(k) != spec[k])
            raise ConfigError(f"{out} holds a run with a different spec (differs in {diff}); "
                              f"use another --out or delete it")
        if prev.get("status") in ("done", "diverged"):
            prev["resumed"] = "already finished"
            return prev
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(spec["seed"])  # an hf: init's new head is drawn from torch's RNG
    model, pretrain_task, head_pretrained = load_vision_init(spec["init"])
    model = model.to(resolve_device(device))
    lora = spec["method"] == "lora"
    if lora:  # bad targets or rank fail before any data or evaluation
        from muonft.adapters import resolve_targets

        resolve_targets(model, _lora_spec(spec))
    size = getattr(model, "input_size", None) or model.config.image_size  # hf: resized inside
    target = load_task(spec["task"], size)
    pre = load_task(pretrain_task, size)
    init_state = {n: p.detach().clone() for n, p in model.named_parameters()}
    zero_shot = image_metrics(model, target.val, spec["eval_batches"])["accuracy"]
    pre_before = image_metrics(model, pre.heldout)
    feats_before = _features(model, pre.heldout)

    batcher = ImageBatcher(target.train, spec["batch_size"], seed=spec["seed"])
    torch.manual_seed(spec["seed"])
    if lora:
        grad_fn = lora_one_grad_fn(batcher.get) if spec["lora_variant"] == "lora_one" else None
        model = apply_lora(model, _lora_spec(spec), grad_fn=grad_fn)
        if not head_pretrained:  # a new classifier must learn the task
            for n, p in model.named_parameters():
                if layer_group(n) == "head":
                    p.requires_grad_(True)
    opt = build_optimizer(model, spec["optimizer"], spec["lr"], spec["weight_decay"],
                          **muon_options(spec))
    tracker = _matrix_rms_tracker(opt)
    hooks = [opt.register_step_pre_hook(lambda *_: tracker.snapshot()),
             opt.register_step_post_hook(lambda *_: tracker.measure())]

    def current_weights() -> dict[str, torch.Tensor]:
        if lora:
            return merged_state_dict(model)
        return {n: p.detach() for n, p in model.named_parameters()}

    diag_path = out / "diag_curves.json"
    diag_rows: dict[str, dict[str, float]] = (
        json.loads(diag_path.read_text()) if diag_path.exists() else {})
    rms_curves: dict[str, list[list[float]]] = {}

    def on_step(step: int, loss: float) -> None:
        if tracker.history and tracker.history[-1][0] is None:  # this step's measurement
            for k, v in step_update_rms(tracker, tracker.history[-1][1]).items():
                rms_curves.setdefault(k, []).append([step, v])
            tracker.history[-1] = (step, tracker.history[-1][1])
        if spec["diag_every"] and step % spec["diag_every"] == 0 and step < spec["steps"]:
            diag_rows[str(step)] = diag_row(current_weights(), init_state)
            atomic_write_json(diag_path, diag_rows)

    tcfg = TrainConfig(steps=spec["steps"], schedule=spec["schedule"], warmup=spec["warmup"],
                       grad_clip=spec["grad_clip"], eval_every=spec["eval_every"],
                       checkpoint_every=checkpoint_every, progress=progress,
                       best_metric="val_accuracy", higher_is_better=True,
                       description=f"finetune {spec['task']} {spec['method']} "
                                   f"{spec['optimizer']}")
    atomic_write_json(res_path, {"spec": spec, "status": "running"})
    try:
        result = train(model, opt, batcher.get, tcfg, ckpt_dir=out / "ckpt", spec=spec,
                       on_step=on_step, eval_fn=image_eval_fn(target.val, spec["eval_batches"]))
    finally:
        for h in hooks:
            h.remove()
    final = current_weights()
    if lora:
        merge_lora(model)
    try:
        val = image_metrics(model, target.val, spec["eval_batches"])
        test = image_metrics(model, target.heldout)
        pre_after = image_metrics(model, pre.heldout)
        drift = embedding_drift(feats_before, _features(model, pre.heldout))
    finally:
        if lora:
            unmerge_lora(model)
    metrics: dict[str, Any] = {
        "target": val["accuracy"], "target_name": "val_accuracy", "higher_is_better": True,
        "zero_shot": zero_shot, "test": test["accuracy"], "val_loss": val["loss"],
        "test_loss": test["loss"],
        "pretrain_loss_before": pre_before["loss"], "pretrain_loss_after": pre_after["loss"],
        "pretrain_acc_before": pre_before["accuracy"], "pretrain_acc_after": pre_after["accuracy"],
        "forgetting_acc": pre_before["accuracy"] - pre_after["accuracy"],
        "feature_drift": drift["forgetting"], "feature_similarity_corr": drift["similarity_corr"],
        **update_rms_metrics(tracker), **best_metrics(result, "val_accuracy"),
    }
    if head_pretrained:
        metrics["forgetting"] = pre_after["loss"] - pre_before["loss"]
        metrics["forgetting_name"] = f"{pretrain_task} heldout loss after - before"
    else:
        metrics["forgetting"] = drift["forgetting"]
        metrics["forgetting_name"] = f"{pretrain_task} heldout feature drift (1 - cosine)"
    now = {n: final[n] for n in init_state}
    diagnostics = weight_diagnostics(now, init_state)
    diagnostics_update = weight_diagnostics(now, init_state, update=True)
    if spec["diag_every"]:  # the end point closes every diagnostics curve
        diag_rows[str(result["steps"])] = diag_row(now, init_state, diagnostics,
                                                   diagnostics_update)
    record: dict[str, Any] = {
        "status": result["status"], "spec": spec, "metrics": metrics,
        "diagnostics": diagnostics, "diagnostics_update": diagnostics_update,
        "curves": {**result["curves"], **rms_curves, **diag_curves(diag_rows)},
        "best": result["best"], "timings": result["timings"], "versions": _versions(),
        "error": None,
    }
    if lora:
        from muonft.diagnostics import lora_diagnostics

        record["diagnostics_lora"] = lora_diagnostics(model)
    atomic_write_json(res_path, record)
    return record
