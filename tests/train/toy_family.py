"""A model family written the way a user would add one (test fixture of test_plugins.py): a
two-layer MLP "pretrained" from a seed, on a registered toy regression task. Nothing in the
fine-tuning skeleton knows about either."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from muonft.spec import RunSpec
from muonft.train.plugins import Loaded, TaskData


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc_in = nn.Linear(8, 32, bias=False)   # named like our GPT's MLP: layer group mlp_in
        self.head = nn.Linear(32, 1, bias=False)  # the head group: AdamW, never adapted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.fc_in(x))).squeeze(-1)


def _data(seed: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return x, x[:, 0] - 2 * x[:, 1] + 0.5 * x[:, 2] * x[:, 3]


class ShiftProbe:
    key: ClassVar[dict] = {"probe": "toy-shift"}

    def before(self, model: nn.Module) -> dict[str, Any]:
        return {"pre": self._loss(model)}

    def after(self, model: nn.Module, before: dict[str, Any]) -> dict[str, Any]:
        return {"forgetting": self._loss(model) - before["pre"]}

    @torch.no_grad()
    def _loss(self, model: nn.Module) -> float:
        x, _ = _data(99, 64)
        return float(model(x).square().mean())  # the "pretraining" target was 0


class ToySource:
    name, tasks, forms, distributed = "toy", ("regression",), "toy:<seed>", False

    def claims(self, init: str) -> bool:
        return init.startswith("toy:")

    def default_task(self, init: str) -> str:
        return "toy-regression"

    def defaults(self, task_kind: str, optimizer: str, method: str) -> dict[str, Any]:
        return {"lr": 3e-2, "batch_size": 64, "steps": 30, "warmup": 0, "eval_every": 10}

    def tokenizer(self, spec: RunSpec) -> None:
        return None

    def load(self, spec: RunSpec, task_kind: str, block_size, device) -> Loaded:
        torch.manual_seed(int(spec.init[4:]))
        return Loaded(MLP().to(device), ShiftProbe())


class RegressionTask:
    kind, metric, higher_is_better, forms = "regression", "val_loss", False, "toy-regression"

    def claims(self, task: str) -> bool:
        return task == "toy-regression"

    def prepare(self, spec: RunSpec, loaded: Loaded, block_size) -> TaskData:
        x, y = _data(0, 512)
        vx, vy = _data(1, 128)

        def batches(step: int):
            idx = np.random.default_rng((spec.seed, step)).integers(0, len(x), spec.batch_size)
            return x[idx], y[idx]

        def loss(model: nn.Module, batch) -> torch.Tensor:
            return (model(batch[0]) - batch[1]).square().mean()

        @torch.no_grad()
        def evaluate(model: nn.Module, split: str) -> dict[str, float]:
            return {f"{split}_loss": float(loss(model, (vx, vy)))}

        def metrics(val, test, zero_shot) -> dict[str, Any]:
            return {"target": val["val_loss"], "target_name": "val_loss",
                    "higher_is_better": False, "zero_shot": zero_shot, "test": test["test_loss"]}

        return TaskData(batches, loss, evaluate, metrics, "toy")

    def train_units(self, spec: RunSpec, tokenizer) -> int:
        return 512

    def units_per_step(self, spec: RunSpec, block_size) -> int:
        return spec.batch_size


SOURCE, TASK = ToySource(), RegressionTask()
