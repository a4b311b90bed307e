"""LoRA and its variants on any ``nn.Module``, through PEFT's own layers.

``apply_lora(model, LoRASpec(...))`` resolves the target linears, injects PEFT LoRA layers with
``peft.inject_adapter_in_model`` and freezes everything else. We inject rather than call
``peft.get_peft_model`` (which also works on a plain module in PEFT 0.21) because injection
keeps the model's own class, ``forward`` and parameter names — only ``.base_layer`` /
``.lora_A.default`` / ``.lora_B.default`` are inserted — so the training loop, checkpoints, the
Muon/AdamW partition and the diagnostics need no PEFT wrapper. The helpers here also accept a
``PeftModel`` (names prefixed ``base_model.model.``).

Variants map onto PEFT options; one (LoRA-One) is ours:

- ``lora``: A Kaiming-uniform, B = 0, scaling s = α/r;
- ``rslora``: as ``lora`` with s = α/√r (``use_rslora``);
- ``pissa``: A, B from the top-r SVD of W, the base set to the residual, so base + s·BA = W₀
  (``init_lora_weights="pissa"``; the randomized ``"pissa_niter_16"`` when a target has
  min(out, in) ≥ 2048);
- ``dora``: magnitude/direction split (``use_dora``), B = 0 so the output is unchanged;
- ``olora``: A, B from a QR of W, base set to the residual (``init_lora_weights="olora"``);
- ``lora_one``: see :func:`lora_one_init`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from muonft.errors import ConfigError
from muonft.models.naming import layer_group

VARIANTS = ("lora", "rslora", "pissa", "dora", "olora", "lora_one")
ADAPTED_GROUPS = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv", "mlp_in", "mlp_out")
PISSA_FAST_MIN_DIM = 2048
GradFn = Callable[[nn.Module], None]


@dataclass(frozen=True)
class LoRASpec:
    """Adapter settings.

    ``rank`` r ≥ 1; ``alpha`` α (scaling α/r, or α/√r for ``rslora`` and ``lora_one``);
    ``dropout`` on the adapter input; ``targets``: module-name endings such as ``"attn.q"`` or
    ``"q_proj"`` (default ``None``: every attention and MLP linear, as named by
    :func:`muonft.diagnostics.layer_group` — never heads, classifiers or embeddings);
    ``variant`` one of :data:`VARIANTS`; ``gamma``: LoRA-One's γ (the study's default 64);
    ``preserve_output``: LoRA-One only — subtract s·B₀A₀ from the frozen weight so the model's
    output at step 0 is the pretrained one (the study's runs do not, i.e. ``False``).
    """

    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] | None = None
    variant: str = "lora"
    gamma: float = 64.0
    preserve_output: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank <= 0:
            raise ConfigError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown LoRA variant {self.variant!r}; choose one of "
                              f"{', '.join(VARIANTS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.alpha > 0:
            raise ConfigError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not self.gamma > 0:
            raise ConfigError(f"LoRA-One gamma must be > 0, got {self.gamma}")
        if isinstance(self.targets, str):  # a bare string would be iterated letter by letter
            object.__setattr__(self, "targets", (self.targets,))
        elif self.targets is not None:  # lists from YAML/JSON: keep the spec hashable
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.targets is not None and not self.targets:
            raise ConfigError("LoRA targets must name at least one module (or be None for "
                              "the default attention and MLP linears)")

    @property
    def scaling(self) -> float:
        """The adapter scaling s applied to BA: α/√r for rsLoRA and LoRA-One, else α/r."""
        rsl = self.variant in ("rslora", "lora_one")
        return self.alpha / (math.sqrt(self.rank) if rsl else self.rank)


def _is_linear(module: nn.Module) -> bool:
    # HF GPT-2's Conv1D is a linear layer with a transposed (in, out) weight; PEFT handles it
    # with fan_in_fan_out. Matched by class name so transformers is not imported here.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _linear_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if _is_linear(m) and n}


def _dims(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a linear or Conv1D."""
    w = module.weight
    return (w.shape[1], w.shape[0]) if type(module).__name__ == "Conv1D" else tuple(w.shape)


def resolve_targets(model: nn.Module, spec: LoRASpec) -> list[str]:
    """Full names of the linear modules that get adapters, validated against ``spec.rank``.

    Raises :class:`~muonft.errors.ConfigError` for a target ending that matches no linear
    module (naming the endings that exist), or a rank above min(out, in) of a target.
    """
    if lora_layers(model):
        raise ConfigError("model already has LoRA adapters; apply_lora to the plain model")
    linears = _linear_modules(model)
    if spec.targets is None:
        chosen = [n for n in linears if layer_group(n) in ADAPTED_GROUPS]
        if not chosen:
            raise ConfigError("no attention or MLP linear found for the default LoRA targets; "
                              "name them with targets=(...)")
    else:
        chosen = []
        for end in spec.targets:
            hits = [n for n in linears if n == end or n.endswith("." + end)]
            if not hits:
                sample = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linears})[:16])
                raise ConfigError(f"LoRA target {end!r} matches no linear module of the model; "
                                  f"linear module names end in: {sample}")
            chosen += [h for h in hits if h not in chosen]
    for n in chosen:
        out_f, in_f = _dims(linears[n])
        if spec.rank > min(out_f, in_f):
            raise ConfigError(f"LoRA rank {spec.rank} exceeds min(in, out) = {min(out_f, in_f)} "
                              f"of {n} ({out_f}x{in_f}); use rank <= {min(out_f, in_f)}")
    return chosen


