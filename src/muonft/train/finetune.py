"""The fine-tuning recipe: a pretrained GPT, full or LoRA, AdamW or Muon, then measured.

``finetune(spec, out)`` loads a ``muonft pretrain`` output (a directory, or a checkpoint name in
the cache such as ``gpt-tiny-adamw-s0``), optionally injects LoRA adapters, trains on the target
task with the shared loop (checkpoints in ``out/ckpt``, resume on rerun) and writes
``out/result.json`` atomically with the record of ``docs/CONTRACTS.md``:

- ``metrics``: ``target`` (validation loss on the target corpus), ``zero_shot`` (the same before
  fine-tuning), ``relative_ppl`` = exp(target − zero_shot), ``test`` (held-out loss on the
  target corpus), ``forgetting`` = held-out loss on the *pretraining* corpus after − before,
  ``update_rms`` (mean RMS of the per-step weight change of trainable matrices) and
  ``update_rms_muon`` / ``update_rms_adamw`` per optimizer group (see
  :func:`update_rms_metrics`);
- ``diagnostics`` / ``diagnostics_update``: per layer group, of the (merged) weights and of
  ΔW = W − W₀ (stable rank, spectral entropy, σ₁, max-norm; drift and cosine to W₀);
  ``diagnostics_lora`` (LoRA runs): per group, of the factors A, B and of s·BA;
- ``curves``: the loop's ``train_loss`` / ``val_loss``, per-step ``update_rms*``, and with
  ``diag_every`` = N > 0 the overall diagnostics every N steps and at the end
  (``diag_l2_drift``, ``diag_stable_rank``, ``diag_update_stable_rank``, …; see
  :func:`diag_row`).

Muon runs take ``orthogonalizer`` (``exact_thin`` suits LoRA factors), ``ns_steps``,
``momentum``, ``nesterov``, ``scale`` and ``adamw_lr_ratio`` (AdamW groups at lr · ratio); LoRA
runs take ``lora_rank``, ``lora_alpha``, ``lora_variant`` (``lora_one`` gets its gradient
from :func:`lora_one_grad_fn`), ``lora_dropout`` and ``lora_targets``.

Only LM tasks (``lm:<corpus>``) on in-house GPT checkpoints are supported so far; HF models and
classification tasks are added by the real-model work.
"""

from __future__ import annotations

import copy
import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from muonft.atomic import atomic_write_json
from muonft.errors import CheckpointError, ConfigError, DataMissingError
from muonft.train.loop import TrainConfig, best_metrics, train
from muonft.train.pretrain import build_optimizer, lm_eval_fn

METHODS = ("full", "lora")
DEFAULT_LR = {("adamw", "full"): 3e-3, ("muon", "full"): 3e-3,
              ("adamw", "lora"): 1e-2, ("muon", "lora"): 1e-2}


