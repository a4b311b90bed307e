"""Model source: Hugging Face text and image models (``minilm``, ``smollm2``,
``hf:<path-or-id>``; :mod:`muonft.models.hf`).

By task kind: ``classification`` loads an ``AutoModelForSequenceClassification`` with a new
classifier (drawn from the run's seed, kept trainable under LoRA) and measures forgetting with
sentence embeddings of general-English held-out sentences (:class:`EmbeddingProbe`); ``lm``
loads an ``AutoModelForCausalLM`` whose token streams use the model's own tokenizer and
measures forgetting as the held-out loss of a general-English corpus (KJV; RT when the task is
KJV itself); ``image`` loads an image classifier (ViT/CLIP vision tower, a new ten-class head,
:mod:`muonft.models.hf_vision`) with the feature-drift probe on MNIST. The pre-fine-tuning
measurements of the sha-pinned sources (``minilm``, ``smollm2``) are cached across runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from muonft.data import load_lm_splits
from muonft.data.classification import num_labels
from muonft.data.images import NUM_CLASSES, PRETRAIN_TASK, load_task
from muonft.data.tokens import Tokenizer
from muonft.errors import ConfigError
from muonft.models.hf import (
    MANIFEST,
    MODEL_SOURCES,
    is_hf_init,
    load_hf,
    model_dir,
    resolve_source,
)
from muonft.models.hf_vision import load_hf_image_classifier
from muonft.spec import RunSpec
from muonft.train.plugins import Loaded
from muonft.train.probes import EmbeddingProbe, ImageProbe, LMProbe

# The general-English corpus of the forgetting measures, and the one used when the task's
# corpus is that one.
GENERAL_CORPUS, GENERAL_FALLBACK = "kjv", "rt"
N_PROBE = 256  # held-out sentences for the embedding-drift probe
EVAL_WINDOWS = 8
DEFAULT_LR = {("adamw", "full"): 5e-5, ("muon", "full"): 5e-5,
              ("adamw", "lora"): 1e-3, ("muon", "lora"): 1e-3}
DEFAULTS: dict[str, dict[str, Any]] = {
    "classification": {"batch_size": 32, "block_size": 64, "warmup": 20},
    "lm": {"batch_size": 8, "block_size": 128, "warmup": 20},
    "image": {"steps": 150, "batch_size": 64, "lr": 1e-2},
}


def lm_tokenizer(hf_tok: Any, init: str) -> Tokenizer:
    """A :class:`muonft.data.Tokenizer` over an HF fast tokenizer, for cached token streams.

    Its cache key hashes the tokenizer definition, so streams of different models never mix;
    documents end with the model's EOS token.
    """
    backend = getattr(hf_tok, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(f"{init}: lm tasks need a fast (tokenizers-backed) tokenizer")
    if hf_tok.eos_token_id is None:
        raise ConfigError(f"{init}: the tokenizer has no EOS token to separate documents")
    if len(hf_tok) > 65535:
        raise ConfigError(f"{init}: vocabulary of {len(hf_tok)} does not fit the uint16 "
                          f"token streams")
    digest = hashlib.sha256(backend.to_str().encode()).hexdigest()[:12]
    name = re.sub(r"[^A-Za-z0-9]+", "-", init.removeprefix("hf:")).strip("-")[-40:]

    @dataclass
    class HFTokenizer(Tokenizer):
        eos: int = 0

        @property
        def eos_id(self) -> int:
            return self.eos

        @property
        def vocab_size(self) -> int:
            return len(hf_tok)

        def encode(self, text: str) -> list[int]:
            return list(self.inner.encode(text, add_special_tokens=False).ids)

        def encode_batch(self, texts: list[str]) -> list[list[int]]:
            return [e.ids for e in self.inner.encode_batch(texts, add_special_tokens=False)]

    return HFTokenizer(backend, f"hf-{name}-{digest}", eos=int(hf_tok.eos_token_id))


def causal_lm_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]
                   ) -> torch.Tensor:
    """Mean next-token cross-entropy of an HF causal LM on an (x, y = x shifted) batch."""
    x, y = batch
    logits = model(input_ids=x).logits
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))


def _identity(init: str) -> dict[str, Any] | None:
    """The manifest (files' sha256) of a sha-pinned source; ``None`` for ``hf:`` inits."""
    if init not in MODEL_SOURCES:
        return None
    try:
        return {"manifest": json.loads((model_dir(init) / MANIFEST).read_text())}
    except (OSError, ValueError):
        return None


class HFSource:
    name, tasks = "hf", ("classification", "lm", "image")
    forms = f"{', '.join(MODEL_SOURCES)} or hf:<path-or-hub-id>"
    distributed = False

    def claims(self, init: str) -> bool:
        return is_hf_init(init)

    def default_task(self, init: str) -> str:
        return "lm:rt" if init == "smollm2" else "rt-sentiment"

    def defaults(self, task_kind: str, optimizer: str, method: str) -> dict[str, Any]:
        return {"lr": DEFAULT_LR[(optimizer, method)], **DEFAULTS[task_kind]}

    def tokenizer(self, spec: RunSpec):
        from transformers import AutoTokenizer  # heavy: only HF runs pay for it

        ref, local = resolve_source(spec.init)
        return lm_tokenizer(AutoTokenizer.from_pretrained(ref, local_files_only=local),
                            spec.init)

    def load(self, spec: RunSpec, task_kind: str, block_size: int | None,
             device: torch.device) -> Loaded:
        if task_kind == "image":
            return self._image(spec, device)
        if spec.init == "minilm" and task_kind == "lm":
            raise ConfigError("task: minilm is an encoder (BERT); use rt-sentiment, or a "
                              "causal LM such as smollm2 for lm:<corpus>")
        if task_kind == "classification":
            model, tok = load_hf(spec.init, "seq-cls", num_labels=num_labels(spec.task))
        else:
            model, tok = load_hf(spec.init, "causal-lm")
        if tok is None:
            raise ConfigError(f"init: {spec.init} has no tokenizer; fine-tuning needs one")
        model = model.to(device)
        model.train()
        identity = _identity(spec.init)
        if task_kind == "classification":
            return Loaded(model, EmbeddingProbe(GENERAL_CORPUS, tok, N_PROBE), hf_tokenizer=tok,
                          train_head=True, new_head=True, identity=identity)
        ltok = lm_tokenizer(tok, spec.init)
        corpus = GENERAL_FALLBACK if spec.task[3:] == GENERAL_CORPUS else GENERAL_CORPUS
        probe = LMProbe(corpus, load_lm_splits(corpus, ltok).heldout, block_size, EVAL_WINDOWS,
                        spec.eval_batches, causal_lm_loss)
        return Loaded(model, probe, tokenizer=ltok, hf_tokenizer=tok, lm_loss=causal_lm_loss,
                      lm_eval_windows=EVAL_WINDOWS, train_head=True, identity=identity)

    def export(self, spec: RunSpec, model: torch.nn.Module, loaded: Loaded,
               directory: Path) -> None:
        """A ``save_pretrained`` directory (safetensors) with the tokenizer: loadable with the
        ``AutoModelFor*`` class of the task (``from_pretrained(directory)``)."""
        inner = getattr(model, "model", model)  # the HF image wrapper holds the HF model
        if not hasattr(inner, "save_pretrained"):
            raise ConfigError(f"init: {spec.init} is not a transformers model; nothing to export")
        inner.save_pretrained(directory, safe_serialization=True)
        if loaded.hf_tokenizer is not None:
            loaded.hf_tokenizer.save_pretrained(directory)

    def _image(self, spec: RunSpec, device: torch.device) -> Loaded:
        model = load_hf_image_classifier(spec.init, num_labels=NUM_CLASSES).to(device)
        size = model.input_size
        probe = ImageProbe(PRETRAIN_TASK, load_task(PRETRAIN_TASK, size).heldout, False)
        return Loaded(model, probe, image_size=size, train_head=True, new_head=True)


SOURCE = HFSource()