def _peft_config(model: nn.Module, spec: LoRASpec, targets: list[str]):
    from peft import LoraConfig

    linears = _linear_modules(model)
    init: bool | str = True
    if spec.variant == "olora":
        init = "olora"
    elif spec.variant == "pissa":
        big = max(min(_dims(linears[n])) for n in targets) >= PISSA_FAST_MIN_DIM
        init = "pissa_niter_16" if big else "pissa"
    conv1d = any(type(linears[n]).__name__ == "Conv1D" for n in targets)
    return LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
        target_modules=targets, use_rslora=spec.variant in ("rslora", "lora_one"),
        use_dora=spec.variant == "dora", init_lora_weights=init, fan_in_fan_out=conv1d,
    )


def apply_lora(model: nn.Module, spec: LoRASpec | None = None, *,
               grad_fn: GradFn | None = None) -> nn.Module:
    """Inject LoRA adapters (in place), freeze every non-adapter parameter, return the model.

    ``grad_fn(model)`` is needed by ``variant="lora_one"`` only: it must run a few batches
    through the (still plain) model and call ``backward`` on each loss; see
    :func:`lora_one_init`.
    """
    from peft import inject_adapter_in_model

    spec = spec or LoRASpec()
    if spec.variant == "lora_one" and grad_fn is None:
        raise ConfigError("LoRA variant 'lora_one' needs grad_fn=, a closure that runs a few "
                          "batches through the model and calls backward")
    if spec.variant != "lora_one" and grad_fn is not None:
        raise ConfigError(f"grad_fn is only used by variant 'lora_one', got variant "
                          f"{spec.variant!r}")
    targets = resolve_targets(model, spec)
    grads = _full_gradients(model, targets, grad_fn) if grad_fn is not None else None
    model = inject_adapter_in_model(_peft_config(model, spec, targets), model)
    for n, p in model.named_parameters():
        p.requires_grad_(".lora_" in n)
    if grads is not None:
        lora_one_init(model, grads, spec)
    return model


def _full_gradients(model: nn.Module, targets: list[str], grad_fn: GradFn
                    ) -> dict[str, torch.Tensor]:
    """Gradients of the targets' weights (out×in) accumulated by ``grad_fn(model)``.

    Only the target weights require grad meanwhile (so backward does no other weight work);
    every flag and ``.grad`` is restored afterwards.
    """
    linears = _linear_modules(model)
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    saved = [p.grad for p in params]
    weights = {n: linears[n].weight for n in targets}
    try:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
        for w in weights.values():
            w.requires_grad_(True)
        grad_fn(model)
        out = {}
        for n, w in weights.items():
            if w.grad is None:
                raise ConfigError(f"LoRA-One: grad_fn produced no gradient for {n}; it must "
                                  f"call backward on a loss that depends on every target")
            g = w.grad.detach().float()
            out[n] = g.T if type(linears[n]).__name__ == "Conv1D" else g
        return out
    finally:
        for p, f, g in zip(params, flags, saved):
            p.requires_grad_(f)
            p.grad = g


