"""Spectral and drift metrics of weight matrices, batched by shape, grouped by layer type.

Definitions (the study's):

- stable rank  Σσᵢ² / σ₁²   (0 for a zero matrix)
- spectral entropy  −Σ pᵢ log pᵢ / log min(m, n),  pᵢ = σᵢ² / Σσⱼ²   (0 for a zero matrix; a
  1×n or m×1 matrix has entropy 0)
- spectral norm σ₁;  max-norm max|Wᵢⱼ|
- relative L2 drift ‖W − W₀‖_F / ‖W₀‖_F and cosine(W, W₀) of the flattened matrices.

Per group, spectral metrics are the mean over the group's matrices (as the study averages per
layer type); drift is computed from the group's summed squares, i.e. as if the group's matrices
were one concatenated vector, so large matrices weigh more.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch
from torch import Tensor

GROUPS = ("attn_q", "attn_k", "attn_v", "attn_o", "attn_qkv", "mlp_in", "mlp_out", "embedding",
          "head", "other")

# (pattern on the last module-name component(s), group); first match wins.
_GROUP_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(p), g) for p, g in [
        (r"(^|\.)(attn|attention|self_attn|self)\.(q|q_proj|query|wq)$", "attn_q"),
        (r"(^|\.)(q_proj|query)$", "attn_q"),
        (r"(^|\.)(attn|attention|self_attn|self)\.(k|k_proj|key|wk)$", "attn_k"),
        (r"(^|\.)(k_proj|key)$", "attn_k"),
        (r"(^|\.)(attn|attention|self_attn|self)\.(v|v_proj|value|wv)$", "attn_v"),
        (r"(^|\.)(v_proj|value)$", "attn_v"),
        (r"(^|\.)(attn|self_attn)\.(o|o_proj|out_proj|c_proj|wo)$", "attn_o"),
        (r"(^|\.)attention\.output\.dense$", "attn_o"),
        (r"(^|\.)(o_proj|out_proj)$", "attn_o"),
        (r"(^|\.)(c_attn|qkv|query_key_value|Wqkv)$", "attn_qkv"),
        (r"(^|\.)(mlp|ffn|feed_forward)\.(fc_in|fc1|c_fc|up_proj|gate_proj|w1|w3|wi\w*|"
         r"dense_h_to_4h)$", "mlp_in"),
        (r"(^|\.)(fc_in|fc1|up_proj|gate_proj|intermediate\.dense|wi\w*)$", "mlp_in"),
        (r"(^|\.)(mlp|ffn|feed_forward)\.(fc_out|fc2|c_proj|down_proj|w2|wo|dense_4h_to_h)$",
         "mlp_out"),
        (r"(^|\.)(fc_out|fc2|down_proj)$", "mlp_out"),
        (r"(^|\.)output\.dense$", "mlp_out"),
        (r"(^|\.)(DenseReluDense)\.wo$", "mlp_out"),
        (r"(^|\.)(embed|wte|wpe|word_embeddings|embed_tokens|position_embeddings|"
         r"token_type_embeddings|patch_embed\w*|patch_embedding|shared|embeddings)$",
         "embedding"),
        (r"(^|\.)(head|lm_head|classifier|score)$", "head"),
        (r"(^|\.)(classifier|head)\.\w+$", "head"),
    ]
]
_PEFT_NOISE = re.compile(r"\.(lora_[AB]|lora_embedding_[AB])(\.\w+)?$|\.base_layer$")


def module_path(param_name: str) -> str:
    """A parameter's owning module path with PEFT wrapping removed."""
    name = param_name
    for prefix in ("base_model.model.", "module.", "_orig_mod."):
        if name.startswith(prefix):
            name = name[len(prefix):]
    name = re.sub(r"\.(weight|bias)$", "", name)
    name = _PEFT_NOISE.sub("", name)
    name = re.sub(r"\.(base_layer)(?=\.|$)", "", name)
    return name


def layer_group(param_name: str) -> str:
    """The layer group of a parameter (one of :data:`GROUPS`): the one name → group mapping."""
    path = module_path(param_name)
    for pat, group in _GROUP_RULES:
        if pat.search(path):
            return group
    return "other"


