"""HF ``Trainer`` glue: our :class:`muonft.optim.Muon` with the automatic Muon/AdamW partition.

Two ways in:

```python
from muonft.integrations.hf import MuonTrainer, create_optimizer

# 1. Build the optimizer yourself and hand it to any Trainer (a scheduler is optional: with
#    None the Trainer builds its own from TrainingArguments on top of this optimizer).
opt = create_optimizer(model, lr=2e-4, weight_decay=0.01, scale="match_adamw_rms")
trainer = Trainer(model=model, args=args, train_dataset=ds, optimizers=(opt, None))

# 2. Or let the Trainer build it from TrainingArguments (learning_rate, weight_decay,
#    adam_beta1/2, adam_epsilon); extra Muon options go in `muon_options`.
trainer = MuonTrainer(model=model, args=args, train_dataset=ds,
                      muon_options={"orthogonalizer": "polar_express"})
```

The partition is :func:`muonft.optim.partition_parameters` (one place for the rules): hidden
matrices (and LoRA factors of a PEFT model) → Muon; embeddings, the output head / classifier,
norms and biases → AdamW. Frozen parameters are left out, so a PEFT model trains its adapters
(and any ``modules_to_save``) only. Weight decay follows the HF convention: none on biases and
norm weights; matrices (Muon's and AdamW's) get ``weight_decay``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from muonft.optim import Muon, Partition, partition_parameters


def muon_param_groups_hf(model: nn.Module, weight_decay: float = 0.0, *,
                         adamw_weight_decay: float | None = None,
                         adamw_names: Iterable[str] = (), muon_names: Iterable[str] = ()
                         ) -> tuple[list[dict[str, Any]], Partition]:
    """Param groups for :class:`Muon` from the automatic partition, with the AdamW group split
    into decayed (embeddings, heads: ``adamw_weight_decay``, default ``weight_decay``) and
    undecayed (norms, biases) parameters; also returns the :class:`~muonft.optim.Partition`
    (its ``table()`` says why each parameter went where)."""
    adamw_wd = weight_decay if adamw_weight_decay is None else adamw_weight_decay
    part = partition_parameters(model, adamw_names=adamw_names, muon_names=muon_names)
    norm = {r.name for r in part.rows if r.rule == "norm"}
    groups: list[dict[str, Any]] = []
    for g in part.groups:
        if g["use_muon"]:
            groups.append({**g, "weight_decay": weight_decay})
            continue
        items = list(zip(g["names"], g["params"]))
        no_decay = [(n, p) for n, p in items if p.ndim < 2 or n in norm]
        decay = [(n, p) for n, p in items if not (p.ndim < 2 or n in norm)]
        for items, wd in ((decay, adamw_wd), (no_decay, 0.0)):
            if items:
                groups.append({"params": [p for _, p in items], "names": [n for n, _ in items],
                               "use_muon": False, "weight_decay": wd})
    return groups, part


def create_optimizer(model: nn.Module, lr: float = 2e-4, *, weight_decay: float = 0.0,
                     adamw_lr: float | None = None, adamw_weight_decay: float | None = None,
                     adamw_names: Iterable[str] = (), muon_names: Iterable[str] = (),
                     **muon_options: Any) -> Muon:
    """Our :class:`Muon` for ``model`` (a ``transformers`` model, a PEFT model, any module).

    ``lr`` / ``weight_decay`` are those of the Muon groups (the hidden matrices); the AdamW
    groups (embeddings, head, norms, biases) take ``adamw_lr`` / ``adamw_weight_decay``,
    defaulting to the same values. With the default ``scale="match_adamw_rms"`` a Muon step has
    the RMS of an AdamW step at the same lr, which makes one lr a sensible start, not the
    optimum: tune Muon's lr on your task (the README records the optima we measured).
    ``muon_options`` go to :class:`Muon` (``scale``, ``orthogonalizer``, ``ns_steps``,
    ``momentum``, ``adamw_betas``, ...). ``adamw_names`` / ``muon_names`` override the partition
    by name pattern. The partition is kept as ``optimizer.partition``.
    """
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if adamw_lr is not None and not adamw_lr > 0:
        raise ValueError(f"adamw_lr must be > 0, got {adamw_lr}")
    groups, part = muon_param_groups_hf(model, weight_decay,
                                        adamw_weight_decay=adamw_weight_decay,
                                        adamw_names=adamw_names, muon_names=muon_names)
    if adamw_lr is not None:
        muon_options["adamw_lr"] = adamw_lr
    if not groups:
        raise ValueError("the model has no trainable parameters (all requires_grad=False)")
    opt = Muon(groups, lr=lr, weight_decay=weight_decay, **muon_options)
    opt.partition = part
    return opt


def _trainer_base():
    from transformers import Trainer

    return Trainer


class MuonTrainer(_trainer_base()):
    """``transformers.Trainer`` whose default optimizer is our Muon (see
    :func:`create_optimizer`), built from ``TrainingArguments``: ``learning_rate``,
    ``weight_decay``, ``adam_beta1``/``adam_beta2`` and ``adam_epsilon`` (for the AdamW groups).
    ``muon_options`` adds :class:`Muon` keyword arguments. An optimizer passed through
    ``optimizers=(opt, sched)`` is used as given. The LR scheduler is the Trainer's own.
    """

    def __init__(self, *args: Any, muon_options: dict[str, Any] | None = None,
                 **kwargs: Any) -> None:
        self.muon_options = dict(muon_options or {})
        super().__init__(*args, **kwargs)

    def create_optimizer(self, model: nn.Module | None = None):
        if self.optimizer is None:
            a = self.args
            opts = {"adamw_betas": (a.adam_beta1, a.adam_beta2), "adamw_eps": a.adam_epsilon,
                    **self.muon_options}
            self.optimizer = create_optimizer(self.model if model is None else model,
                                              lr=a.learning_rate, weight_decay=a.weight_decay,
                                              **opts)
        return self.optimizer
