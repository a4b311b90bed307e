"""The two plugin protocols of the fine-tuning skeleton, and their registry.

A **model source** (:class:`ModelSource`) turns a run's ``init`` into a model: it says which
inits it claims, which task kinds it can train, its own defaults, and ``load`` returns a
:class:`Loaded` — the model, its tokenizer/processor, the loss of a causal-LM batch, the
pretraining-domain forgetting probe and a content identity for caching. A **task**
(:class:`TaskPlugin`) turns a run's ``task`` into data: batches, the loss, evaluation on the
validation and test splits, the metric and its direction (:class:`TaskData`).

The skeleton (:func:`muonft.train.finetune.finetune`) does everything else once for every
family. Adding a model family or a task is one module with one object implementing the
protocol and one line registering it::

    register_source("muonft.train.families.gpt:SOURCE")   # "module:attribute", imported lazily

Sources are tried newest first (so a user's plugin may take over an init), tasks the same.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from muonft.errors import ConfigError
from muonft.optim import SCALE_RULES
from muonft.spec import RunSpec

Batch = Any
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


class Probe(Protocol):
    """A forgetting probe on the pretraining domain: ``before(model)`` measures (floats and
    tensors by name, cacheable), ``after(model, before)`` gives the record's metrics
    (``forgetting`` and its parts). ``key`` identifies what it measures (for the cache)."""

    key: dict[str, Any]

    def before(self, model: nn.Module) -> dict[str, Any]: ...

    def after(self, model: nn.Module, before: dict[str, Any]) -> dict[str, Any]: ...


@dataclass
class Loaded:
    """What a model source gives the skeleton.

    ``tokenizer``: a :class:`muonft.data.Tokenizer` for token-stream tasks; ``hf_tokenizer``:
    the HF tokenizer (classification); ``image_size``: the input side of image models;
    ``lm_loss``: the loss of an ``(x, y)`` next-token batch; ``lm_eval_windows``: windows per
    evaluation batch of LM tasks; ``train_head``: keep the ``head`` layer group trainable under
    LoRA (a new classifier); ``new_head``: the head was drawn from the seed (so zero-shot
    depends on it); ``identity``: content key of the weights (``None``: do not cache the
    pre-fine-tuning measurements)."""

    model: nn.Module
    probe: Probe
    tokenizer: Any = None
    hf_tokenizer: Any = None
    image_size: int | None = None
    lm_loss: LossFn | None = None
    lm_eval_windows: int = 8
    train_head: bool = False
    new_head: bool = False
    identity: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskData:
    """What a task gives the skeleton for one run.

    ``batches(step)``: the training batch of a step (a pure function of seed and step);
    ``evaluate(model, split)``: metrics on ``"val"`` or ``"test"`` (keys prefixed by the
    split, e.g. ``val_loss``, ``test_accuracy``; the model is put in eval mode, no grad);
    ``digest``: identity of the evaluation data; ``metrics(val, test, zero_shot)``: the
    record's task metrics (``target``, ``test``, ``zero_shot``, …)."""

    batches: Callable[[int], Batch]
    loss: LossFn
    evaluate: Callable[[nn.Module, str], dict[str, float]]
    metrics: Callable[[dict[str, float], dict[str, float], float], dict[str, Any]]
    digest: str


class TaskPlugin(Protocol):
    """A task kind (``lm``, ``classification``, ``image``, …)."""

    kind: str
    metric: str
    higher_is_better: bool

    def claims(self, task: str) -> bool: ...

    def prepare(self, spec: RunSpec, loaded: Loaded, block_size: int | None) -> TaskData: ...

    def train_units(self, spec: RunSpec, tokenizer: Any) -> int:
        """Examples (or tokens, for token streams) in the training split; with
        :attr:`units_per_step` it converts epochs to steps."""
        ...

    def units_per_step(self, spec: RunSpec, block_size: int | None) -> int: ...


class ModelSource(Protocol):
    """A model family (our GPT, HF text models, ViT, …)."""

    name: str
    tasks: tuple[str, ...]
    forms: str  # what its inits look like, for messages
    distributed: bool  # runs under torchrun with several processes

    def claims(self, init: str) -> bool: ...

    def default_task(self, init: str) -> str:
        """The task of a run that names none."""
        ...

    def defaults(self, task_kind: str, optimizer: str, method: str) -> dict[str, Any]:
        """Options (flat names, as ``muonft finetune``'s) this family sets differently from
        :class:`RunSpec`'s defaults for a task kind, incl. ``lr`` and ``block_size``."""
        ...

    def load(self, spec: RunSpec, task_kind: str, block_size: int | None,
             device: torch.device) -> Loaded: ...

    def tokenizer(self, spec: RunSpec) -> Any:
        """The tokenizer a task reads with (without loading the weights where possible)."""
        ...

    def export(self, spec: RunSpec, model: nn.Module, loaded: Loaded, directory: Path) -> None:
        """Optional: write the fine-tuned ``model`` (LoRA merged in) to ``directory`` in the
        family's own loadable form (an HF ``save_pretrained`` directory with its tokenizer; a
        checkpoint ``--init`` takes for ours)."""
        ...


