"""Sentence classification tasks for pretrained HF models: data, batching and accuracy.

Tasks:

- ``rt-sentiment``: Rotten Tomatoes critic snippets, fresh (1) vs rotten (0), split by movie
  (:func:`muonft.data.load_rt_classification`);
- ``glue:<task>``: a GLUE single-sentence or sentence-pair task through HF ``datasets`` (needs
  hub access; not used by the default job), or ``glue-tsv:<task>:<dir>`` from local GLUE-format
  TSV files (``<dir>/train.tsv``, ``dev.tsv``, optionally ``test.tsv`` with labels).

Texts are tokenized once with the model's tokenizer and truncated to ``max_len`` tokens. A batch
is ``(x, y)``: ``x`` (B, T) token ids right-padded with −1 (so no real token id is mistaken for
padding; the attention mask is ``x >= 0``), ``y`` (B,) labels. The training batch of a step is a
pure function of ``(seed, step)`` — epochs are seeded permutations — so resumed runs see the same
batches.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from muonft.data.corpora import load_rt_classification
from muonft.errors import ConfigError, DataMissingError

PAD = -1
# GLUE tasks: (text column(s), label column) in the HF `glue` dataset and the GLUE TSVs.
GLUE_TASKS: dict[str, tuple[tuple[str, ...], str]] = {
    "sst2": (("sentence",), "label"), "cola": (("sentence",), "label"),
    "mrpc": (("sentence1", "sentence2"), "label"), "rte": (("sentence1", "sentence2"), "label"),
    "qnli": (("question", "sentence"), "label"), "qqp": (("question1", "question2"), "label"),
    "mnli": (("premise", "hypothesis"), "label"),
}
# Our split names → GLUE's (GLUE's test labels are hidden, so `heldout` is the dev set's half).
_GLUE_SPLIT = {"train": "train", "val": "validation", "heldout": "validation"}
_TSV_LABELS = {"entailment": 0, "not_entailment": 1, "neutral": 1, "contradiction": 2}


def is_classification_task(task: str) -> bool:
    """Whether ``task`` names a classification task of this module."""
    return task == "rt-sentiment" or task.startswith(("glue:", "glue-tsv:"))


def num_labels(task: str) -> int:
    """Number of classes of ``task``."""
    return 3 if task.split(":")[1:2] == ["mnli"] else 2


def load_task_split(task: str, split: str) -> tuple[list[str | tuple[str, str]], list[int]]:
    """(texts, labels) of one split (``train``/``val``/``heldout``) of a classification task;
    a sentence-pair task gives (first, second) tuples."""
    if split not in _GLUE_SPLIT:
        raise ValueError(f"split must be one of {tuple(_GLUE_SPLIT)}, got {split!r}")
    if task == "rt-sentiment":
        return load_rt_classification(split)
    if task.startswith("glue-tsv:"):
        try:
            _, name, directory = task.split(":", 2)
        except ValueError:
            raise ConfigError(f"expected glue-tsv:<task>:<dir>, got {task!r}") from None
        return _split_dev(load_glue_tsv(Path(directory), name, _GLUE_SPLIT[split]), split)
    if task.startswith("glue:"):
        return _split_dev(load_glue_hub(task[5:], _GLUE_SPLIT[split]), split)
    raise ConfigError(f"unknown classification task {task!r}; use rt-sentiment, glue:<task> "
                      f"or glue-tsv:<task>:<dir>")


def _split_dev(rows: tuple[list, list[int]], split: str) -> tuple[list, list[int]]:
    """GLUE has no labelled test set: val = even rows of dev, heldout = odd rows."""
    texts, labels = rows
    if split == "train":
        return texts, labels
    k = 0 if split == "val" else 1
    return texts[k::2], labels[k::2]


def _glue_columns(name: str) -> tuple[tuple[str, ...], str]:
    try:
        return GLUE_TASKS[name]
    except KeyError:
        raise ConfigError(f"unknown GLUE task {name!r}; choose one of "
                          f"{', '.join(GLUE_TASKS)}") from None


def load_glue_tsv(directory: Path, name: str, split: str) -> tuple[list, list[int]]:
    """Rows of a GLUE-format TSV (``train.tsv`` / ``dev.tsv``): header line, tab-separated,
    the task's text column(s) and a ``label`` column (ints, or MNLI/RTE label words)."""
    cols, label_col = _glue_columns(name)
    path = Path(directory).expanduser() / ("dev.tsv" if split == "validation" else f"{split}.tsv")
    if not path.is_file():
        raise DataMissingError(f"GLUE file {path} does not exist")
    texts: list = []
    labels: list[int] = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        missing = [c for c in (*cols, label_col) if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path} lacks column(s) {missing}; has {reader.fieldnames}")
        for i, row in enumerate(reader, start=2):
            raw = row[label_col].strip()
            try:
                lab = int(raw) if raw.lstrip("-").isdigit() else _TSV_LABELS[raw]
            except KeyError:
                raise ConfigError(f"{path}:{i}: unknown label {raw!r}") from None
            texts.append(row[cols[0]] if len(cols) == 1 else tuple(row[c] for c in cols))
            labels.append(lab)
    return texts, labels