def spectral_metrics(W: Tensor, dtype: torch.dtype = torch.float32) -> dict[str, Tensor]:
    """Stable rank, normalised spectral entropy, spectral norm and max-norm of each matrix.

    ``W`` has shape ``(..., m, n)``; one batched ``svdvals`` call; returns tensors of shape
    ``(...)``.
    """
    X = W.detach().to(dtype)
    s = torch.linalg.svdvals(X)
    s2 = s.square()
    total = s2.sum(-1)
    top = s2[..., 0]
    safe_top = torch.where(top > 0, top, torch.ones_like(top))
    stable = torch.where(top > 0, total / safe_top, torch.zeros_like(top))
    p = s2 / torch.where(total > 0, total, torch.ones_like(total)).unsqueeze(-1)
    ent = -(torch.where(p > 0, p * p.clamp_min(1e-38).log(), torch.zeros_like(p))).sum(-1)
    k = s.shape[-1]
    ent = ent / math.log(k) if k > 1 else torch.zeros_like(ent)
    return {"stable_rank": stable, "spectral_entropy": ent, "spectral_norm": s[..., 0],
            "max_norm": X.abs().amax(dim=(-2, -1))}


def _batched_metrics(mats: dict[str, Tensor]) -> dict[str, dict[str, float]]:
    """Spectral metrics per matrix, stacking same-shape matrices into one svdvals call."""
    by_shape: dict[tuple, list[str]] = defaultdict(list)
    for n, m in mats.items():
        by_shape[tuple(m.shape)].append(n)
    out: dict[str, dict[str, float]] = {}
    for names in by_shape.values():
        res = spectral_metrics(torch.stack([mats[n] for n in names]))
        vals = {k: v.tolist() for k, v in res.items()}
        for i, n in enumerate(names):
            out[n] = {k: float(v[i]) for k, v in vals.items()}
    return out


def _as_matrix(t: Tensor) -> Tensor:
    return t if t.ndim == 2 else t.reshape(t.shape[0], -1)


def weight_diagnostics(
    now: dict[str, Tensor], init: dict[str, Tensor] | None = None, *, update: bool = False
) -> dict[str, dict[str, float]]:
    """Per-group spectral metrics (and drift when ``init`` is given) of ≥2-D parameters.

    With ``update=True`` the spectral metrics are those of ΔW = W − W₀ instead of W.
    Groups come from :func:`layer_group`; an ``overall`` entry aggregates every matrix.
    """
    mats = {n: _as_matrix(t.detach().float()) for n, t in now.items() if t.ndim >= 2}
    if update:
        if init is None:
            raise ValueError("update=True needs the initial weights")
        mats = {n: m - _as_matrix(init[n].detach().float()) for n, m in mats.items()}
    per = _batched_metrics(mats)
    groups: dict[str, list[str]] = defaultdict(list)
    for n in mats:
        groups[layer_group(n)].append(n)
    groups["overall"] = list(mats)
    out: dict[str, dict[str, float]] = {}
    for g, names in groups.items():
        if not names:
            continue
        row = {k: sum(per[n][k] for n in names) / len(names) for k in
               ("stable_rank", "spectral_entropy", "spectral_norm", "max_norm")}
        if init is not None:
            row |= drift(names, now, init)
        out[g] = row
    return out


def drift(names: list[str], now: dict[str, Tensor], init: dict[str, Tensor]) -> dict[str, float]:
    """Relative L2 drift and cosine to init over the concatenation of ``names``."""
    diff2 = dot = a2 = b2 = 0.0
    for n in names:
        w, w0 = now[n].detach().double().reshape(-1), init[n].detach().double().reshape(-1)
        diff2 += float((w - w0).square().sum())
        dot += float(w @ w0)
        a2 += float(w @ w)
        b2 += float(w0 @ w0)
    l2 = math.sqrt(diff2 / b2) if b2 > 0 else (0.0 if diff2 == 0 else math.inf)
    cos = dot / math.sqrt(a2 * b2) if a2 > 0 and b2 > 0 else float("nan")
    return {"l2_drift": l2, "cosine_to_init": cos}