def default_spec(**overrides: Any) -> dict[str, Any]:
    """A complete fine-tuning spec with defaults filled in (validated)."""
    from muonft.train import finetune_hf  # HF inits and classification tasks: their own recipe

    if finetune_hf.is_hf_spec(overrides):
        return finetune_hf.default_spec(**overrides)
    spec: dict[str, Any] = {
        "init": "gpt-tiny-adamw-s0", "task": "lm:rt", "optimizer": "muon", "method": "full",
        "lr": None, "steps": 200, "batch_size": 16, "block_size": 128, "seed": 0,
        "weight_decay": 0.0, "warmup": 10, "schedule": "cosine", "grad_clip": 1.0,
        "eval_every": 50, "eval_batches": 10, "lora_rank": 8, "lora_alpha": 16.0,
        "lora_variant": "lora", "scale": "match_adamw_rms",
        "lora_dropout": 0.0, "lora_targets": None, "orthogonalizer": "polar_express",
        "ns_steps": 5, "momentum": 0.95, "nesterov": True, "adamw_lr_ratio": 1.0,
        "diag_every": 0, "update_rank": None, "max_drift": None, "lora_muon": None,
    }
    unknown = set(overrides) - set(spec)
    if unknown:
        raise ConfigError(f"unknown finetune option(s) {sorted(unknown)}; valid: {sorted(spec)}")
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if spec["optimizer"] not in ("adamw", "muon"):
        raise ConfigError(f"optimizer must be one of ('adamw', 'muon'), got {spec['optimizer']!r}")
    if spec["method"] not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {spec['method']!r}")
    if spec["lr"] is None:
        spec["lr"] = DEFAULT_LR[(spec["optimizer"], spec["method"])]
    if not spec["lr"] > 0:
        raise ConfigError(f"lr must be > 0, got {spec['lr']}")
    if not isinstance(spec["steps"], int) or spec["steps"] < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {spec['steps']}")
    if not str(spec["task"]).startswith("lm:"):
        raise ConfigError(f"task {spec['task']!r} is not supported yet; use lm:<corpus> "
                          f"(e.g. lm:rt)")
    _validate_options(spec)
    if spec["method"] == "full":  # LoRA settings do not change a full fine-tune
        for k in LORA_KEYS:
            spec[k] = None
    return spec


LORA_KEYS = ("lora_rank", "lora_alpha", "lora_variant", "lora_dropout", "lora_targets")


def _validate_options(spec: dict[str, Any]) -> None:
    """Shapes, Muon options and LoRA settings of a filled spec (ConfigError naming the value)."""
    from muonft.optim import METHODS as ORTHOGONALIZERS
    from muonft.optim import SCALE_RULES

    for k in ("batch_size", "block_size", "eval_batches", "ns_steps"):
        if isinstance(spec[k], bool) or not isinstance(spec[k], int) or spec[k] < 1:
            raise ConfigError(f"{k} must be a positive integer, got {spec[k]!r}")
    for k in ("eval_every", "warmup", "diag_every"):
        if isinstance(spec[k], bool) or not isinstance(spec[k], int) or spec[k] < 0:
            raise ConfigError(f"{k} must be an integer >= 0, got {spec[k]!r}")
    if spec["orthogonalizer"] not in ORTHOGONALIZERS:
        raise ConfigError(f"orthogonalizer must be one of {', '.join(ORTHOGONALIZERS)}, got "
                          f"{spec['orthogonalizer']!r}")
    if spec["scale"] not in SCALE_RULES:
        raise ConfigError(f"unknown scale rule {spec['scale']!r}; choose one of "
                          f"{', '.join(sorted(SCALE_RULES))}")
    if not 0.0 <= spec["momentum"] < 1.0:
        raise ConfigError(f"momentum must be in [0, 1), got {spec['momentum']}")
    if not isinstance(spec["nesterov"], bool):
        raise ConfigError(f"nesterov must be true or false, got {spec['nesterov']!r}")
    if not spec["adamw_lr_ratio"] > 0:
        raise ConfigError(f"adamw_lr_ratio must be > 0, got {spec['adamw_lr_ratio']}")
    _validate_constraints(spec)
    if spec["method"] == "lora":
        if isinstance(spec["lora_targets"], str):
            spec["lora_targets"] = [spec["lora_targets"]]
        elif spec["lora_targets"] is not None:  # JSON-shaped, so result.json compares equal
            spec["lora_targets"] = list(spec["lora_targets"])
        _lora_spec(spec)  # rank, alpha, dropout, variant and targets


CONSTRAINT_KEYS = ("update_rank", "max_drift", "lora_muon")


