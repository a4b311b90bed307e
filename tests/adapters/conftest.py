"""A small model with the muonft GPT's parameter names, independent of muonft.models."""

import pytest
import torch
from torch import nn


class Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))

    def forward(self, x):
        a = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / x.shape[-1] ** 0.5, -1)
        return self.o(a @ self.v(x))


class MLP(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.fc_in = nn.Linear(d, 4 * d, bias=False)
        self.fc_out = nn.Linear(4 * d, d, bias=False)

    def forward(self, x):
        return self.fc_out(torch.relu(self.fc_in(x)))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn, self.mlp = Attn(d), MLP(d)

    def forward(self, x):
        x = x + self.attn(x)
        return x + self.mlp(x)


class TinyNet(nn.Module):
    """embed → blocks.{i}.attn.{q,k,v,o}, blocks.{i}.mlp.{fc_in,fc_out} → head (GPT names)."""

    def __init__(self, vocab=50, d=16, n_layer=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n_layer))
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx):
        x = self.embed(idx)
        for b in self.blocks:
            x = b(x)
        return self.head(x)


@pytest.fixture
def tiny():
    def make(seed=0, **kw):
        torch.manual_seed(seed)
        return TinyNet(**kw)
    return make


@pytest.fixture
def tokens():
    return torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(1))
