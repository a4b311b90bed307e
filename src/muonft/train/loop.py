"""One training run, used by pretraining and fine-tuning alike.

The loop owns: the LR schedule (a multiplier on each group's ``initial_lr``), gradient clipping,
periodic evaluation, the divergence guard, the progress bar, checkpoints and exact resume. The
caller owns the model, the optimizer, the batches (``get_batch(step)`` must be a pure function
of the step, e.g. :class:`muonft.data.LMBatcher`) and what evaluation means.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from muonft.train.checkpoint import load_checkpoint, save_checkpoint

SCHEDULES = ("constant", "cosine", "linear")

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """How to run: steps, schedule, clipping, evaluation, checkpoints, divergence guard."""

    steps: int
    schedule: str = "cosine"
    warmup: int = 0
    final_lr_frac: float = 0.0
    grad_clip: float | None = 1.0
    eval_every: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    diverge_factor: float = 3.0
    progress: bool = True
    description: str = "train"

    def __post_init__(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.warmup < 0 or self.eval_every < 0 or self.checkpoint_every < 0:
            raise ValueError("warmup, eval_every and checkpoint_every must be >= 0")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")


def lr_multiplier(step: int, cfg: TrainConfig) -> float:
    """LR multiplier at ``step`` (0-based): linear warmup, then constant / cosine / linear decay
    to ``final_lr_frac``."""
    if cfg.warmup and step < cfg.warmup:
        return (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, cfg.steps - cfg.warmup)
    t = min(1.0, (step - cfg.warmup) / span)
    lo = cfg.final_lr_frac
    if cfg.schedule == "cosine":
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    return lo + (1 - lo) * (1 - t)


@dataclass
class RunState:
    """What survives a checkpoint besides weights and optimizer state."""

    step: int = 0
    first_loss: float | None = None
    curves: dict[str, list[list[float]]] = field(default_factory=dict)
    last_eval: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    tokens: int = 0


def default_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    x, y = batch
    out = model(x, y)
    return out[1] if isinstance(out, tuple) else out.loss


def _progress(enabled: bool, description: str, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s"),
        TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        disable=not enabled, transient=False,
    )


def train(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    get_batch: Callable[[int], Batch],
    cfg: TrainConfig,
    *,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor] = default_loss,
    eval_fn: Callable[[nn.Module], dict[str, float]] | None = None,
    ckpt_dir: Path | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` for ``cfg.steps`` steps, resuming from ``ckpt_dir`` when it holds one.

    Returns ``{"status": "done"|"diverged", "steps", "train_loss", "eval", "curves",
    "timings"}``. Divergence (a non-finite loss, or one above ``diverge_factor`` × the first
    loss) ends the run with status ``diverged`` and no optimizer step on the bad batch.
    ``on_step(step, loss)`` runs after each optimizer step (diagnostics hooks; may raise to
    stop the run, which is how the tests simulate a kill).
    """
    for g in optimizer.param_groups:
        g.setdefault("initial_lr", g["lr"])
    rs = RunState()
    if ckpt_dir is not None:
        found = load_checkpoint(ckpt_dir)
        if found is not None:
            step, weights, state = found
            model.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            rs = RunState(**state["run"])
            rs.step = step
    status = "done"
    t_start = time.perf_counter()
    model.train()
    with _progress(cfg.progress, cfg.description, cfg.steps) as bar:
        task = bar.add_task(cfg.description, total=cfg.steps, completed=rs.step, loss="-",
                            tps="-")
        while rs.step < cfg.steps:
            step = rs.step
            mult = lr_multiplier(step, cfg)
            for g in optimizer.param_groups:
                g["lr"] = g["initial_lr"] * mult
            batch = get_batch(step)
            t0 = time.perf_counter()
            loss = loss_fn(model, batch)
            lv = float(loss.detach())
            if rs.first_loss is None:
                rs.first_loss = lv
            if not math.isfinite(lv) or lv > cfg.diverge_factor * max(rs.first_loss, 1e-8):
                status = "diverged"
                rs.curves.setdefault("train_loss", []).append([step, lv])
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            rs.train_seconds += time.perf_counter() - t0
            rs.tokens += int(batch[0].numel())
            rs.step = step + 1
            if on_step is not None:
                on_step(rs.step, lv)
            if rs.step % cfg.log_every == 0 or rs.step == cfg.steps:
                rs.curves.setdefault("train_loss", []).append([rs.step, lv])
            if eval_fn is not None and cfg.eval_every and rs.step % cfg.eval_every == 0:
                _evaluate(model, eval_fn, rs)
            tps = rs.tokens / rs.train_seconds if rs.train_seconds else 0.0
            bar.update(task, completed=rs.step, loss=f"{lv:.4f}", tps=f"{tps:,.0f}")
            if ckpt_dir is not None and cfg.checkpoint_every and \
                    rs.step % cfg.checkpoint_every == 0 and rs.step < cfg.steps:
                _save(ckpt_dir, model, optimizer, rs)
    if status == "done" and eval_fn is not None and \
            (not cfg.eval_every or cfg.steps % cfg.eval_every or not rs.last_eval):
        _evaluate(model, eval_fn, rs)
    if ckpt_dir is not None and status == "done":
        _save(ckpt_dir, model, optimizer, rs)
    train_curve = rs.curves.get("train_loss", [])
    return {
        "status": status,
        "steps": rs.step,
        "train_loss": train_curve[-1][1] if train_curve else None,
        "eval": dict(rs.last_eval),
        "curves": rs.curves,
        "timings": {"train_s": rs.train_seconds, "wall_s": time.perf_counter() - t_start,
                    "tokens": rs.tokens,
                    "tokens_per_s": rs.tokens / rs.train_seconds if rs.train_seconds else 0.0},
    }


def _evaluate(model: nn.Module, eval_fn, rs: RunState) -> None:
    model.eval()
    with torch.no_grad():
        metrics = eval_fn(model)
    model.train()
    rs.last_eval = {k: float(v) for k, v in metrics.items()}
    for k, v in rs.last_eval.items():
        rs.curves.setdefault(k, []).append([rs.step, v])


def _save(ckpt_dir: Path, model: nn.Module, optimizer, rs: RunState) -> None:
    state = {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
             "run": {"first_loss": rs.first_loss, "curves": rs.curves,
                     "last_eval": rs.last_eval, "train_seconds": rs.train_seconds,
                     "tokens": rs.tokens}}
    save_checkpoint(ckpt_dir, rs.step, model.state_dict(), state)
