"""Forgetting probes: what fine-tuning did to the model on its pretraining domain.

A probe measures ``before`` fine-tuning (cacheable: floats and tensors by name) and turns
``after`` into the record's metrics; every probe gives ``forgetting`` (higher = more forgotten):

- :class:`LMProbe` — held-out loss of a corpus after − before (``pretrain_loss_before/after``,
  ``pretrain_ppl_before/after``, ``forgetting_corpus``): the pretraining corpus of our GPT, a
  general-English corpus for HF causal LMs;
- :class:`EmbeddingProbe` — 1 − mean cosine of mean-pooled sentence embeddings after vs before
  (``embedding_cosine``, ``similarity_corr`` = correlation of the pairwise similarity
  structure), for encoders;
- :class:`ImageProbe` — on the pretraining image task: loss after − before when the head is
  pretrained, else the class-token feature drift (``forgetting_name`` says which), with
  accuracies and ``feature_drift``.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from muonft.data import split_documents
from muonft.data.images import eval_batches as image_batches
from muonft.train.baselines import array_digest
from muonft.train.loop import default_loss
from muonft.train.tasks import IMAGE_EVAL_BATCH, eval_mode, image_metrics, lm_windows_loss

EMBED_BATCH = 64


class LMProbe:
    """Mean token loss on consecutive windows of ``tokens`` (a corpus's held-out split)."""

    def __init__(self, corpus: str, tokens: np.ndarray, block_size: int, windows: int,
                 max_batches: int, loss) -> None:
        self.corpus, self.tokens, self.loss = corpus, tokens, loss or default_loss
        self.block_size, self.windows, self.max_batches = block_size, windows, max_batches
        self.key = {"probe": "lm", "data": array_digest(tokens), "block_size": block_size,
                    "windows": windows, "batches": max_batches}

    def _measure(self, model: nn.Module) -> dict[str, float]:
        with eval_mode(model):
            return {"loss": lm_windows_loss(model, self.tokens, self.block_size, self.windows,
                                            self.max_batches, self.loss)}

    def before(self, model: nn.Module) -> dict[str, Any]:
        return {"pretrain_before": self._measure(model)["loss"]}

    def after(self, model: nn.Module, before: dict[str, Any]) -> dict[str, Any]:
        b, a = before["pretrain_before"], self._measure(model)["loss"]
        return {"forgetting": a - b, "pretrain_loss_before": b, "pretrain_loss_after": a,
                "pretrain_ppl_before": math.exp(b), "pretrain_ppl_after": math.exp(a),
                "forgetting_corpus": self.corpus}


def probe_sentences(corpus: str, n: int) -> list[str]:
    """The first ``n`` sentences (5 to 40 words) of the held-out documents of ``corpus``:
    text outside the fine-tuning domain, the same for every run."""
    out: list[str] = []
    for doc in split_documents(corpus, "heldout"):
        for s in re.split(r"(?<=[.;:?!])\s+", doc.text):
            if 5 <= len(s.split()) <= 40:
                out.append(s)
                if len(out) == n:
                    return out
    return out


@torch.no_grad()
def sentence_embeddings(encoder: nn.Module, tok: Any, sentences: list[str],
                        max_len: int = 64) -> torch.Tensor:
    """Unit-norm mean-pooled last hidden states (the sentence-transformers recipe), (N, d)."""
    was_training = encoder.training
    encoder.eval()
    dev = next(encoder.parameters()).device
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))  # less padding
    embs = []
    for i in range(0, len(order), EMBED_BATCH):
        enc = tok([sentences[j] for j in order[i:i + EMBED_BATCH]], padding=True,
                  truncation=True, max_length=max_len, return_tensors="pt").to(dev)
        h = encoder(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                    ).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
        embs.append(F.normalize((h * m).sum(1) / m.sum(1).clamp(min=1), dim=-1).cpu())
    encoder.train(was_training)
    out = torch.empty(len(order), embs[0].shape[1]) if embs else torch.empty(0)
    if embs:
        out[torch.as_tensor(order)] = torch.cat(embs)
    return out