_SOURCES: list[str] = []
_TASKS: list[str] = []
_LOADED: dict[str, Any] = {}


def register_source(path: str) -> None:
    """Register a model source by import path ``"module:attribute"`` (imported on first use;
    registered later = tried first)."""
    _register(_SOURCES, path)


def register_task(path: str) -> None:
    """Register a task plugin by import path ``"module:attribute"``."""
    _register(_TASKS, path)


def _register(registry: list[str], path: str) -> None:
    if ":" not in path:
        raise ValueError(f"plugin path must be 'module:attribute', got {path!r}")
    if path in registry:
        registry.remove(path)
    registry.append(path)


def _load(path: str) -> Any:
    if path not in _LOADED:
        module, _, name = path.partition(":")
        _LOADED[path] = getattr(importlib.import_module(module), name)
    return _LOADED[path]


def find_task(task: str) -> TaskPlugin:
    """The task plugin that claims ``task`` (ConfigError naming the known forms)."""
    plugins = [_load(p) for p in reversed(_TASKS)]
    for t in plugins:
        if t.claims(task):
            return t
    forms = "; ".join(getattr(t, "forms", t.kind) for t in plugins)
    raise ConfigError(f"task: unknown task {task!r}; choose one of: {forms}")


def find_source(init: str) -> ModelSource:
    """The model source that claims ``init`` (ConfigError naming the sources)."""
    sources = [_load(p) for p in reversed(_SOURCES)]
    for s in sources:
        if s.claims(init):
            return s
    raise ConfigError(f"init: no model family claims {init!r} (no pretrained checkpoint there "
                      f"or in the cache; run `muonft pretrain` first); families: "
                      f"{'; '.join(f'{s.name}: {s.forms}' for s in sources)}")


def resolve(spec: RunSpec) -> tuple[ModelSource, TaskPlugin]:
    """The (source, task) pair of a run; ConfigError when the task does not fit the model."""
    check_scale_rule(spec)
    task = find_task(spec.task)
    source = find_source(spec.init)
    if task.kind not in source.tasks:
        raise ConfigError(f"task: {spec.task!r} ({task.kind}) does not fit init {spec.init!r} "
                          f"({source.name}), which trains {', '.join(source.tasks)} tasks")
    return source, task


def check_scale_rule(spec: RunSpec) -> None:
    """The Muon scale rule is one of :data:`muonft.optim.SCALE_RULES` (registered at run time,
    so the spec layer cannot check it)."""
    if spec.optimizer == "muon" and spec.muon.scale not in SCALE_RULES:
        raise ConfigError(f"muon.scale: unknown scale rule {spec.muon.scale!r}; choose one of "
                          f"{', '.join(sorted(SCALE_RULES))}")


def block_size_of(spec: RunSpec, source: ModelSource, task: TaskPlugin) -> int | None:
    """``spec.block_size``, or the family's default for the task (``None`` for tasks without
    sequences, where a given block_size is refused)."""
    default = source.defaults(task.kind, spec.optimizer, spec.method).get("block_size")
    if default is None and spec.block_size is not None:
        raise ConfigError(f"block_size: {task.kind} tasks have no sequences; leave it out "
                          f"(got {spec.block_size})")
    return spec.block_size or default


def spec_from_options(**options: Any) -> RunSpec:
    """A RunSpec from ``muonft finetune``'s flat options, the model family's defaults filling
    what is ``None`` or missing (its LR per optimizer and method, batch and block sizes, …)."""
    given = {k: v for k, v in options.items() if v is not None}
    probe = RunSpec.from_options(**{"lr": 1.0, **given})  # every given value checked first
    check_scale_rule(probe)
    source = find_source(probe.init)
    task = given.get("task") or source.default_task(probe.init)
    defaults = source.defaults(find_task(task).kind, probe.optimizer, probe.method)
    return RunSpec.from_options(**{**defaults, **given, "task": task})


for _path in ("muonft.train.families.gpt:SOURCE", "muonft.train.families.vision:SOURCE",
              "muonft.train.families.hf:SOURCE"):
    register_source(_path)
for _path in ("muonft.train.tasks:LM", "muonft.train.tasks:CLASSIFICATION",
              "muonft.train.tasks:IMAGE"):
    register_task(_path)
