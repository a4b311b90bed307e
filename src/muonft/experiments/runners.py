"""The runner registry: ``spec.kind`` → a function ``fn(spec, run_dir) -> result record``.

Runners are stored by import path (``"package.module:function"``) so that worker processes,
started with ``spawn``/``forkserver``, can import them. Built in: ``synthetic``
(:mod:`muonft.experiments.synthetic`), ``finetune``, ``pretrain`` and ``vision`` (thin adapters
from a RunSpec to the engines' own spec dicts; they import the engines only when called).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from muonft.errors import ConfigError

Runner = Callable[[Any, Path], dict[str, Any]]

_REGISTRY: dict[str, str] = {
    "synthetic": "muonft.experiments.synthetic:synthetic_runner",
    "finetune": "muonft.experiments.runners:finetune_runner",
    "pretrain": "muonft.experiments.runners:pretrain_runner",
    "vision": "muonft.experiments.runners:vision_runner",
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
# Adapters to the training engines (issue 4 and the pretrain recipe)

def finetune_kwargs(spec: Any) -> dict[str, Any]:
    """The ``muonft.train.finetune`` spec dict of a RunSpec; refuses settings the engine does
    not implement yet (rather than silently ignoring them).

    LoRA ``dropout``/``targets`` and the Muon options other than ``scale`` are passed only
    when they differ from their defaults, so an engine that lacks one (the HF recipe) refuses
    it by name instead of receiving a value it cannot use.
    """
    from muonft.experiments.spec import LoRAConfig, MuonConfig

    unsupported = [k for k in ("model",) if getattr(spec, k) is not None]
    if unsupported:
        raise ConfigError(f"the finetune engine does not support {', '.join(unsupported)} yet; "
                          f"remove them from the spec")
    kw = {"init": spec.init, "task": spec.task, "optimizer": spec.optimizer,
          "method": spec.method, "lr": spec.lr, "steps": spec.steps,
          "batch_size": spec.batch_size, "seed": spec.seed, "weight_decay": spec.weight_decay,
          "warmup": spec.warmup, "schedule": spec.schedule, "grad_clip": spec.grad_clip,
          "eval_every": spec.eval_every, "eval_batches": spec.eval_batches,
          "scale": spec.muon.scale}
    if spec.block_size is not None:
        kw["block_size"] = spec.block_size
    if spec.method == "lora":
        kw.update(lora_rank=spec.lora.rank, lora_alpha=spec.lora.alpha,
                  lora_variant=spec.lora.variant)
        d = LoRAConfig()
        kw.update({f"lora_{k}": getattr(spec.lora, k) for k in ("dropout", "targets")
                   if getattr(spec.lora, k) != getattr(d, k)})
    if spec.optimizer == "muon":
        d = MuonConfig()
        kw.update({k: getattr(spec.muon, k) for k in ("orthogonalizer", "ns_steps", "momentum",
                                                      "nesterov", "adamw_lr_ratio")
                   if getattr(spec.muon, k) != getattr(d, k)})
    # constrained-update Muon (issue 10); the engine validates the combinations
    kw.update({k: getattr(spec, k) for k in ("update_rank", "max_drift", "lora_muon")
               if getattr(spec, k) is not None})
    return kw


def finetune_runner(spec: Any, run_dir: Path) -> dict[str, Any]:
    """Run ``muonft.train.finetune`` for a RunSpec in ``run_dir`` (resumes there on rerun)."""
    from muonft.train.finetune import finetune

    return finetune(finetune_kwargs(spec), run_dir, progress=False)


def pretrain_runner(spec: Any, run_dir: Path) -> dict[str, Any]:
    """Run ``muonft.train.pretrain`` for a RunSpec (``model`` = preset, ``task`` = corpus)."""
    from muonft.train.pretrain import pretrain

    corpus = spec.task[3:] if spec.task.startswith("lm:") else spec.task
    kw = {"model": spec.model or "tiny", "optimizer": spec.optimizer, "steps": spec.steps,
          "lr": spec.lr, "weight_decay": spec.weight_decay, "batch_size": spec.batch_size,
          "seed": spec.seed, "corpus": corpus, "warmup": spec.warmup,
          "schedule": spec.schedule, "grad_clip": spec.grad_clip,
          "eval_every": spec.eval_every, "eval_batches": spec.eval_batches}
    if spec.block_size is not None:
        kw["block_size"] = spec.block_size
    from muonft.train.pretrain import default_spec

    return pretrain(default_spec(**kw), run_dir, progress=False)


def vision_kwargs(spec: Any) -> dict[str, Any]:
    """The ``muonft.train.vision`` fine-tuning spec dict of a RunSpec (``init``: a ViT
    checkpoint or ``hf:`` image model, ``task``: ``digits`` / ``mnist-rot`` / ``mnist-inv``);
    refuses the settings that recipe does not have (``model``, ``block_size``, no gradient
    clipping, the constrained-update Muon options)."""
    unsupported = [k for k in ("model", "block_size", "update_rank", "max_drift", "lora_muon")
                   if getattr(spec, k) is not None]
    if spec.grad_clip is None:
        unsupported.append("grad_clip: null")
    if unsupported:
        raise ConfigError(f"the vision engine does not support {', '.join(unsupported)}; "
                          f"remove them from the spec")
    kw = {"init": spec.init, "task": spec.task, "optimizer": spec.optimizer,
          "method": spec.method, "lr": spec.lr, "steps": spec.steps,
          "batch_size": spec.batch_size, "seed": spec.seed, "weight_decay": spec.weight_decay,
          "warmup": spec.warmup, "schedule": spec.schedule, "grad_clip": spec.grad_clip,
          "eval_every": spec.eval_every, "eval_batches": spec.eval_batches,
          "scale": spec.muon.scale}
    if spec.method == "lora":
        kw.update({f"lora_{k}": getattr(spec.lora, k)
                   for k in ("rank", "alpha", "variant", "dropout", "targets")})
    if spec.optimizer == "muon":
        kw.update({k: getattr(spec.muon, k) for k in ("orthogonalizer", "ns_steps", "momentum",
                                                      "nesterov", "adamw_lr_ratio")})
    return kw


def vision_runner(spec: Any, run_dir: Path) -> dict[str, Any]:
    """Run ``muonft.train.vision.vision_finetune`` for a RunSpec in ``run_dir`` (resumes)."""
    from muonft.train.vision import vision_finetune

    return vision_finetune(vision_kwargs(spec), run_dir, progress=False)
