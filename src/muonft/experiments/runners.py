"""The runner registry: ``spec.kind`` → a function ``fn(spec, run_dir) -> result record``.

Runners are stored by import path (``"package.module:function"``) so that worker processes,
started with ``spawn``/``forkserver``, can import them. Built in: ``synthetic``
(:mod:`muonft.experiments.synthetic`), ``finetune`` (and ``vision``, its older name: the one
fine-tuning skeleton for every model family) and ``pretrain``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from muonft.errors import ConfigError
from muonft.spec import RunSpec
from muonft.train.finetune import finetune
from muonft.train.pretrain import default_spec as pretrain_spec
from muonft.train.pretrain import pretrain

Runner = Callable[[Any, Path], dict[str, Any]]

_REGISTRY: dict[str, str] = {
    "synthetic": "muonft.experiments.synthetic:synthetic_runner",
    "finetune": "muonft.experiments.runners:finetune_runner",
    "pretrain": "muonft.experiments.runners:pretrain_runner",
    "vision": "muonft.experiments.runners:finetune_runner",
}


def register_runner(kind: str, fn: Runner | str) -> None:
    """Make ``fn`` run specs of ``kind``. ``fn`` is a module-level function (or its import
    path ``"module:function"``); worker processes import it by that path."""
    if not kind.isidentifier() or kind != kind.lower():
        raise ValueError(f"runner kind must be a lower-case identifier, got {kind!r}")
    if isinstance(fn, str):
        path = fn
    else:
        path = f"{fn.__module__}:{fn.__qualname__}"
        if "<" in fn.__qualname__:
            raise ValueError(f"runner {fn.__qualname__} is not importable by worker processes; "
                             f"define it at module level")
    _REGISTRY[kind] = path


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


def runner_path(kind: str) -> str:
    """Import path of the runner for ``kind`` (ConfigError naming the known kinds)."""
    if kind not in _REGISTRY:
        raise ConfigError(f"no runner for kind {kind!r}; known kinds: "
                          f"{', '.join(registered_kinds())}")
    return _REGISTRY[kind]


def load_runner(path: str) -> Runner:
    """Import ``"module:function"``."""
    module, _, name = path.partition(":")
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def get_runner(kind: str) -> Runner:
    return load_runner(runner_path(kind))


# ---------------------------------------------------------------------------------------------
# The training engines

def finetune_runner(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Run the fine-tuning skeleton for a RunSpec in ``run_dir`` (resumes there on rerun); any
    model family (``kind: vision`` is the same runner under its older name). Its checkpoints
    are deleted once the run has finished (sweeps keep results, not weights)."""
    if spec.model is not None:
        raise ConfigError(f"model: fine-tuning takes its model from init, got model "
                          f"{spec.model!r}; remove it from the spec")
    return finetune(spec, run_dir, progress=False, keep_checkpoints=0)


def pretrain_runner(spec: RunSpec, run_dir: Path) -> dict[str, Any]:
    """Run ``muonft.train.pretrain`` for a RunSpec (``model`` = preset, ``task`` = corpus)."""
    corpus = spec.task[3:] if spec.task.startswith("lm:") else spec.task
    kw = {"model": spec.model or "tiny", "optimizer": spec.optimizer, "steps": spec.steps,
          "lr": spec.lr, "weight_decay": spec.weight_decay, "batch_size": spec.batch_size,
          "seed": spec.seed, "corpus": corpus, "warmup": spec.warmup,
          "schedule": spec.schedule, "grad_clip": spec.grad_clip,
          "eval_every": spec.eval_every, "eval_batches": spec.eval_batches,
          "block_size": spec.block_size}
    return pretrain(pretrain_spec(**kw), run_dir, progress=False)
