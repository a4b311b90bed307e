"""LoRA and its PEFT variants on any ``nn.Module``, through PEFT's own layers.

``apply_lora(model, LoRASpec(...))`` injects adapters with ``peft.inject_adapter_in_model`` (it
works on plain modules such as our GPT as well as on HF models), freezes everything else and
returns the model. Variants map onto PEFT options: ``rslora`` (scaling α/√r), ``pissa`` (A, B
from the top-r SVD of W, base set to the residual), ``olora`` (QR-based init), ``dora``
(magnitude/direction split). Under Muon, each factor A (r×in) and B (out×r) is an ordinary
matrix: :func:`muonft.optim.muon_param_groups` puts them in the Muon group.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

VARIANTS = ("lora", "rslora", "pissa", "dora", "olora")
# Module-name endings of attention and MLP linears, per model family.
DEFAULT_TARGETS = (
    "q", "k", "v", "o", "fc_in", "fc_out",  # muonft GPT / ViT
    "query", "key", "value", "attention.output.dense", "intermediate.dense",  # BERT
    "q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "gate_proj", "up_proj", "down_proj",
    "fc1", "fc2", "c_attn", "c_proj", "c_fc", "wi", "wi_0", "wi_1", "wo",
)
_EXCLUDE = re.compile(r"(^|\.)(head|lm_head|classifier|score|embed\w*|pooler)(\.|$)")


@dataclass(frozen=True)
class LoRASpec:
    """Adapter settings: rank r, alpha α (scaling α/r, or α/√r for rsLoRA), dropout, target
    module-name endings (default: every attention and MLP linear) and the variant."""

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    variant: str = "lora"

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or self.rank <= 0:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank}")
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown LoRA variant {self.variant!r}; choose one of "
                             f"{', '.join(VARIANTS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")


def _linear_modules(model: nn.Module) -> dict[str, nn.Linear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def resolve_targets(model: nn.Module, spec: LoRASpec) -> list[str]:
    """Full names of the linear modules that get adapters; errors name what is available."""
    linears = _linear_modules(model)
    endings = spec.targets if spec.targets is not None else DEFAULT_TARGETS
    chosen: list[str] = []
    for end in endings:
        hits = [n for n in linears if (n == end or n.endswith("." + end))
                and (spec.targets is not None or not _EXCLUDE.search(n))]
        if not hits and spec.targets is not None:
            sample = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linears})[:12])
            raise ValueError(f"LoRA target {end!r} matches no linear module of the model; "
                             f"linear module names end in: {sample}")
        chosen += [h for h in hits if h not in chosen]
    if not chosen:
        raise ValueError("no linear module matches the default LoRA targets; pass targets=")
    for n in chosen:
        lin = linears[n]
        if spec.rank > min(lin.in_features, lin.out_features):
            raise ValueError(f"LoRA rank {spec.rank} exceeds min(in, out) = "
                             f"{min(lin.in_features, lin.out_features)} of {n}")
    return chosen


def apply_lora(model: nn.Module, spec: LoRASpec) -> nn.Module:
    """Inject LoRA adapters (in place), freeze every non-adapter parameter, return the model."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = resolve_targets(model, spec)
    init: bool | str = True
    if spec.variant in ("pissa", "olora"):
        init = spec.variant
    cfg = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=targets, use_rslora=spec.variant == "rslora",
        use_dora=spec.variant == "dora", init_lora_weights=init,
    )
    model = inject_adapter_in_model(cfg, model)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    return model


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT LoRA layers by module name."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_factors(model: nn.Module) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """(module name, A (r×in), B (out×r), scaling) of every default adapter."""
    out = []
    for n, layer in lora_layers(model).items():
        if "default" in layer.lora_A:
            out.append((n, layer.lora_A["default"].weight, layer.lora_B["default"].weight,
                        float(layer.scaling["default"])))
    return out


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight (W ← W + s·BA); reversible with unmerge_lora."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora`."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights of the model with adapters folded in, under the original (un-wrapped) names —
    a plain checkpoint loadable into a model without adapters."""
    merge_lora(model)
    try:
        out = {}
        for n, t in model.state_dict().items():
            if ".lora_" in n or "lora_magnitude_vector" in n:
                continue
            out[n.replace(".base_layer.", ".")] = t.detach().clone()
        return out
    finally:
        unmerge_lora(model)
