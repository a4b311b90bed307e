"""One training run, used by pretraining and fine-tuning alike.

The loop owns: the LR schedule (a multiplier on each group's ``initial_lr``), gradient clipping,
periodic evaluation, the divergence guard, the progress bar, checkpoints and exact resume. The
caller owns the model, the optimizer, the batches (``get_batch(step)`` must be a pure function
of the step, e.g. :class:`muonft.data.LMBatcher`), the loss and what evaluation means; hooks
(``on_step``, ``on_eval``) let diagnostics watch the run without touching it. Nothing here knows
what kind of model it trains.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from muonft.errors import CheckpointError
from muonft.train.checkpoint import open_checkpoint, save_checkpoint, save_sharded_checkpoint
from muonft.train.ranks import is_main, is_sharded_model, mean_across_ranks

SCHEDULES = ("constant", "cosine", "linear", "warmdown")
# The TrainConfig fields that decide the LR at every step: a resumed run must agree on them.
SCHEDULE_FIELDS = ("steps", "schedule", "warmup", "warmdown_frac", "final_lr_frac")

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
EvalFn = Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class TrainConfig:
    """How to run: steps, schedule, clipping, evaluation, checkpoints, divergence guard.

    ``schedule``: ``constant``; ``cosine`` (to ``final_lr_frac`` at ``steps``); ``linear``
    (linear decay after warm-up); ``warmdown`` (constant, then linear decay over the last
    ``warmdown_frac`` of the steps, nanochat style). ``warmup`` steps of linear warm-up come
    first in every schedule. ``best_metric`` / ``higher_is_better`` pick the best evaluation.
    """

    steps: int
    schedule: str = "cosine"
    warmup: int = 0
    warmdown_frac: float = 0.2
    final_lr_frac: float = 0.0
    grad_clip: float | None = 1.0
    eval_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    diverge_factor: float = 3.0
    best_metric: str = "val_loss"
    higher_is_better: bool = False
    threads: int | None = None
    progress: bool = True
    description: str = "train"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        for k in ("warmup", "eval_every", "checkpoint_every"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.log_every < 1 or self.keep_checkpoints < 1:
            raise ValueError(f"log_every and keep_checkpoints must be >= 1, got "
                             f"{self.log_every} and {self.keep_checkpoints}")
        if not 0.0 <= self.warmdown_frac <= 1.0:
            raise ValueError(f"warmdown_frac must be in [0, 1], got {self.warmdown_frac}")
        if not 0.0 <= self.final_lr_frac <= 1.0:
            raise ValueError(f"final_lr_frac must be in [0, 1], got {self.final_lr_frac}")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        if not self.diverge_factor > 1:
            raise ValueError(f"diverge_factor must be > 1, got {self.diverge_factor}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")

    def schedule_state(self) -> dict[str, Any]:
        """The fields that determine every LR multiplier (stored in checkpoints)."""
        return {k: getattr(self, k) for k in SCHEDULE_FIELDS}


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at ``step`` (0-based), a pure function of the step.

    Warm-up: (step+1)/warmup for step < warmup. Then with t = (step − warmup)/(steps − warmup)
    and floor f = ``final_lr_frac``: constant 1; cosine f + (1−f)·½(1 + cos πt); linear
    f + (1−f)(1−t); warmdown 1 until the last ⌈warmdown_frac·steps⌉ steps, then linear to f.
    """
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    lo = cfg.final_lr_frac
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "warmdown":
        n_down = math.ceil(cfg.warmdown_frac * cfg.steps)
        start = max(cfg.warmup, cfg.steps - n_down)
        if step < start or cfg.steps <= start:
            return 1.0
        t = min(1.0, (step - start) / (cfg.steps - start))
        return lo + (1 - lo) * (1 - t)
    span = max(1, cfg.steps - cfg.warmup)
    t = min(1.0, (step - cfg.warmup) / span)
    if cfg.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    return lo + (1 - lo) * (1 - t)


