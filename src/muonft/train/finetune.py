"""The fine-tuning skeleton: one recipe for every model family and task.

``finetune(spec, out)`` runs (or resumes, or returns the finished) run described by a
:class:`muonft.spec.RunSpec`. The model family (:class:`~muonft.train.plugins.ModelSource`) and
the task (:class:`~muonft.train.plugins.TaskPlugin`) are plugins; everything else happens here,
once: output dir, resume and spec check, LoRA (and its variants, LoRA-One's gradient), the
trainable head, the optimizer, the loop (checkpoints in ``out/ckpt``), update RMS per optimizer
group, ``diag_every`` curves, evaluation (final and best), the forgetting probe, diagnostics of
W, ΔW and the LoRA factors, and ``out/result.json`` (the record of ``docs/CONTRACTS.md``):

- ``metrics``: the task's (``target``, ``test``, ``zero_shot``, …), the probe's
  (``forgetting`` …), ``update_rms`` / ``update_rms_<group>`` (means over the steps),
  ``best_target`` / ``best_step``, and the constrained-update statistics when those are on;
- ``diagnostics`` / ``diagnostics_update`` per layer group of the (merged) weights and of
  ΔW = W − W₀; ``diagnostics_lora`` for LoRA runs; ``curves``: the loop's (``train_loss``,
  ``val_*``), per-step ``update_rms*`` and ``diag_*`` every ``diag_every`` steps.

Nothing is written before the spec, the model and the data have been checked. Under
``torchrun --nproc-per-node N`` (families that support it) every rank takes rows ``rank::N``
of each global batch; ``parallel`` (default ``$MUONFT_PARALLEL``, else ``ddp``) picks DDP or
FSDP2; rank 0 writes, other ranks return ``{"spec", "status", "metrics": {}, "rank"}``.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.metadata
import json
import math
import platform
import shutil
from pathlib import Path
from typing import Any

import torch

from muonft import __version__
from muonft.adapters import (
    LoRASpec,
    apply_lora,
    lora_pairs,
    merge_and_unload,
    merge_lora,
    merged_state_dict,
    resolve_targets,
    unmerge_lora,
)
from muonft.atomic import atomic_write_json
from muonft.diagnostics import layer_group, lora_diagnostics, weight_diagnostics
from muonft.errors import CheckpointError, ConfigError
from muonft.spec import RunSpec, normalise, same_run, stored_spec
from muonft.train import distributed as dd
from muonft.train.baselines import cached_measurements
from muonft.train.loop import TrainConfig, best_metrics, to_device, train
from muonft.train.measure import GroupRMS, diag_row
from muonft.train.memory import check_fits, step_bytes
from muonft.train.plugins import (
    Loaded,
    ModelSource,
    TaskData,
    TaskPlugin,
    block_size_of,
    resolve,
    spec_from_options,
)
from muonft.train.pretrain import build_optimizer

LORA_ONE_BATCHES = 4
LORA_ONE_FIRST_STEP = 2**32  # batcher steps of the LoRA-One gradient: never training steps


def as_spec(spec: RunSpec | dict[str, Any]) -> RunSpec:
    """A RunSpec as given, or one built from ``muonft finetune``'s flat options (the model
    family's defaults filling the rest)."""
    return spec if isinstance(spec, RunSpec) else spec_from_options(**spec)


