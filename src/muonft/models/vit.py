"""A small Vision Transformer (ViT) in one file.

Images are cut into non-overlapping ``patch_size`` × ``patch_size`` patches, each flattened and
mapped by one linear layer (the patch embedding); a learned class token is prepended, learned
position embeddings are added, pre-norm transformer blocks (LayerNorm → multi-head attention,
LayerNorm → GELU MLP) follow, and the final LayerNorm of the class token feeds a linear head.
Parameter names (``docs/CONTRACTS.md``) say what each tensor is, so the Muon/AdamW partition
(:mod:`muonft.optim.partition`) and the per-layer-type diagnostics read them directly:

    patch_embed.{weight,bias}                 patch embedding        (AdamW)
    cls_token, pos_embed                      class / position emb.  (AdamW)
    blocks.{i}.norm{1,2}.{weight,bias}        LayerNorms             (AdamW)
    blocks.{i}.attn.{q,k,v,o}.weight          attention projections  (Muon)
    blocks.{i}.mlp.{fc_in,fc_out}.weight      MLP in / out           (Muon)
    blocks.{i}.*.bias                         biases                 (AdamW)
    norm.{weight,bias}, head.{weight,bias}    final norm, head       (AdamW)

That split is the study's CLIP rule: only the block matrices are Muon's.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ViTConfig:
    """Model size. ``image_size`` must be a multiple of ``patch_size`` and ``dim`` of
    ``n_head``."""

    image_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    dim: int = 64
    depth: int = 4
    n_head: int = 4
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for k in ("image_size", "patch_size", "in_chans", "num_classes", "dim", "depth",
                  "n_head", "mlp_ratio"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"ViTConfig.{k} must be a positive integer, got {v!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size "
                             f"{self.patch_size}")
        if self.dim % self.n_head:
            raise ValueError(f"dim {self.dim} does not split into {self.n_head} heads")

    @property
    def n_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ViTConfig] = {
    # 16 patches of 7×7 + a class token: a few ms per step on 2 CPU cores.
    "vit-tiny": ViTConfig(image_size=28, patch_size=7, dim=64, depth=4, n_head=4),
    # 64 patches of 4×4 at 32×32 (MNIST is resized): slower, for a GPU or patient CPU runs.
    "vit-small": ViTConfig(image_size=32, patch_size=4, dim=192, depth=6, n_head=3),
}


class Attention(nn.Module):
    """Bidirectional multi-head self-attention with separate q, k, v, o projections."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.q = nn.Linear(cfg.dim, cfg.dim)
        self.k = nn.Linear(cfg.dim, cfg.dim)
        self.v = nn.Linear(cfg.dim, cfg.dim)
        self.o = nn.Linear(cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
                   for lin in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.dim, cfg.mlp_ratio * cfg.dim)
        self.fc_out = nn.Linear(cfg.mlp_ratio * cfg.dim, cfg.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.dim)
        self.attn = Attention(cfg)
        self.norm2 = nn.LayerNorm(cfg.dim)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """Image classifier; ``forward(images, targets=None) -> (logits, loss)``.

    ``images``: float tensor (B, in_chans, image_size, image_size); a wrong shape raises a
    ``ValueError`` naming the expected and the given shape.
    """

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.patch_embed = nn.Linear(cfg.in_chans * cfg.patch_size ** 2, cfg.dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.n_patches + 1, cfg.dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_classes)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Block matrices uniform ±√3/√fan_in (unit-variance outputs; ``o`` and ``fc_out``
        0.1× smaller, as in :mod:`muonft.models.gpt`), class and position embeddings and the
        head N(0, 0.02²), biases 0, LayerNorms at identity."""
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
        for lin in (self.patch_embed, *(m for b in self.blocks
                                        for m in (b.attn.q, b.attn.k, b.attn.v, b.mlp.fc_in))):
            bound = math.sqrt(3.0 / lin.in_features)
            nn.init.uniform_(lin.weight, -bound, bound)
        for b in self.blocks:
            for lin in (b.attn.o, b.mlp.fc_out):
                bound = 0.1 * math.sqrt(3.0 / lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound)
        for p in (self.cls_token, self.pos_embed, self.head.weight):
            nn.init.normal_(p, std=0.02)

    def check_images(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` unless ``x`` is (B, in_chans, image_size, image_size)."""
        c, s = self.config.in_chans, self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"expected images of shape (B, {c}, {s}, {s}), got "
                             f"{tuple(x.shape)}; resize them to {s}x{s} (muonft.data.images "
                             f"does when given image_size={s}) or build the ViT with "
                             f"image_size={x.shape[-1] if x.ndim >= 2 else '?'}")

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, n_patches, C·p·p), patches in row-major order."""
        B, C, H, W = x.shape
        p = self.config.patch_size
        x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(B, (H // p) * (W // p), C * p * p)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The final-norm class-token features (B, dim)."""
        self.check_images(x)
        t = self.patch_embed(self.patches(x))
        t = torch.cat([self.cls_token.expand(t.shape[0], -1, -1), t], dim=1) + self.pos_embed
        for block in self.blocks:
            t = block(t)
        return self.norm(t[:, 0])

    def forward(self, x: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.head(self.features(x))
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def hidden_matrices(self) -> dict[str, torch.Tensor]:
        """The block matrices (what Muon trains), by name."""
        return {n: p for n, p in self.named_parameters()
                if n.startswith("blocks.") and p.ndim == 2}


def build_vit(name_or_config: str | ViTConfig | dict) -> ViT:
    """A ViT from a preset name (``vit-tiny``, ``vit-small``), a config or a dict."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown ViT {name_or_config!r}; choose one of "
                             f"{', '.join(PRESETS)}")
        cfg = PRESETS[name_or_config]
    elif isinstance(name_or_config, dict):
        cfg = ViTConfig(**name_or_config)
    else:
        cfg = name_or_config
    return ViT(cfg)