def top_singular_triplets(G: torch.Tensor, r: int, exact_max_dim: int = 2048
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U_r, S_r, V_rᵀ) of the top-r SVD of G: exact ``torch.linalg.svd`` when
    min(G.shape) ≤ ``exact_max_dim``, else randomized ``torch.svd_lowrank`` (q = 4r, 4 power
    iterations)."""
    if min(G.shape) <= exact_max_dim:
        U, S, Vh = torch.linalg.svd(G, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r]
    U, S, V = torch.svd_lowrank(G, q=min(4 * r, min(G.shape)), niter=4)
    return U[:, :r], S[:r], V[:, :r].T


@torch.no_grad()
def lora_one_init(model: nn.Module, grads: dict[str, torch.Tensor], spec: LoRASpec) -> None:
    """LoRA-One initialisation (Zhang, Liu & Chen 2025, "LoRA-One: One-Step Full Gradient
    Could Suffice for Fine-Tuning LLMs, Provably and Efficiently"), as the study runs it.

    For each target with full gradient ∇W (from ``grad_fn``, summed or averaged over a few
    batches — the result does not depend on which) let −∇W = U S Vᵀ. Then

        B₀ = U_r S_r^{1/2} / √(σ₁γ),   A₀ = S_r^{1/2} V_rᵀ / √(σ₁γ),
        so  B₀A₀ = [−∇W]_r / (σ₁γ)   (top-r part, spectral norm 1/γ),

    with σ₁ the top singular value and γ = ``spec.gamma``; the scaling is rsLoRA's s = α/√r.
    By default the frozen weight is kept (the study's ``skip_merge``), so the model at step 0
    is W₀ + s·B₀A₀: one normalised, rank-r gradient-descent step of size s/γ.
    ``spec.preserve_output=True`` instead sets W_base ← W₀ − s·B₀A₀ so the step-0 output is
    the pretrained model's.
    """
    layers = lora_layers(model)
    for name, layer in layers.items():
        key = _strip_peft_prefix(name)
        if key not in grads:
            continue
        G = -grads[key]
        U, S, Vh = top_singular_triplets(G, spec.rank)
        if not S[0] > 0:
            raise ConfigError(f"LoRA-One: the gradient of {key} is zero; grad_fn must "
                              f"backpropagate a loss that depends on it")
        norm = math.sqrt(float(S[0]) * spec.gamma)
        root = S.sqrt()
        B0, A0 = U * root / norm, root[:, None] * Vh / norm
        A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        A.copy_(A0.to(A.dtype))
        B.copy_(B0.to(B.dtype))
        if spec.preserve_output:
            base = layer.get_base_layer().weight
            delta = layer.scaling["default"] * (B0 @ A0)
            base.sub_((delta.T if getattr(layer, "fan_in_fan_out", False) else delta)
                      .to(base.dtype))


def _strip_peft_prefix(name: str) -> str:
    return name[len("base_model.model."):] if name.startswith("base_model.model.") else name


def lora_layers(model: nn.Module) -> dict[str, nn.Module]:
    """PEFT LoRA layers of ``model`` by module name."""
    from peft.tuners.lora import LoraLayer

    return {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_factors(model: nn.Module, adapter: str = "default"
                 ) -> list[tuple[str, torch.Tensor, torch.Tensor, float]]:
    """``(module name, A (r×in), B (out×r), scaling s)`` of every adapter named ``adapter``;
    the adapter's contribution to the module's weight is s·BA (transposed for Conv1D)."""
    out = []
    for n, layer in lora_layers(model).items():
        if adapter in layer.lora_A:
            out.append((n, layer.lora_A[adapter].weight, layer.lora_B[adapter].weight,
                        float(layer.scaling[adapter])))
    return out


def lora_pairs(model: nn.Module, adapter: str = "default"
               ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``(A, B)`` weight pairs of every adapter named ``adapter``, for
    ``Muon(..., lora_muon="joint", lora_pairs=lora_pairs(model))`` (the optimizer needs to know
    which A goes with which B and imports no model code)."""
    return [(A, B) for _, A, B, _ in lora_factors(model, adapter)]


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters that require grad (after :func:`apply_lora`: the factors, and
    DoRA's magnitude vectors)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its base weight in place (W ← W + s·BA); undo with
    :func:`unmerge_lora`. The adapters stay attached (PEFT's ``merge``)."""
    for layer in lora_layers(model).values():
        if not layer.merged:
            layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """Undo :func:`merge_lora` (W ← W − s·BA), restoring the frozen weights up to rounding."""
    for layer in lora_layers(model).values():
        if layer.merged:
            layer.unmerge()


def merge_and_unload(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A plain module with every adapter folded in and the PEFT layers replaced by their base
    layers — same class and parameter names as before :func:`apply_lora`. Works on a copy
    unless ``inplace``; every parameter of the result requires grad again (a fresh module's
    default). A ``PeftModel`` goes through its own ``merge_and_unload``."""
    from peft import PeftModel

    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, PeftModel):
        return target.merge_and_unload()
    for name, layer in lora_layers(target).items():
        if not layer.merged:
            layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = target.get_submodule(parent_name) if parent_name else target
        setattr(parent, child, layer.get_base_layer())
    for p in target.parameters():
        p.requires_grad_(True)
    return target


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Weights with adapters folded in, under the original (un-wrapped) names — a plain
    checkpoint loadable into the model without adapters. ``model`` is left unmerged."""
    merge_lora(model)
    try:
        out = {}
        for n, t in model.state_dict().items():
            if ".lora_" in n:
                continue
            out[_strip_peft_prefix(n).replace(".base_layer.", ".")] = t.detach().clone()
        return out
    finally:
        unmerge_lora(model)