def finetune(spec: RunSpec | dict[str, Any], out: Path, *, threads: int | None = None,
             progress: bool = True, checkpoint_every: int = 50, device: str | None = None,
             parallel: str | None = None, keep_checkpoints: int | None = None,
             save_model: bool | None = False) -> dict[str, Any]:
    """Run (or resume, or return the finished) fine-tuning of ``spec`` in ``out``; returns
    the ``result.json`` record (module docstring). ``device``: ``auto`` (CUDA when
    available) or a torch device; not part of the spec, so a run may resume elsewhere.
    ``keep_checkpoints``: once ``result.json`` holds the finished record, keep the newest N
    checkpoints of ``out/ckpt`` (0 deletes the directory; ``None`` keeps what the loop keeps,
    the last two). A finished run never reads them again, so a kill while they are deleted
    leaves a correct run. ``save_model``: also write the fine-tuned model (LoRA merged) to
    ``out/model`` in its family's loadable form (an HF ``save_pretrained`` directory with the
    tokenizer; a checkpoint ``--init`` takes for our GPT and ViT); ``None``: when the model
    family can export."""
    spec = as_spec(spec)
    source, task = resolve(spec)
    block = block_size_of(spec, source, task)
    if checkpoint_every < 0:
        raise ConfigError(f"checkpoint_every must be >= 0, got {checkpoint_every}")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads must be >= 1, got {threads}")
    can_export = hasattr(source, "export")
    if save_model and not can_export:
        raise ConfigError(f"the {source.name} family cannot export a model; run without "
                          f"--save-model")
    save_model = can_export if save_model is None else save_model
    if keep_checkpoints is not None and keep_checkpoints < 0:
        raise ConfigError(f"keep_checkpoints must be >= 0, got {keep_checkpoints}")
    out = Path(out)
    for d in (out, out / "ckpt"):
        if d.exists() and not d.is_dir():
            raise ConfigError(f"{d} is a file, not a directory; use another --out")
    prev = previous_result(out, spec)
    if prev is not None:
        prune_checkpoints(out / "ckpt", keep_checkpoints)  # a kill may have stopped it
        return prev
    if dd.world_size_from_env() > 1:
        if not getattr(source, "distributed", False):
            dd.require_single_process(f"{source.name} fine-tuning")
        given = [k for k in ("update_rank", "max_drift") if getattr(spec, k) is not None]
        if dd.parallel_mode(parallel) == "fsdp" and (given or spec.lora_muon == "joint"):
            given += ["lora_muon"] if spec.lora_muon == "joint" else []
            raise ConfigError(f"{', '.join(given)}: constrained Muon updates need whole "
                              f"matrices on every rank; use MUONFT_PARALLEL=ddp")
    if threads:
        torch.set_num_threads(threads)
    ctx = dd.setup(device, parallel)
    try:
        dd.check_batch(spec.batch_size, ctx)
        record = _run(spec, out, source, task, block, ctx, progress, checkpoint_every,
                      save_model)
        if ctx.main and record["status"] in ("done", "diverged"):
            prune_checkpoints(out / "ckpt", keep_checkpoints)
    except BaseException:
        dd.teardown(ctx, wait=False)
        raise
    dd.teardown(ctx)
    return record


