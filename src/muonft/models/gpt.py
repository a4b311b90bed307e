"""A nanochat-style GPT decoder in one file.

Rotary position embeddings, RMSNorm without learnable weight, QK-norm, ReLU² MLP, untied token
embedding and output head, no biases. Parameter names say what each matrix is, so the
Muon/AdamW partition and the per-layer-type diagnostics read them directly:

    embed.weight                          token embedding        (AdamW)
    blocks.{i}.attn.{q,k,v,o}.weight      attention projections  (Muon)
    blocks.{i}.mlp.{fc_in,fc_out}.weight  MLP in / out           (Muon)
    head.weight                           output head            (AdamW)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPTConfig:
    """Model size. ``n_embd`` must be divisible by ``n_head`` with an even head dimension."""

    vocab_size: int = 4096
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        for k in ("vocab_size", "n_layer", "n_head", "n_embd", "block_size", "mlp_ratio"):
            if getattr(self, k) < 1:
                raise ValueError(f"GPTConfig.{k} must be >= 1, got {getattr(self, k)}")
        if self.n_embd % self.n_head or (self.n_embd // self.n_head) % 2:
            raise ValueError(f"n_embd={self.n_embd} must split into {self.n_head} heads of even "
                             f"size")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, GPTConfig] = {
    "tiny": GPTConfig(n_layer=4, n_head=4, n_embd=128, block_size=128),
    "small": GPTConfig(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "d12": GPTConfig(vocab_size=65536, n_layer=12, n_head=6, n_embd=768, block_size=2048),
    "d20": GPTConfig(vocab_size=65536, n_layer=20, n_head=10, n_embd=1280, block_size=2048),
}


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary_tables(block_size: int, head_dim: int, base: float = 10000.0):
    """cos/sin tables of shape (1, T, 1, head_dim/2) for rotary embeddings."""
    inv = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    t = torch.arange(block_size, dtype=torch.float32)
    freqs = torch.outer(t, inv)
    return freqs.cos()[None, :, None, :], freqs.sin()[None, :, None, :]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * cos + x2 * sin, x2 * cos - x1 * sin], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head = cfg.n_head
        self.head_dim = cfg.n_embd // cfg.n_head
        self.q = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.k = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.v = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.o = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim)
        k = self.k(x).view(B, T, self.n_head, self.head_dim)
        v = self.v(x).view(B, T, self.n_head, self.head_dim)
        q, k = rms_norm(apply_rotary(q, cos, sin)), rms_norm(apply_rotary(k, cos, sin))
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                           v.transpose(1, 2), is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.n_embd, cfg.mlp_ratio * cfg.n_embd, bias=False)
        self.fc_out = nn.Linear(cfg.mlp_ratio * cfg.n_embd, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.relu(self.fc_in(x)).square())


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(rms_norm(x), cos, sin)
        return x + self.mlp(rms_norm(x))


class GPT(nn.Module):
    """Decoder-only transformer; ``forward(idx, targets=None) -> (logits, loss)``."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        cos, sin = rotary_tables(cfg.block_size, cfg.n_embd // cfg.n_head)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """nanochat-like init: unit-variance embedding, uniform ±√3/√fan_in hidden matrices,
        small output projections (0.1×) and head (std 1e-3).

        nanochat zero-inits ``o``, ``fc_out`` and the head; we keep them small but non-zero so
        that every matrix gets a gradient from the first step (behind a zero ``o`` the
        gradients of q, k, v are exactly zero at step 0), which keeps the first Muon and AdamW
        steps comparable; the study's pretrained models are not zero-init either."""
        nn.init.normal_(self.embed.weight, std=1.0)
        for block in self.blocks:
            for lin in (block.attn.q, block.attn.k, block.attn.v, block.mlp.fc_in):
                bound = math.sqrt(3.0 / lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound)
            for lin in (block.attn.o, block.mlp.fc_out):
                bound = 0.1 * math.sqrt(3.0 / lin.in_features)
                nn.init.uniform_(lin.weight, -bound, bound)
        nn.init.normal_(self.head.weight, std=0.001)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        T = idx.shape[1]
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        x = rms_norm(self.embed(idx))
        cos, sin = self.cos[:, :T], self.sin[:, :T]
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.head(rms_norm(x)).float()
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def hidden_matrices(self) -> dict[str, torch.Tensor]:
        """The block matrices (what Muon trains), by name."""
        return {n: p for n, p in self.named_parameters() if n.startswith("blocks.")}


def build_gpt(name_or_config: str | GPTConfig | dict, vocab_size: int | None = None) -> GPT:
    """A GPT from a preset name (``tiny``, ``small``, ``d12``, ``d20``), a config or a dict."""
    if isinstance(name_or_config, str):
        if name_or_config not in PRESETS:
            raise ValueError(f"unknown model {name_or_config!r}; choose one of "
                             f"{', '.join(PRESETS)}")
        cfg = PRESETS[name_or_config]
    elif isinstance(name_or_config, dict):
        cfg = GPTConfig(**name_or_config)
    else:
        cfg = name_or_config
    if vocab_size is not None and vocab_size != cfg.vocab_size:
        cfg = GPTConfig(**{**cfg.to_dict(), "vocab_size": vocab_size})
    return GPT(cfg)
