"""Tokenizer, cached token streams and deterministic batching for language modelling.

- :func:`get_tokenizer`: a byte-level BPE (HF ``tokenizers``) trained on the KJV train split,
  cached as JSON under ``$MUONFT_CACHE/tokenizers``. Documents are joined with ``<|eos|>``.
- :func:`load_lm_splits`: each split of a corpus as a 1-D ``np.memmap`` of uint16 ids, cached
  under ``$MUONFT_CACHE/tokens`` (key: corpus, split, tokenizer hash).
- :class:`LMBatcher`: batch ``step`` is a pure function of (seed, step), so resuming a run at
  step k sees exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from muonft.atomic import atomic_write, atomic_write_text, sha256_file
from muonft.data.corpora import cache_dir, corpus_cache_key, split_documents
from muonft.errors import MuonftError

EOS = "<|eos|>"
TOKENIZER_VERSION = 1


@dataclass
class Tokenizer:
    """A thin wrapper around a ``tokenizers.Tokenizer`` with the ids muonft needs."""

    inner: object
    key: str

    @property
    def vocab_size(self) -> int:
        return int(self.inner.get_vocab_size())

    @property
    def eos_id(self) -> int:
        return int(self.inner.token_to_id(EOS))

    def encode(self, text: str) -> list[int]:
        return list(self.inner.encode(text).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.inner.encode_batch(texts)]

    def decode(self, ids: list[int]) -> str:
        return str(self.inner.decode(list(ids)))


def _train_tokenizer(texts: list[str], vocab_size: int):
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def get_tokenizer(vocab_size: int = 4096, corpus: str = "kjv") -> Tokenizer:
    """The byte-level BPE trained on ``corpus``'s train split (cached; deterministic)."""
    if not 260 <= vocab_size <= 65535:
        raise ValueError(f"vocab_size must be in [260, 65535], got {vocab_size}")
    path = (cache_dir() / "tokenizers" /
            f"bpe-{corpus_cache_key(corpus)}-{vocab_size}-v{TOKENIZER_VERSION}.json")
    if not path.exists():
        docs = split_documents(corpus, "train")
        tok = _train_tokenizer([d.text for d in docs], vocab_size)
        atomic_write_text(path, tok.to_str())
    text = path.read_text()
    key = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Tokenizer(HFTokenizer.from_str(text), key)


@dataclass
class LMSplits:
    """Token streams of one corpus: ``train``, ``val``, ``heldout`` (1-D uint16 memmaps)."""

    train: np.ndarray
    val: np.ndarray
    heldout: np.ndarray


def _token_file(corpus: str, split: str, tok: Tokenizer) -> Path:
    return cache_dir() / "tokens" / f"{corpus_cache_key(corpus)}-{split}-{tok.key}.u16"


def load_tokens(corpus: str, split: str, tok: Tokenizer) -> np.ndarray:
    """One split of ``corpus`` as a uint16 memmap (built and cached on first use).

    The cache records its sha256 beside it (``<file>.sha256``, written after the tokens) and is
    checked on every load: a truncated, edited or unverifiable token file is rebuilt from the
    (checksummed) corpus instead of feeding wrong windows to a run."""
    path = _token_file(corpus, split, tok)
    digest = path.with_name(path.name + ".sha256")
    if not (path.exists() and digest.exists() and
            digest.read_text().strip() == sha256_file(path)):
        docs = split_documents(corpus, split)
        if not docs:
            raise MuonftError(f"split {split!r} of corpus {corpus!r} has no documents")
        # encode_batch runs on all cores inside `tokenizers`; each document ends with EOS.
        ids = tok.encode_batch([d.text for d in docs])
        eos = tok.eos_id
        flat = np.concatenate([np.array([*doc, eos], dtype=np.uint16) for doc in ids])
        atomic_write(path, lambda f: f.write(flat.tobytes()), mode="wb")
        atomic_write_text(digest, hashlib.sha256(flat.tobytes()).hexdigest())
    return np.memmap(path, dtype=np.uint16, mode="r")


def load_lm_splits(corpus: str, tok: Tokenizer) -> LMSplits:
    """All three splits of ``corpus`` tokenized with ``tok``."""
    return LMSplits(*(load_tokens(corpus, s, tok) for s in ("train", "val", "heldout")))


class LMBatcher:
    """Random (B, T) windows of a token stream; batch ``step`` depends only on (seed, step)."""

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0):
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, "
                             f"{batch_size}")
        if len(tokens) < block_size + 2:
            raise ValueError(f"token stream of length {len(tokens)} is shorter than "
                             f"block_size + 2 = {block_size + 2}")
        self.tokens, self.block_size, self.batch_size, self.seed = (
            tokens, block_size, batch_size, seed)

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs x and next-token targets y, each (batch_size, block_size) int64."""
        rng = np.random.default_rng([self.seed, step])
        starts = rng.integers(0, len(self.tokens) - self.block_size - 1, size=self.batch_size)
        idx = starts[:, None] + np.arange(self.block_size + 1)[None, :]
        chunk = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return chunk[:, :-1], chunk[:, 1:]


def eval_batches(tokens: np.ndarray, block_size: int, batch_size: int,
                 max_batches: int | None = None):
    """Consecutive non-overlapping windows from the start of the stream, in order."""
    n_windows = (len(tokens) - 1) // block_size
    if max_batches is not None:
        n_windows = min(n_windows, max_batches * batch_size)
    for b0 in range(0, n_windows, batch_size):
        ws = range(b0, min(b0 + batch_size, n_windows))
        chunk = np.stack([np.asarray(tokens[w * block_size: w * block_size + block_size + 1],
                                     dtype=np.int64) for w in ws])
        t = torch.from_numpy(chunk)
        yield t[:, :-1], t[:, 1:]