def prune_checkpoints(ckpt: Path, keep: int | None) -> None:
    """Keep the newest ``keep`` checkpoints of a finished run (all when ``None``, the
    directory removed when 0)."""
    if keep is None or not ckpt.is_dir():
        return
    if keep == 0:
        shutil.rmtree(ckpt, ignore_errors=True)
        return
    for old in sorted(ckpt.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def previous_result(out: Path, spec: RunSpec) -> dict[str, Any] | None:
    """The finished record in ``out`` (marked ``resumed``), ``None`` when there is none or it
    is unfinished; ConfigError when ``out`` holds another run."""
    path = out / "result.json"
    if not path.exists():
        return None
    try:
        prev = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is corrupt; delete {out} to start over") from None
    prev_spec = stored_spec(prev.get("spec") if isinstance(prev, dict) else None)
    diff = ["spec"] if prev_spec is None else same_run(prev_spec, spec)
    if diff:
        raise ConfigError(f"{out} holds a run with a different spec (differs in {diff}); "
                          f"use another --out or delete it")
    if prev.get("status") in ("done", "diverged"):
        shape = {"metrics": dict, "diagnostics": dict, "curves": dict}
        bad = [k for k, t in shape.items() if not isinstance(prev.get(k), t)]
        if bad or "target" not in prev["metrics"]:
            raise CheckpointError(f"{path} says {prev['status']!r} but is not a finished record "
                                  f"(no {', '.join(bad) or 'metrics.target'}); delete {out} to "
                                  f"run it again")
        return {**prev, "resumed": "already finished"}
    return None


def lora_spec(spec: RunSpec) -> LoRASpec:
    """The adapters' config of a LoRA run."""
    c = spec.lora
    return LoRASpec(rank=c.rank, alpha=c.alpha_value, dropout=c.dropout, variant=c.variant,
                    targets=c.targets)


def lora_one_grad_fn(data: TaskData, n_batches: int = LORA_ONE_BATCHES):
    """LoRA-One's ``grad_fn``: backward of the mean loss over ``n_batches`` training batches
    ``data.batches(2³² + i)`` — a stream of the same seeded batcher that training (steps
    0 … steps−1) never reaches, so the training batches are those of plain LoRA."""

    def grad_fn(model: torch.nn.Module) -> None:
        device = next(model.parameters()).device
        for i in range(n_batches):
            batch = to_device(data.batches(LORA_ONE_FIRST_STEP + i), device)
            (data.loss(model, batch) / n_batches).backward()

    return grad_fn


def _baselines(spec: RunSpec, loaded: Loaded, task: TaskPlugin, data: TaskData,
               block: int | None, device: torch.device) -> dict[str, Any]:
    """Zero-shot metric and the probe's "before" side, cached across the runs that share
    weights, data and sizes (:func:`muonft.train.baselines.cached_measurements`)."""

    def measure() -> dict[str, Any]:
        return {"zero_shot": data.evaluate(loaded.model, "val")[task.metric],
                **loaded.probe.before(loaded.model)}

    if loaded.identity is None:
        return measure()
    key = {"weights": loaded.identity, "task": spec.task, "data": data.digest,
           "probe": loaded.probe.key, "metric": task.metric, "block_size": block,
           "eval_batches": spec.eval_batches, "device": device.type,
           "seed": spec.seed if loaded.new_head else None}
    return cached_measurements(key, measure)


def _prepare(spec: RunSpec, out: Path, source: ModelSource, task: TaskPlugin,
             block: int | None, ctx: dd.DistContext) -> tuple[Loaded, TaskData]:
    """Model and data of a run, checked before ``out`` is created (bad LoRA targets, a broken
    data file: nothing is written)."""
    torch.manual_seed(spec.seed)  # a new head is drawn from the run's seed
    loaded = source.load(spec, task.kind, block, ctx.device)
    if spec.method == "lora":
        resolve_targets(loaded.model, lora_spec(spec))
    data = task.prepare(spec, loaded, block)
    check_fits(step_bytes(loaded.model, task.units_per_step(spec, block)),
               f"a step of {spec.batch_size} × {block or 1} on {spec.init}",
               "Lower batch_size or block_size")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    return loaded, data


def _adapted(spec: RunSpec, loaded: Loaded, data: TaskData) -> torch.nn.Module:
    """The model to train: with LoRA adapters (LoRA-One's from its gradient) and a trainable
    new head under ``method: lora``, the model itself otherwise."""
    torch.manual_seed(spec.seed)
    if spec.method != "lora":
        return loaded.model
    grad_fn = lora_one_grad_fn(data) if spec.lora.variant == "lora_one" else None
    model = apply_lora(loaded.model, lora_spec(spec), grad_fn=grad_fn)
    if loaded.train_head:  # a new classifier must learn the task
        for n, p in model.named_parameters():
            if layer_group(n) == "head":
                p.requires_grad_(True)
    return model


def _run(spec: RunSpec, out: Path, source: ModelSource, task: TaskPlugin, block: int | None,
         ctx: dd.DistContext, progress: bool, checkpoint_every: int, save_model: bool
         ) -> dict[str, Any]:
    """One run on this process's rank of ``ctx`` (see :func:`finetune`)."""
    loaded, data = _prepare(spec, out, source, task, block, ctx)
    # what only the record needs is computed by rank 0 alone (on the plain model)
    init = {n: p.detach().clone() for n, p in loaded.model.named_parameters()} \
        if ctx.main else {}
    before = _baselines(spec, loaded, task, data, block, ctx.device) if ctx.main else {}
    model = _adapted(spec, loaded, data)
    view = copy.deepcopy(model) if ctx.sharded and ctx.main else None  # FSDP2: rank 0's copy
    loss_fn = dd.parallelize(model, ctx, data.loss)
    kwargs = spec.optimizer_kwargs()
    if spec.lora_muon == "joint":
        kwargs["lora_pairs"] = lora_pairs(model)
    opt = build_optimizer(model, spec.optimizer, spec.lr, spec.weight_decay, **kwargs)
    rms = GroupRMS(opt, ctx)

    def plain() -> torch.nn.Module | None:
        """The model as one plain module on rank 0 (a collective under FSDP2)."""
        if not ctx.sharded:
            return model if ctx.main else None
        full = dd.full_state_dict(model)
        if view is not None:
            view.load_state_dict(full, strict=True)
        return view

    def on_step(step: int, loss: float) -> dict[str, float]:
        values = rms.take()
        if spec.diag_every and step % spec.diag_every == 0 and step < spec.steps:
            m = plain()
            if m is not None:
                row = diag_row(weights(spec, m), init)
                values.update({f"diag_{k}": v for k, v in row.items()})
        return values

    tcfg = TrainConfig(steps=spec.steps, schedule=spec.schedule, warmup=spec.warmup,
                       grad_clip=spec.grad_clip, eval_every=spec.eval_every,
                       checkpoint_every=checkpoint_every, progress=progress and ctx.main,
                       best_metric=task.metric, higher_is_better=task.higher_is_better,
                       description=f"finetune {spec.method} {spec.optimizer}")
    if ctx.main:
        atomic_write_json(out / "result.json", {"spec": spec.model_dump(mode="json"),
                                                "status": "running"})
    check = {k: v for k, v in normalise(spec).items() if k != "kind"}
    try:
        result = train(model, opt, dd.shard(data.batches, ctx), tcfg, ckpt_dir=out / "ckpt",
                       spec=check, on_step=on_step, loss_fn=loss_fn,
                       eval_fn=lambda m: data.evaluate(m, "val"))
    finally:
        rms.close()
    final_model = plain()
    if final_model is None:  # not rank 0: rank 0 evaluates and writes
        return {"spec": spec.model_dump(mode="json"), "status": result["status"],
                "metrics": {}, "rank": ctx.rank}
    record = _record(spec, final_model, loaded, task, data, result, init, before, rms, opt)
    if save_model and record["status"] == "done":
        export_model(spec, source, loaded, final_model, out / "model")
    atomic_write_json(out / "result.json", record)
    return record


def export_model(spec: RunSpec, source: ModelSource, loaded: Loaded, model: torch.nn.Module,
                 directory: Path) -> None:
    """The family's export of ``model`` with LoRA merged in (a copy: the trained adapters stay
    as they are), written into a temp dir and renamed into place."""
    plain = merge_and_unload(model) if spec.method == "lora" else model
    tmp = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    source.export(spec, plain, loaded, tmp)
    shutil.rmtree(directory, ignore_errors=True)
    tmp.rename(directory)


def weights(spec: RunSpec, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights by name, LoRA merged in (W₀ + s·BA) for LoRA runs."""
    if spec.method == "lora":
        return merged_state_dict(model)
    return {n: p.detach() for n, p in model.named_parameters()}


def _record(spec: RunSpec, model: torch.nn.Module, loaded: Loaded, task: TaskPlugin,
            data: TaskData, result: dict[str, Any], init: dict[str, torch.Tensor],
            before: dict[str, Any], rms: GroupRMS, opt: torch.optim.Optimizer
            ) -> dict[str, Any]:
    """The result record after training: final evaluations, forgetting, diagnostics."""
    final = weights(spec, model)
    lora = spec.method == "lora"
    if lora:
        merge_lora(model)
    try:  # the loop's final evaluation (same data) is the target: not run twice
        done = result["status"] == "done" and task.metric in result["final"]
        val = result["final"] if done else data.evaluate(model, "val")
        test = data.evaluate(model, "test")
        forgetting = loaded.probe.after(model, before)
    finally:
        if lora:
            unmerge_lora(model)
    curves = dict(result["curves"])
    metrics = {**data.metrics(val, test, before["zero_shot"]), **forgetting,
               **rms.metrics(curves), **best_metrics(result, task.metric)}
    if spec.constrained:
        metrics.update(opt.constraint_stats())
    now = {n: final[n] for n in init}
    diagnostics = weight_diagnostics(now, init)
    diagnostics_update = weight_diagnostics(now, init, update=True)
    if spec.diag_every:  # the end point closes every diagnostics curve
        end = result["steps"]
        for k, v in diag_row(now, init, diagnostics, diagnostics_update).items():
            curves[f"diag_{k}"] = [*(p for p in curves.get(f"diag_{k}", []) if p[0] != end),
                                   [end, v]]
    record = {"status": result["status"], "spec": spec.model_dump(mode="json"),
              "metrics": metrics, "diagnostics": diagnostics,
              "diagnostics_update": diagnostics_update, "curves": curves,
              "best": result["best"], "timings": result["timings"], "versions": versions(),
              "error": None}
    if lora:
        record["diagnostics_lora"] = lora_diagnostics(model)
    return record


def versions() -> dict[str, str]:
    """The versions a record was made with (muonft, torch, transformers when installed)."""
    out = {"muonft": __version__, "torch": torch.__version__,
           "python": platform.python_version()}
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["transformers"] = importlib.metadata.version("transformers")
    return out


def steps_for_epochs(spec: RunSpec, epochs: float) -> int:
    """Optimizer steps that make ``epochs`` passes over the training split:
    ⌈epochs·N / batch_size⌉ for N training examples (classification, images),
    ⌈epochs·T / (batch_size·block_size)⌉ for T training tokens (token streams, tokenized with
    the model's own tokenizer)."""
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise ConfigError(f"epochs must be a number > 0, got {epochs!r}")
    source, task = resolve(spec)
    block = block_size_of(spec, source, task)
    units = task.train_units(spec, source.tokenizer(spec))
    return max(1, math.ceil(epochs * units / task.units_per_step(spec, block)))