def _validate_constraints(spec: dict[str, Any]) -> None:
    """The constrained-update Muon options (``muonft.optim.Muon``'s ``update_rank``,
    ``max_drift``, ``lora_muon``): Muon only; ``joint`` needs LoRA, ``max_drift`` full weights."""
    r, rho, mode = spec["update_rank"], spec["max_drift"], spec["lora_muon"]
    if r is not None and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
        raise ConfigError(f"update_rank must be a positive integer, got {r!r}")
    if rho is not None and (isinstance(rho, bool) or not isinstance(rho, (int, float))
                            or not rho > 0):
        raise ConfigError(f"max_drift must be a number > 0, got {rho!r}")
    if mode not in (None, "independent", "joint"):
        raise ConfigError(f"lora_muon must be 'independent' or 'joint', got {mode!r}")
    given = [k for k in CONSTRAINT_KEYS if spec[k] is not None]
    if given and spec["optimizer"] != "muon":
        raise ConfigError(f"{', '.join(given)}: Muon options; use optimizer muon")
    if mode == "joint" and spec["method"] != "lora":
        raise ConfigError("lora_muon 'joint' steps LoRA factor pairs; use method lora")
    if rho is not None and spec["method"] == "lora":
        raise ConfigError("max_drift bounds full weights (a LoRA B starting at zero would stay "
                          "there); use method full")


def constraint_metrics(opt: torch.optim.Optimizer, spec: dict[str, Any]) -> dict[str, Any]:
    """``opt.constraint_stats()`` (drift checks/binds/bind rate/max, low-rank matrices) when a
    constrained-update option is on, for the result's metrics."""
    if not any(spec.get(k) is not None for k in ("update_rank", "max_drift")):
        return {}
    return dict(opt.constraint_stats())


def _lora_spec(spec: dict[str, Any]):
    from muonft.adapters import LoRASpec

    targets = spec["lora_targets"]
    return LoRASpec(rank=spec["lora_rank"], alpha=spec["lora_alpha"],
                    dropout=spec["lora_dropout"], variant=spec["lora_variant"],
                    targets=None if targets is None else tuple(targets))


def resolve_init(init: str) -> Path:
    """A pretrain output directory from a path or a checkpoint name in the cache."""
    from muonft.data import cache_dir

    if init.startswith("hf:"):
        raise ConfigError("hf: models are not supported by finetune yet; use a muonft pretrain "
                          "checkpoint")
    p = Path(init).expanduser()
    if not p.exists():
        p = cache_dir() / "checkpoints" / init
    if not (p / "config.json").exists() or not (p / "model.safetensors").exists():
        raise DataMissingError(f"no pretrained checkpoint at {init!r} (looked for config.json "
                               f"and model.safetensors); run `muonft pretrain` first")
    return p


def steps_for_epochs(spec: dict[str, Any], epochs: float) -> int:
    """Optimizer steps that make ``epochs`` passes over the training split of a complete
    fine-tuning spec (any recipe): ⌈epochs·N / batch_size⌉ for N training examples
    (classification, images), ⌈epochs·T / (batch_size·block_size)⌉ for T training tokens
    (``lm:<corpus>``, tokenized with the model's own tokenizer)."""
    from muonft.data import load_lm_splits
    from muonft.data.classification import is_classification_task, load_task_split
    from muonft.models.hf import is_hf_init
    from muonft.train.vision import is_vision_task

    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise ConfigError(f"epochs must be a number > 0, got {epochs!r}")
    task, batch = str(spec["task"]), spec["batch_size"]
    if is_vision_task(task):
        from muonft.data.images import load_task

        return max(1, math.ceil(epochs * len(load_task(task).train.y) / batch))
    if is_classification_task(task):
        return max(1, math.ceil(epochs * len(load_task_split(task, "train")[1]) / batch))
    if not task.startswith("lm:"):
        raise ConfigError(f"cannot count epochs of task {task!r}")
    if is_hf_init(spec["init"]):
        from transformers import AutoTokenizer

        from muonft.models.hf import resolve_source
        from muonft.train.finetune_hf import lm_tokenizer

        ref, local = resolve_source(spec["init"])
        tok = lm_tokenizer(AutoTokenizer.from_pretrained(ref, local_files_only=local),
                           spec["init"])
    else:
        tok = load_pretrained(resolve_init(spec["init"]))[1]
    tokens = len(load_lm_splits(task[3:], tok).train)
    return max(1, math.ceil(epochs * tokens / (batch * spec["block_size"])))