def load_glue_hub(name: str, split: str) -> tuple[list, list[int]]:
    """Rows of GLUE task ``name`` from the HF hub (``datasets.load_dataset("glue", name)``)."""
    cols, label_col = _glue_columns(name)
    try:
        from datasets import load_dataset
    except ImportError:
        raise ConfigError("GLUE tasks from the hub need the `datasets` package; or use "
                          "glue-tsv:<task>:<dir> with local GLUE TSV files") from None
    if name == "mnli" and split == "validation":
        split = "validation_matched"
    ds = load_dataset("glue", name, split=split)
    texts = ds[cols[0]] if len(cols) == 1 else list(zip(*(ds[c] for c in cols)))
    return list(texts), [int(x) for x in ds[label_col]]


def tokenize(tokenizer, texts: Sequence, max_len: int) -> list[list[int]]:
    """Token ids of each text (or text pair), with the tokenizer's special tokens, truncated
    to ``max_len``."""
    if not texts:
        return []
    if isinstance(texts[0], tuple):
        enc = tokenizer([t[0] for t in texts], [t[1] for t in texts], truncation=True,
                        max_length=max_len)
    else:
        enc = tokenizer(list(texts), truncation=True, max_length=max_len)
    return [list(ids) for ids in enc["input_ids"]]


def pad_batch(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    """(B, T) LongTensor of right-padded ids, padding = −1, T = the longest sequence."""
    width = max(len(s) for s in seqs)
    x = torch.full((len(seqs), width), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        x[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return x


@dataclass
class ClassificationData:
    """Tokenized texts and labels of one split."""

    ids: list[list[int]]
    labels: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels)
        if len(self.ids) != len(self.labels):
            raise ValueError(f"{len(self.ids)} texts but {len(self.labels)} labels")
        if not self.ids:
            raise ConfigError("a classification split has no examples")

    def batches(self, batch_size: int, by_length: bool = False
                ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Consecutive (x, y) batches over the whole split (evaluation): in order, or with
        ``by_length`` in order of length (stable), so each batch pads to nearly its own
        length; every example appears exactly once either way."""
        order = (sorted(range(len(self.ids)), key=lambda i: len(self.ids[i])) if by_length
                 else range(len(self.ids)))
        order = list(order)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            yield (pad_batch([self.ids[j] for j in idx]),
                   torch.as_tensor(self.labels[idx], dtype=torch.long))


def load_classification(task: str, split: str, tokenizer, max_len: int) -> ClassificationData:
    """One split of ``task`` tokenized with ``tokenizer`` (an HF tokenizer)."""
    texts, labels = load_task_split(task, split)
    return ClassificationData(tokenize(tokenizer, texts, max_len), np.asarray(labels))


class ClassificationBatcher:
    """Training batches: ``get(step)`` is a pure function of (seed, step).

    Epoch e is the seeded permutation ``default_rng((seed, e))`` of the examples; step s takes
    the s-th run of ``batch_size`` indices through the concatenated epochs.
    """

    def __init__(self, data: ClassificationData, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            self._perms = {epoch: np.random.default_rng((self.seed, epoch))
                           .permutation(len(self.data.ids))}
        return self._perms[epoch]

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.data.ids)
        idx = []
        start = step * self.batch_size
        for k in range(start, start + self.batch_size):
            idx.append(int(self._perm(k // n)[k % n]))
        return (pad_batch([self.data.ids[i] for i in idx]),
                torch.as_tensor(self.data.labels[idx], dtype=torch.long))


def accuracy(predictions: Sequence[int] | torch.Tensor, labels: Sequence[int] | torch.Tensor
             ) -> float:
    """Fraction of predictions equal to the labels."""
    p = torch.as_tensor(predictions).reshape(-1)
    y = torch.as_tensor(labels).reshape(-1)
    if p.shape != y.shape or p.numel() == 0:
        raise ValueError(f"need equally many predictions and labels (> 0), got {p.numel()} "
                         f"and {y.numel()}")
    return float((p == y).float().mean())