@dataclass
class RunState:
    """What survives a checkpoint besides weights, optimizer state and RNG."""

    step: int = 0
    first_loss: float | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    best: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    tokens: int = 0


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` / ``"auto"`` → CUDA when available, else CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None


def to_device(batch: Any, device: torch.device) -> Any:
    """Move a batch (tensor, or a tuple/list/dict of them) to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True) if batch.device != device else batch
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """``model(x, y)`` returning ``(logits, loss)`` (our GPT) or an object with ``.loss`` (HF)."""
    x, y = batch
    out = model(x, y)
    return out[1] if isinstance(out, tuple) else out.loss


def _progress(enabled: bool) -> Progress:
    # stderr, so that a command's stdout holds only its result lines.
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        console=Console(stderr=True), disable=not enabled, transient=False,
    )


def _normalized(spec: dict[str, Any] | None) -> dict[str, Any] | None:
    # JSON round trip: what is stored and compared is plain data, whatever the caller passed.
    return None if spec is None else json.loads(json.dumps(spec, sort_keys=True))


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Any) -> None:
    if isinstance(state, torch.Tensor):  # checkpoints written before CUDA states were kept
        state = {"cpu": state}
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _base_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(g["initial_lr"]) for g in optimizer.param_groups]


def _resume(ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
            cfg: TrainConfig, spec: dict[str, Any] | None) -> RunState | None:
    """Load the latest checkpoint into model/optimizer/RNG after checking it belongs here."""
    found = open_checkpoint(ckpt_dir)
    if found is None:
        return None
    step, state = found.step, found.state
    saved = state.get("step", _dir_step(found.dir))  # the sidecar's own count (or the dir's)
    if saved is not None and saved != step:
        raise CheckpointError(f"checkpoint in {ckpt_dir}: latest.json says step {step} but the "
                              f"checkpoint holds step {saved}; delete {ckpt_dir} to start over")
    saved_spec = state.get("spec")
    if spec is not None and saved_spec is not None and saved_spec != spec:
        diff = sorted(k for k in set(spec) | set(saved_spec) if spec.get(k) != saved_spec.get(k))
        raise CheckpointError(f"checkpoint in {ckpt_dir} belongs to a run with a different spec "
                              f"(differs in {diff}); use another directory or delete it")
    sched = state.get("schedule")
    if sched is not None:
        want = {**cfg.schedule_state(), "base_lrs": _base_lrs(optimizer)}
        got = {k: sched.get(k) for k in want}
        if got != want:
            diff = sorted(k for k in want if got[k] != want[k])
            raise CheckpointError(f"checkpoint in {ckpt_dir} was trained with a different LR "
                                  f"schedule (differs in {diff}), so resuming would not be "
                                  f"exact; use another directory or delete it")
    if step > cfg.steps:
        raise CheckpointError(f"checkpoint in {ckpt_dir} is at step {step}, past the "
                              f"{cfg.steps} steps asked for; use another directory")
    try:  # either layout, into a plain or a sharded (FSDP2) model
        found.restore(model, optimizer)
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint in {ckpt_dir} does not fit this model/optimizer "
                              f"({str(e).splitlines()[0]}); use another directory") from None
    _set_rng_state(state["rng"])
    run = state["run"]
    return RunState(step=step, **{k: run[k] for k in run if k in RunState.__dataclass_fields__})


def _dir_step(d: Path) -> int | None:
    """The step in a checkpoint directory's name (``step-0000010`` → 10), if it has one."""
    head, _, num = d.name.partition("-")
    num = num.split(".")[0]  # step-0000010.1: a second save at the same step
    return int(num) if head == "step" and num.isdigit() else None


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    get_batch: Callable[[int], Batch],
    cfg: TrainConfig,
    *,
    loss_fn: LossFn = default_loss,
    eval_fn: EvalFn | None = None,
    ckpt_dir: Path | None = None,
    spec: dict[str, Any] | None = None,
    on_step: Callable[[int, float], dict[str, float] | None] | None = None,
    on_eval: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` optimizer steps, resuming from ``ckpt_dir`` if it holds
    a checkpoint of the same run.

    Each step: lr = initial_lr × :func:`lr_multiplier`; loss = ``loss_fn(model,
    get_batch(step))``; divergence check; backward; clip the global grad norm to
    ``grad_clip``; ``optimizer.step()``; ``on_step(step_done, loss)`` (a mapping it returns is
    recorded as curves at that step); every ``eval_every``
    steps ``eval_fn(model)`` (under ``no_grad`` and ``eval()``) then ``on_eval(step, metrics)``;
    every ``checkpoint_every`` steps an atomic checkpoint (weights, optimizer, RNG, schedule,
    ``spec``, curves). A non-finite loss or grad norm, or a loss above ``diverge_factor`` × the
    first loss, ends the run with status ``diverged`` without stepping on the bad batch. A hook
    may raise to stop the run (that is how the tests simulate a kill).

    Returns ``{"status": "done"|"diverged", "steps", "train_loss", "initial_loss", "final"
    (last eval metrics), "best" ({"step", metrics…} of the best
    ``best_metric``), "curves" ({name: [[step, value], …]}), "timings"}``.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    spec = _normalized(spec)
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    rs = None if ckpt_dir is None else _resume(Path(ckpt_dir), model, optimizer, cfg, spec)
    rs = rs or RunState()
    loaded_step = rs.step if ckpt_dir is not None and rs.step else None
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device if params else torch.device("cpu")
    status, steps_run = "done", 0
    t_start = time.perf_counter()
    model.train()
    with _progress(cfg.progress) as bar:
        task = bar.add_task(cfg.description, total=cfg.steps, completed=rs.step, loss="-",
                            tps="-")
        while rs.step < cfg.steps:
            step = rs.step
            mult = lr_multiplier(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * mult
            batch = to_device(get_batch(step), device)  # batches are made on the CPU
            t0 = time.perf_counter()
            loss = loss_fn(model, batch)
            lv = mean_across_ranks(float(loss.detach()))  # all ranks take the same decisions
            if rs.first_loss is None:
                rs.first_loss = lv
            if not math.isfinite(lv) or lv > cfg.diverge_factor * max(rs.first_loss, 1e-8):
                status = "diverged"
                rs.curves.setdefault("train_loss", []).append([step, lv])
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if not torch.isfinite(norm):
                    status = "diverged"
                    rs.curves.setdefault("train_loss", []).append([step, lv])
                    optimizer.zero_grad(set_to_none=True)
                    break
            optimizer.step()
            rs.train_seconds += time.perf_counter() - t0
            rs.tokens += int(batch[0].numel())
            rs.step = step + 1
            steps_run += 1
            if on_step is not None:  # values it returns are curves, checkpointed with the run
                for k, v in (on_step(rs.step, lv) or {}).items():
                    rs.curves.setdefault(k, []).append([rs.step, v])
            if rs.step % cfg.log_every == 0 or rs.step == cfg.steps:
                rs.curves.setdefault("train_loss", []).append([rs.step, lv])
            if eval_fn is not None and cfg.eval_every and rs.step % cfg.eval_every == 0:
                _evaluate(model, eval_fn, rs, cfg, on_eval)
            tps = rs.tokens / rs.train_seconds if rs.train_seconds else 0.0
            bar.update(task, completed=rs.step, loss=f"{lv:.4f}", tps=f"{tps:,.0f}")
            if ckpt_dir is not None and cfg.checkpoint_every and \
                    rs.step % cfg.checkpoint_every == 0 and rs.step < cfg.steps:
                _save(Path(ckpt_dir), model, optimizer, rs, cfg, spec)
    # a run resumed from its final checkpoint (killed before its caller finished) was
    # evaluated at this step already: evaluating again would add a second point to the curves
    evaluated = bool(rs.last_eval) and all(
        (rs.curves.get(k) or [[None]])[-1][0] == rs.step for k in rs.last_eval)
    if status == "done" and eval_fn is not None and not evaluated and \
            (not cfg.eval_every or cfg.steps % cfg.eval_every or not rs.last_eval):
        _evaluate(model, eval_fn, rs, cfg, on_eval)
    if ckpt_dir is not None and status == "done" and rs.step != loaded_step:
        _save(Path(ckpt_dir), model, optimizer, rs, cfg, spec)
    return _result(status, rs, steps_run, time.perf_counter() - t_start)


def best_metrics(result: dict[str, Any], metric: str) -> dict[str, float]:
    """``{"best_target", "best_step"}`` of a :func:`train` result: the best evaluation of
    ``metric`` during the run (empty when it was never evaluated)."""
    best = result.get("best") or {}
    if metric not in best:
        return {}
    return {"best_target": float(best[metric]), "best_step": int(best["step"])}


def _result(status: str, rs: RunState, steps_run: int, wall: float) -> dict[str, Any]:
    train_curve = rs.curves.get("train_loss", [])
    return {
        "status": status,
        "steps": rs.step,
        "train_loss": train_curve[-1][1] if train_curve else None,
        "initial_loss": rs.first_loss,
        "final": dict(rs.last_eval),
        "best": dict(rs.best),
        "curves": rs.curves,
        "timings": {"wall_s": wall, "train_s": rs.train_seconds, "eval_s": rs.eval_seconds,
                    "step_s": rs.train_seconds / rs.step if rs.step else 0.0,
                    "steps_this_session": steps_run, "tokens": rs.tokens,
                    "tokens_per_s": rs.tokens / rs.train_seconds if rs.train_seconds else 0.0},
    }


def _evaluate(model: nn.Module, eval_fn: EvalFn, rs: RunState, cfg: TrainConfig,
              on_eval: Callable[[int, dict[str, float]], None] | None) -> None:
    t0 = time.perf_counter()
    model.eval()
    try:
        with torch.no_grad():
            metrics = eval_fn(model)
    finally:
        model.train()
    rs.eval_seconds += time.perf_counter() - t0
    rs.last_eval = {k: float(v) for k, v in metrics.items()}
    for k, v in rs.last_eval.items():
        rs.curves.setdefault(k, []).append([rs.step, v])
    value = rs.last_eval.get(cfg.best_metric)
    if value is not None and math.isfinite(value):
        old = rs.best.get(cfg.best_metric)
        if old is None or (value > old if cfg.higher_is_better else value < old):
            rs.best = {"step": rs.step, **rs.last_eval}
    if on_eval is not None:
        on_eval(rs.step, dict(rs.last_eval))


def _save(ckpt_dir: Path, model: nn.Module, optimizer: torch.optim.Optimizer, rs: RunState,
          cfg: TrainConfig, spec: dict[str, Any] | None) -> None:
    sharded = is_sharded_model(model)  # FSDP2: every rank writes its shards (DCP)
    if not sharded and not is_main():  # under DDP every rank holds the same state
        return
    run = asdict(rs)
    run.pop("step")
    state = {"format": 2, "step": rs.step, "rng": _rng_state(),
             "schedule": {**cfg.schedule_state(), "base_lrs": _base_lrs(optimizer),
                          "lr_multiplier": lr_multiplier(rs.step, cfg)},
             "spec": spec, "run": run}
    if sharded:
        save_sharded_checkpoint(ckpt_dir, rs.step, model, optimizer, state,
                                keep=cfg.keep_checkpoints)
        return
    state["optimizer"] = optimizer.state_dict()
    save_checkpoint(ckpt_dir, rs.step, model.state_dict(), state, keep=cfg.keep_checkpoints)