def load_pretrained(path: Path):
    """(model, tokenizer, config dict) of a ``muonft pretrain`` output directory."""
    from muonft.data import get_tokenizer
    from muonft.models import build_gpt
    from muonft.train.checkpoint import load_weights

    try:
        cfg = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path / 'config.json'} is corrupt") from None
    model = build_gpt(cfg["config"])
    model.load_state_dict(load_weights(path / "model.safetensors"), strict=True)
    tok = get_tokenizer(cfg["tokenizer"]["vocab_size"], corpus=cfg["tokenizer"]["corpus"])
    return model, tok, cfg


def _eval_loss(model, tokens, spec) -> float:
    model.eval()
    with torch.no_grad():
        v = lm_eval_fn(tokens, spec["block_size"], 32, spec["eval_batches"])(model)["val_loss"]
    model.train()
    return v


def finetune(spec: dict[str, Any], out: Path, *, threads: int | None = None,
             progress: bool = True, checkpoint_every: int = 50,
             device: str | None = None, parallel: str | None = None) -> dict[str, Any]:
    """Run (or resume, or return the finished) fine-tuning described by ``spec``.

    ``device`` (GPT recipe): ``auto`` (default: CUDA when available) or a torch device; it is
    not part of the spec, so a run may resume on another device.

    Under ``torchrun --nproc-per-node N`` (GPT recipe) every rank takes rows ``rank::N`` of
    each global batch, so the run is the single-process run to floating-point tolerance;
    ``parallel`` (default ``$MUONFT_PARALLEL``, else ``ddp``) picks DDP or FSDP2 (see
    :mod:`muonft.train.distributed`; FSDP2 keeps a plain copy of the model on rank 0 for the
    diagnostics and final evaluations, and refuses the constrained-update options). Rank 0
    writes checkpoints, curves and ``result.json``; other ranks return
    ``{"spec", "status", "metrics": {}, "rank"}``. The run resumes at any world size. The HF
    recipe refuses to run on more than one process."""
    from muonft.train import distributed as dd
    from muonft.train.finetune_hf import finetune_hf, is_hf_spec

    if is_hf_spec(spec):
        dd.require_single_process("HF fine-tuning")
        return finetune_hf(spec, out, threads=threads, progress=progress,
                           checkpoint_every=checkpoint_every)
    spec = default_spec(**spec)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    res_path = out / "result.json"
    if res_path.exists():
        prev = json.loads(res_path.read_text())
        prev_spec = _filled(prev.get("spec") or {})
        if prev_spec != spec:
            diff = sorted(k for k in spec if prev_spec.get(k) != spec[k])
            raise ConfigError(f"{out} holds a run with a different spec (differs in {diff}); "
                              f"use another --out or delete it")
        if prev.get("status") in ("done", "diverged"):
            prev["resumed"] = "already finished"
            return prev
    if dd.world_size_from_env() > 1 and dd.parallel_mode(parallel) == "fsdp":
        given = [k for k in CONSTRAINT_KEYS if spec[k] not in (None, "independent")]
        if given:
            raise ConfigError(f"{', '.join(given)}: constrained Muon updates need whole "
                              f"matrices on every rank; use MUONFT_PARALLEL=ddp")
    if threads:
        torch.set_num_threads(threads)
    ctx = dd.setup(device, parallel)
    try:
        dd.check_batch(spec["batch_size"], ctx)
        record = _finetune_gpt(spec, out, ctx, progress=progress,
                               checkpoint_every=checkpoint_every)
    except BaseException:
        dd.teardown(ctx, wait=False)
        raise
    dd.teardown(ctx)
    return record


