"""Which parameters Muon updates and which AdamW does — decided once, with the reason recorded.

Muon is meant for the hidden matrices of a network. Embeddings, the output head or classifier,
norm gains, biases and other vectors (class tokens, position embeddings) go to AdamW, as does a
ViT's patch embedding (the study's CLIP rule). LoRA factors (``lora_A``/``lora_B``) are ordinary
matrices and go to Muon. Frozen parameters are left out entirely.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from torch import nn

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm, nn.GroupNorm, nn.RMSNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.InstanceNorm1d, nn.InstanceNorm2d,
)
# Module-name components that mark an output head / classifier (HF and in-house names).
_HEAD_NAMES = {"head", "lm_head", "classifier", "score", "cls", "pooler_head", "output_layer"}
_EMBED_NAMES = re.compile(r"(^|\.)(embed|embeddings?|wte|wpe|word_embeddings|embed_tokens|"
                          r"position_embeddings?|token_type_embeddings|patch_embed\w*|"
                          r"patch_embedding|cls_token|pos_embed|shared)(\.|$)")
_NORM_NAMES = re.compile(r"(^|\.)(\w*norm\w*|ln_\w+|ln\d*)(\.|$)", re.IGNORECASE)


@dataclass(frozen=True)
class PartitionRow:
    """One parameter's placement: its name, shape, group ("muon"/"adamw") and the rule."""

    name: str
    shape: tuple[int, ...]
    group: str
    rule: str


@dataclass
class Partition:
    """Param groups for :class:`muonft.optim.Muon` plus a per-parameter account of why."""

    groups: list[dict] = field(default_factory=list)
    rows: list[PartitionRow] = field(default_factory=list)

    def table(self) -> str:
        """A fixed-width table of every trainable parameter, its shape, group and rule."""
        if not self.rows:
            return "(no trainable parameters)"
        w = max(len(r.name) for r in self.rows)
        lines = [f"{'parameter':<{w}}  {'shape':<16} {'group':<6} rule"]
        for r in self.rows:
            lines.append(f"{r.name:<{w}}  {'x'.join(map(str, r.shape)):<16} {r.group:<6} {r.rule}")
        n_m = sum(r.group == "muon" for r in self.rows)
        lines.append(f"{n_m} Muon, {len(self.rows) - n_m} AdamW parameters")
        size = {g: sum(math.prod(r.shape) for r in self.rows if r.group == g)
                for g in ("muon", "adamw")}
        mib = 2.0**20
        # fp32 optimizer state: Muon keeps one momentum buffer, AdamW two moments
        state = 4 * size["muon"] + 8 * size["adamw"]
        lines.append(f"{size['muon']:,} Muon + {size['adamw']:,} AdamW entries; optimizer "
                     f"state {state / mib:.2f} MiB (all-AdamW: "
                     f"{8 * (size['muon'] + size['adamw']) / mib:.2f} MiB)")
        return "\n".join(lines)


def _matches(name: str, patterns: Iterable[str]) -> str | None:
    for pat in patterns:
        if fnmatch.fnmatchcase(name, pat) or fnmatch.fnmatchcase(name, f"*{pat}*"):
            return pat
    return None


def _head_modules(model: nn.Module) -> set[int]:
    """ids of parameters of the model's output head, found through HF's API when present."""
    ids: set[int] = set()
    getter = getattr(model, "get_output_embeddings", None)
    if callable(getter):
        try:
            head = getter()
        except (NotImplementedError, AttributeError):
            head = None
        if isinstance(head, nn.Module):
            ids.update(id(p) for p in head.parameters())
    return ids


def partition_parameters(
    model: nn.Module,
    *,
    adamw_names: Iterable[str] = (),
    muon_names: Iterable[str] = (),
) -> Partition:
    """Split ``model``'s trainable parameters into a Muon group and an AdamW group.

    Rules, first match wins: user ``muon_names`` / ``adamw_names`` patterns (fnmatch, or a
    substring); the HF output embeddings / a module named like a head or classifier → AdamW;
    ``nn.Embedding`` weights and embedding-like names (``embed``, ``patch_embed``, ``cls_token``,
    ``pos_embed`` …) → AdamW; norm modules → AdamW; parameters with fewer than 2 dims
    (biases, gains) → AdamW; every other ≥2-D parameter → Muon.
    """
    adamw_names, muon_names = tuple(adamw_names), tuple(muon_names)
    head_ids = _head_modules(model)
    owner: dict[int, nn.Module] = {}
    owner_name: dict[int, str] = {}
    for mname, module in model.named_modules():
        for p in module.parameters(recurse=False):
            owner.setdefault(id(p), module)
            owner_name.setdefault(id(p), mname)

    rows: list[PartitionRow] = []
    muon_p, muon_n, adam_p, adam_n = [], [], [], []
    seen: set[int] = set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        module = owner.get(id(p))
        parts = set(owner_name.get(id(p), "").split("."))
        if (pat := _matches(name, muon_names)) is not None:
            group, rule = "muon", f"user muon pattern {pat!r}"
        elif (pat := _matches(name, adamw_names)) is not None:
            group, rule = "adamw", f"user adamw pattern {pat!r}"
        elif ".lora_" in name and p.ndim >= 2:
            group, rule = "muon", "LoRA factor"
        elif id(p) in head_ids or parts & _HEAD_NAMES:
            group, rule = "adamw", "output head / classifier"
        elif isinstance(module, nn.Embedding) or _EMBED_NAMES.search(name):
            group, rule = "adamw", "embedding"
        elif isinstance(module, _NORM_TYPES) or _NORM_NAMES.search(name):
            group, rule = "adamw", "norm"
        elif p.ndim < 2:
            group, rule = "adamw", "bias / vector (< 2-D)"
        else:
            group, rule = "muon", "hidden matrix" if p.ndim == 2 else "hidden conv (flattened)"
        if group == "muon" and p.ndim < 2:
            raise ValueError(f"parameter {name!r} of shape {tuple(p.shape)} cannot be a Muon "
                             f"matrix; remove it from muon_names")
        rows.append(PartitionRow(name, tuple(p.shape), group, rule))
        (muon_p if group == "muon" else adam_p).append(p)
        (muon_n if group == "muon" else adam_n).append(name)

    groups = []
    if muon_p:
        groups.append({"params": muon_p, "names": muon_n, "use_muon": True})
    if adam_p:
        groups.append({"params": adam_p, "names": adam_n, "use_muon": False})
    return Partition(groups=groups, rows=rows)


def muon_param_groups(model: nn.Module, **kwargs) -> list[dict]:
    """Param groups for :class:`muonft.optim.Muon`; see :func:`partition_parameters`."""
    return partition_parameters(model, **kwargs).groups