def embedding_drift(before: torch.Tensor, after: torch.Tensor) -> dict[str, float]:
    """``embedding_cosine`` = mean cosine of each row after vs before; ``forgetting`` = 1 −
    that; ``similarity_corr`` = Pearson correlation of the off-diagonal pairwise cosine
    similarities before vs after."""
    cos = (F.normalize(before, dim=-1) * F.normalize(after, dim=-1)).sum(-1)
    iu = torch.triu_indices(len(before), len(before), offset=1)
    s0 = (before @ before.T)[iu[0], iu[1]]
    s1 = (after @ after.T)[iu[0], iu[1]]
    corr = float(torch.corrcoef(torch.stack([s0, s1]))[0, 1]) if len(s0) > 1 else float("nan")
    return {"embedding_cosine": float(cos.mean()), "forgetting": 1.0 - float(cos.mean()),
            "similarity_corr": corr}


class EmbeddingProbe:
    """Sentence embeddings of an encoder (``model.base_model``) on ``n`` held-out sentences
    of ``corpus``."""

    def __init__(self, corpus: str, tokenizer: Any, n: int) -> None:
        self.corpus, self.tokenizer = corpus, tokenizer
        self.sentences = probe_sentences(corpus, n)
        self.key = {"probe": "embedding", "corpus": corpus, "n": n,
                    "text": array_digest(np.frombuffer("\n".join(self.sentences).encode(),
                                                       dtype=np.uint8))}

    def before(self, model: nn.Module) -> dict[str, Any]:
        return {"emb_before": sentence_embeddings(model.base_model, self.tokenizer,
                                                  self.sentences)}

    def after(self, model: nn.Module, before: dict[str, Any]) -> dict[str, Any]:
        after = sentence_embeddings(model.base_model, self.tokenizer, self.sentences)
        return {**embedding_drift(before["emb_before"], after),
                "forgetting_probe": f"{self.corpus} heldout, {len(self.sentences)} sentences"}


class ImageProbe:
    """The pretraining image task's held-out split: loss, accuracy and class-token
    features before vs after."""

    def __init__(self, task: str, split, head_pretrained: bool) -> None:
        self.task, self.split, self.head_pretrained = task, split, head_pretrained
        self.key = {"probe": "image", "task": task, "data": array_digest(split.x, split.y),
                    "head_pretrained": head_pretrained}

    def _measure(self, model: nn.Module) -> dict[str, Any]:
        dev = next(model.parameters()).device
        with eval_mode(model):
            m = image_metrics(model, self.split, None)
            feats = torch.cat([model.features(x.to(dev)).float().cpu()
                               for x, _ in image_batches(self.split, IMAGE_EVAL_BATCH)])
        return {"loss": m["loss"], "acc": m["accuracy"], "feats": feats}

    def before(self, model: nn.Module) -> dict[str, Any]:
        m = self._measure(model)
        return {"pre_loss": m["loss"], "pre_acc": m["acc"], "feats_before": m["feats"]}

    def after(self, model: nn.Module, before: dict[str, Any]) -> dict[str, Any]:
        m = self._measure(model)
        drift = embedding_drift(before["feats_before"], m["feats"])
        out = {"pretrain_loss_before": before["pre_loss"], "pretrain_loss_after": m["loss"],
               "pretrain_acc_before": before["pre_acc"], "pretrain_acc_after": m["acc"],
               "forgetting_acc": before["pre_acc"] - m["acc"],
               "feature_drift": drift["forgetting"],
               "feature_similarity_corr": drift["similarity_corr"]}
        if self.head_pretrained:
            out["forgetting"] = m["loss"] - before["pre_loss"]
            out["forgetting_name"] = f"{self.task} heldout loss after - before"
        else:
            out["forgetting"] = drift["forgetting"]
            out["forgetting_name"] = f"{self.task} heldout feature drift (1 - cosine)"
        return out