def _finetune_gpt(spec: dict[str, Any], out: Path, ctx, *, progress: bool,
                  checkpoint_every: int) -> dict[str, Any]:
    """The GPT recipe on this process's rank of ``ctx`` (see :func:`finetune`)."""
    from muonft.adapters import apply_lora, merged_state_dict
    from muonft.data import LMBatcher, load_lm_splits
    from muonft.diagnostics import weight_diagnostics
    from muonft.train import distributed as dd

    res_path = out / "result.json"
    init_dir = resolve_init(spec["init"])
    model, tok, cfg = load_pretrained(init_dir)
    model = model.to(ctx.device)
    if spec["method"] == "lora":  # bad targets or rank fail before any data or evaluation
        from muonft.adapters import resolve_targets

        resolve_targets(model, _lora_spec(spec))
    target = load_lm_splits(spec["task"][3:], tok)
    pre = load_lm_splits(cfg.get("pretrain_corpus", "kjv"), tok)
    # what only the record needs is computed by rank 0 alone (on the plain model)
    init_state = {n: p.detach().clone() for n, p in model.named_parameters()} if ctx.main \
        else {}
    if ctx.main:  # the same for every run from these weights: cached across runs
        from muonft.atomic import sha256_file
        from muonft.train.baselines import array_digest, cached_measurements

        key = {"recipe": "gpt", "weights": sha256_file(init_dir / "model.safetensors"),
               "data": array_digest(target.val, pre.heldout),
               "device": next(model.parameters()).device.type,
               "block_size": spec["block_size"], "eval_batches": spec["eval_batches"]}
        before = cached_measurements(key, lambda: {
            "zero_shot": _eval_loss(model, target.val, spec),
            "pre_before": _eval_loss(model, pre.heldout, spec)})
        zero_shot, pre_before = before["zero_shot"], before["pre_before"]
    else:
        zero_shot = pre_before = math.nan

    batcher = LMBatcher(target.train, spec["block_size"], spec["batch_size"], seed=spec["seed"])
    torch.manual_seed(spec["seed"])
    if spec["method"] == "lora":
        grad_fn = lora_one_grad_fn(batcher.get) if spec["lora_variant"] == "lora_one" else None
        model = apply_lora(model, _lora_spec(spec), grad_fn=grad_fn)
    # FSDP2: rank 0 keeps a plain copy, refreshed from the shards when diagnostics need it
    view = copy.deepcopy(model) if ctx.sharded and ctx.main else None
    loss_fn = dd.parallelize(model, ctx)
    opt_options = muon_options(spec)
    if spec["lora_muon"] == "joint":
        from muonft.adapters import lora_pairs

        opt_options["lora_pairs"] = lora_pairs(model)
    opt = build_optimizer(model, spec["optimizer"], spec["lr"], spec["weight_decay"],
                          **opt_options)
    tracker = _matrix_rms_tracker(opt, ctx)
    hooks = [opt.register_step_pre_hook(lambda *_: tracker.snapshot()),
             opt.register_step_post_hook(lambda *_: tracker.measure())]

    def plain() -> torch.nn.Module | None:
        """The model as one plain module on rank 0 (a collective under FSDP2)."""
        if not ctx.sharded:
            return model if ctx.main else None
        full = dd.full_state_dict(model)
        if view is not None:
            view.load_state_dict(full, strict=True)
        return view

    def weights_of(m: torch.nn.Module) -> dict[str, torch.Tensor]:
        if spec["method"] == "lora":
            return merged_state_dict(m)
        return {n: p.detach() for n, p in m.named_parameters()}

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
            m = plain()
            if m is not None:
                diag_rows[str(step)] = diag_row(weights_of(m), init_state)
                atomic_write_json(diag_path, diag_rows)

    tcfg = TrainConfig(steps=spec["steps"], schedule=spec["schedule"], warmup=spec["warmup"],
                       grad_clip=spec["grad_clip"], eval_every=spec["eval_every"],
                       checkpoint_every=checkpoint_every, progress=progress and ctx.main,
                       description=f"finetune {spec['method']} {spec['optimizer']}")
    if ctx.main:
        atomic_write_json(res_path, {"spec": spec, "status": "running"})
    try:
        result = train(model, opt, dd.shard(batcher.get, ctx), tcfg, ckpt_dir=out / "ckpt",
                       on_step=on_step, loss_fn=loss_fn,
                       eval_fn=lm_eval_fn(target.val, spec["block_size"], 32,
                                          spec["eval_batches"]))
    finally:
        for h in hooks:
            h.remove()
    model = plain()
    if model is None:  # not rank 0: rank 0 evaluates and writes
        return {"spec": spec, "status": result["status"], "metrics": {}, "rank": ctx.rank}
    final = weights_of(model)
    if spec["method"] == "lora":
        from muonft.adapters import merge_lora, unmerge_lora

        merge_lora(model)
    # the loop's final evaluation (same windows of the val split) is the target: not run twice
    final_v = result["final"].get("val_loss") if result["status"] == "done" else None
    try:
        target_loss = final_v if final_v is not None else _eval_loss(model, target.val, spec)
        test_loss = _eval_loss(model, target.heldout, spec)
        pre_after = _eval_loss(model, pre.heldout, spec)
    finally:
        if spec["method"] == "lora":
            unmerge_lora(model)
    now = {n: final[n] for n in init_state}
    metrics = {
        "target": target_loss, "target_name": "val_loss", "higher_is_better": False,
        "zero_shot": zero_shot, "relative_ppl": math.exp(target_loss - zero_shot),
        "test": test_loss, "forgetting": pre_after - pre_before,
        "pretrain_loss_before": pre_before, "pretrain_loss_after": pre_after,
        **update_rms_metrics(tracker), **constraint_metrics(opt, spec),
        **best_metrics(result, "val_loss"),
    }
    diagnostics = weight_diagnostics(now, init_state)
    diagnostics_update = weight_diagnostics(now, init_state, update=True)
    if spec["diag_every"]:  # the end point closes every diagnostics curve
        diag_rows[str(result["steps"])] = diag_row(now, init_state, diagnostics,
                                                   diagnostics_update)
    record = {
        "status": result["status"], "spec": spec, "metrics": metrics,
        "diagnostics": diagnostics, "diagnostics_update": diagnostics_update,
        "curves": {**result["curves"], **rms_curves, **diag_curves(diag_rows)},
        "best": result["best"], "timings": result["timings"],
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "error": None,
    }
    if spec["method"] == "lora":
        from muonft.diagnostics import lora_diagnostics

        record["diagnostics_lora"] = lora_diagnostics(model)
    atomic_write_json(res_path, record)
    return record


