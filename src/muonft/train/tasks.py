"""The built-in task plugins: token streams (``lm:<corpus>``), text classification
(``rt-sentiment``, ``glue:<task>``, ``glue-tsv:<task>:<dir>``) and images (``digits``,
``mnist-rot``, ``mnist-inv``).

Each turns a run's task into :class:`muonft.train.plugins.TaskData`: seeded training batches,
the loss, evaluation on the validation and test splits, and the record's task metrics:

- ``lm``: ``target`` = mean token cross-entropy on the validation split (``eval_batches``
  batches of consecutive windows, lower is better), ``test`` = the same on the held-out split,
  ``zero_shot`` = validation loss before fine-tuning, ``relative_ppl`` = exp(target −
  zero_shot);
- ``classification``: ``target`` / ``test`` / ``zero_shot`` = accuracy on the whole validation
  / held-out split (higher is better);
- ``image``: ``target`` = validation accuracy (``eval_batches`` batches of 250 images),
  ``test`` = held-out accuracy (all of it), with ``val_loss`` and ``test_loss``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muonft.data import LMBatcher, eval_batches, load_lm_splits
from muonft.data.classification import (
    ClassificationBatcher,
    accuracy,
    is_classification_task,
    load_classification,
    load_task_split,
)
from muonft.data.images import PRETRAIN_TASK, TASKS, ImageBatcher, load_task
from muonft.data.images import eval_batches as image_batches
from muonft.spec import RunSpec
from muonft.train.baselines import array_digest
from muonft.train.loop import default_loss
from muonft.train.plugins import Loaded, TaskData

CLASSIFY_EVAL_BATCH = 64
IMAGE_EVAL_BATCH = 250


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate ``model`` in eval mode without gradients, restoring its mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def lm_windows_loss(model: nn.Module, tokens: np.ndarray, block_size: int, windows: int,
                    max_batches: int | None, loss: Callable) -> float:
    """Mean token cross-entropy of ``loss`` over consecutive windows of ``tokens`` (batches of
    ``windows`` windows, at most ``max_batches``): the same windows for every run."""
    total, n = 0.0, 0
    dev = _device(model)
    for x, y in eval_batches(tokens, block_size, windows, max_batches):
        total += float(loss(model, (x.to(dev), y.to(dev)))) * y.numel()
        n += y.numel()
    return total / max(1, n)


class LMTask:
    """``lm:<corpus>``: next-token prediction on a corpus tokenized with the model's own
    tokenizer (:func:`muonft.data.load_lm_splits`)."""

    kind, metric, higher_is_better = "lm", "val_loss", False
    forms = "lm:<corpus> (rt, kjv, file:<path>, …)"

    def claims(self, task: str) -> bool:
        return task.startswith("lm:") and len(task) > 3

    def prepare(self, spec: RunSpec, loaded: Loaded, block_size: int | None) -> TaskData:
        splits = load_lm_splits(spec.task[3:], loaded.tokenizer)
        loss = loaded.lm_loss or default_loss
        windows = loaded.lm_eval_windows

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            tokens = splits.val if split == "val" else splits.heldout
            with eval_mode(model):
                return {f"{split}_loss": lm_windows_loss(model, tokens, block_size, windows,
                                                         spec.eval_batches, loss)}

        def metrics(val: dict[str, float], test: dict[str, float], zero_shot: float
                    ) -> dict[str, Any]:
            return {"target": val["val_loss"], "target_name": "val_loss",
                    "higher_is_better": False, "zero_shot": zero_shot,
                    "relative_ppl": math.exp(val["val_loss"] - zero_shot),
                    "test": test["test_loss"]}

        return TaskData(LMBatcher(splits.train, block_size, spec.batch_size,
                                  seed=spec.seed).get,
                        loss, evaluate, metrics, array_digest(splits.val, splits.heldout))

    def train_units(self, spec: RunSpec, tokenizer: Any) -> int:
        return len(load_lm_splits(spec.task[3:], tokenizer).train)

    def units_per_step(self, spec: RunSpec, block_size: int | None) -> int:
        return spec.batch_size * block_size


def classification_loss(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
                        ) -> torch.Tensor:
    """Cross-entropy of an HF sequence classifier on an (x padded with −1, y) batch."""
    x, y = batch
    logits = model(input_ids=x.clamp(min=0), attention_mask=(x >= 0).long()).logits
    return F.cross_entropy(logits.float(), y)


class ClassificationTask:
    """Text classification with an HF sequence-classification head
    (:mod:`muonft.data.classification`)."""

    kind, metric, higher_is_better = "classification", "val_accuracy", True
    forms = "rt-sentiment, glue:<task>, glue-tsv:<task>:<dir>"

    def claims(self, task: str) -> bool:
        return is_classification_task(task)

    def prepare(self, spec: RunSpec, loaded: Loaded, block_size: int | None) -> TaskData:
        tok = loaded.hf_tokenizer
        train, val, test = (load_classification(spec.task, s, tok, block_size)
                            for s in ("train", "val", "heldout"))

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            data = val if split == "val" else test
            dev, preds, labels = _device(model), [], []
            # length-sorted batches pad far less (RT snippets: 3x faster); accuracy is order-free
            with eval_mode(model):
                for x, y in data.batches(CLASSIFY_EVAL_BATCH, by_length=True):
                    x = x.to(dev)
                    preds.append(model(input_ids=x.clamp(min=0), attention_mask=(x >= 0)
                                       .long()).logits.argmax(-1).cpu())
                    labels.append(y)
            return {f"{split}_accuracy": accuracy(torch.cat(preds), torch.cat(labels))}

        def metrics(val: dict[str, float], test: dict[str, float], zero_shot: float
                    ) -> dict[str, Any]:
            return {"target": val["val_accuracy"], "target_name": "val_accuracy",
                    "higher_is_better": True, "zero_shot": zero_shot,
                    "test": test["test_accuracy"]}

        digest = array_digest(*(np.concatenate([np.asarray(x, dtype=np.int64) for x in d.ids])
                                for d in (val, test)), val.labels, test.labels)
        return TaskData(ClassificationBatcher(train, spec.batch_size, seed=spec.seed).get,
                        classification_loss, evaluate, metrics, digest)

    def train_units(self, spec: RunSpec, tokenizer: Any) -> int:
        return len(load_task_split(spec.task, "train")[1])

    def units_per_step(self, spec: RunSpec, block_size: int | None) -> int:
        return spec.batch_size


def image_metrics(model: nn.Module, split, max_batches: int | None) -> dict[str, float]:
    """``{"accuracy", "loss"}`` over the first ``max_batches`` batches of 250 images of
    ``split`` (all of it when ``None``); call in eval mode without gradients."""
    dev = _device(model)
    correct, loss, n = 0, 0.0, 0
    for x, y in image_batches(split, IMAGE_EVAL_BATCH, max_batches):
        logits, _ = model(x.to(dev))
        y = y.to(dev)
        loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
        correct += int((logits.argmax(-1) == y).sum())
        n += len(y)
    return {"accuracy": correct / max(1, n), "loss": loss / max(1, n)}


class ImageTask:
    """Image classification into the ten digit classes (:mod:`muonft.data.images`); models
    take ``model(x, y) -> (logits, loss)``."""

    kind, metric, higher_is_better = "image", "val_accuracy", True
    forms = ", ".join(t for t in TASKS if t != PRETRAIN_TASK)

    def claims(self, task: str) -> bool:
        return task in TASKS and task != PRETRAIN_TASK

    def prepare(self, spec: RunSpec, loaded: Loaded, block_size: int | None) -> TaskData:
        data = load_task(spec.task, loaded.image_size)

        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            with eval_mode(model):
                m = (image_metrics(model, data.val, spec.eval_batches) if split == "val"
                     else image_metrics(model, data.heldout, None))
            return {f"{split}_accuracy": m["accuracy"], f"{split}_loss": m["loss"]}

        def metrics(val: dict[str, float], test: dict[str, float], zero_shot: float
                    ) -> dict[str, Any]:
            return {"target": val["val_accuracy"], "target_name": "val_accuracy",
                    "higher_is_better": True, "zero_shot": zero_shot,
                    "test": test["test_accuracy"], "val_loss": val["val_loss"],
                    "test_loss": test["test_loss"]}

        digest = array_digest(data.val.x, data.val.y, data.heldout.x, data.heldout.y)
        return TaskData(ImageBatcher(data.train, spec.batch_size, seed=spec.seed).get,
                        default_loss, evaluate, metrics, digest)

    def train_units(self, spec: RunSpec, tokenizer: Any) -> int:
        return len(load_task(spec.task).train.y)

    def units_per_step(self, spec: RunSpec, block_size: int | None) -> int:
        return spec.batch_size


LM, CLASSIFICATION, IMAGE = LMTask(), ClassificationTask(), ImageTask()