def _filled(prev_spec: dict[str, Any]) -> dict[str, Any]:
    """A stored spec with options added since it was written set to their defaults, so runs
    recorded by an older version still resume (or return) instead of being refused."""
    try:
        return default_spec(**prev_spec)
    except (ConfigError, TypeError, ValueError):
        return prev_spec


def muon_options(spec: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of :class:`muonft.optim.Muon` from a spec (empty under AdamW); the
    AdamW groups of a Muon run get lr · ``adamw_lr_ratio``."""
    if spec["optimizer"] != "muon":
        return {}
    opts = {"scale": spec["scale"], "orthogonalizer": spec["orthogonalizer"],
            "ns_steps": spec["ns_steps"], "momentum": spec["momentum"],
            "nesterov": spec["nesterov"], "adamw_lr": spec["lr"] * spec["adamw_lr_ratio"]}
    # constrained updates (lora_muon="joint" also needs lora_pairs, added where the model is)
    opts.update({k: spec[k] for k in CONSTRAINT_KEYS if spec.get(k) is not None})
    return opts


LORA_ONE_BATCHES = 4
LORA_ONE_FIRST_STEP = 2**32  # batcher steps of the LoRA-One gradient: never training steps


def lora_one_grad_fn(get_batch, n_batches: int = LORA_ONE_BATCHES):
    """The ``grad_fn`` of LoRA-One: backward of the mean loss over ``n_batches`` training-split
    batches ``get_batch(2³² + i)`` — a stream of the same seeded batcher that training (steps
    0 … steps−1) never reaches, so the training batches are the same as without LoRA-One."""
    from muonft.train.loop import default_loss, to_device

    def grad_fn(model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        for i in range(n_batches):
            batch = to_device(get_batch(LORA_ONE_FIRST_STEP + i), device)
            (default_loss(model, batch) / n_batches).backward()

    return grad_fn


def _matrix_rms_tracker(opt: torch.optim.Optimizer, ctx=None):
    """Update RMS of the trainable matrices, labelled by optimizer group (muon / adamw); of
    the full matrices when they are FSDP2 shards (``ctx.sharded``)."""
    from muonft.train.distributed import DistContext, update_rms_tracker

    groups: dict[str, list[torch.Tensor]] = {"muon": [], "adamw": []}
    for g in opt.param_groups:
        groups["muon" if g.get("use_muon") else "adamw"] += [p for p in g["params"]
                                                             if p.ndim >= 2]
    return update_rms_tracker(groups, ctx or DistContext())


def step_update_rms(tracker, measured: dict[str, float]) -> dict[str, float]:
    """One step's ``update_rms`` (pooled over every tracked matrix:
    √(Σ_label n_label·rms_label² / Σ n_label), n = number of entries) and ``update_rms_<label>``
    per optimizer group, from one :meth:`UpdateRMSTracker.measure` result."""
    numel = {k: sum(p.numel() for p in v) for k, v in tracker.params.items()}
    pooled = math.sqrt(sum(numel[k] * r * r for k, r in measured.items()) / sum(numel.values()))
    return {"update_rms": pooled, **{f"update_rms_{k}": r for k, r in measured.items()}}


def update_rms_metrics(tracker) -> dict[str, float]:
    """The mean over the measured steps of each :func:`step_update_rms` value (0 without any).

    Only the steps of this session are measured: a resumed run averages the steps after its
    checkpoint (earlier steps' values are not stored in checkpoints), and so do its per-step
    ``update_rms*`` curves.
    """
    rows = [step_update_rms(tracker, h) for _, h in tracker.history]
    keys = ["update_rms", *(f"update_rms_{k}" for k in tracker.params)]
    return {k: sum(r[k] for r in rows) / len(rows) if rows else 0.0 for k in keys}


DIAG_CURVE_KEYS = ("stable_rank", "spectral_entropy", "l2_drift", "cosine_to_init")


def diag_row(now: dict[str, torch.Tensor], init: dict[str, torch.Tensor],
             weight: dict | None = None, update: dict | None = None) -> dict[str, float]:
    """Overall diagnostics at one step: ``DIAG_CURVE_KEYS`` of the weights, and stable rank and
    spectral entropy of ΔW = W − W₀ (as ``update_stable_rank`` …)."""
    from muonft.diagnostics import weight_diagnostics

    w = (weight or weight_diagnostics(now, init))["overall"]
    u = (update or weight_diagnostics(now, init, update=True))["overall"]
    row = {k: float(w[k]) for k in DIAG_CURVE_KEYS}
    row.update({f"update_{k}": float(u[k]) for k in ("stable_rank", "spectral_entropy")})
    return row


def diag_curves(rows: dict[str, dict[str, float]]) -> dict[str, list[list[float]]]:
    """``{"diag_<metric>": [[step, value], …]}`` from rows keyed by step."""
    curves: dict[str, list[list[float]]] = {}
    for step in sorted(rows, key=int):
        for k, v in rows[step].items():
            curves.setdefault(f"diag_{k}", []).append([int(step), v])
    return curves
