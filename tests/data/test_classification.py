"""Classification tasks: GLUE-format loader, batching, padding and the accuracy metric."""

from __future__ import annotations

import pytest
import torch

from muonft.data.classification import (
    PAD,
    ClassificationBatcher,
    ClassificationData,
    accuracy,
    load_task_split,
    num_labels,
    pad_batch,
)
from muonft.errors import ConfigError, DataMissingError


def test_accuracy_equals_hand_count():
    preds = [1, 0, 1, 1, 0, 0, 1]
    labels = [1, 1, 1, 0, 0, 1, 1]
    # matches at positions 0, 2, 4, 6 → 4 of 7
    assert accuracy(preds, labels) == pytest.approx(4 / 7)
    assert accuracy(torch.tensor([[2], [0]]), [2, 1]) == 0.5
    with pytest.raises(ValueError, match="equally many"):
        accuracy([1, 0], [1])


def _write(path, rows):
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")


def test_glue_tsv_single_and_pair_tasks(tmp_path):
    d = tmp_path / "sst2"
    d.mkdir()
    _write(d / "train.tsv", [("sentence", "label"), ("a great film", "1"), ("awful", "0"),
                             ('he said "no"', "0")])
    _write(d / "dev.tsv", [("sentence", "label"), ("good", "1"), ("bad", "0"), ("fun", "1")])
    texts, labels = load_task_split(f"glue-tsv:sst2:{d}", "train")
    assert texts == ["a great film", "awful", 'he said "no"'] and labels == [1, 0, 0]
    assert load_task_split(f"glue-tsv:sst2:{d}", "val") == (["good", "fun"], [1, 1])
    assert load_task_split(f"glue-tsv:sst2:{d}", "heldout") == (["bad"], [0])
    r = tmp_path / "rte"
    r.mkdir()
    _write(r / "train.tsv", [("index", "sentence1", "sentence2", "label"),
                             ("0", "A man sleeps.", "Someone rests.", "entailment"),
                             ("1", "A man sleeps.", "He runs.", "not_entailment")])
    texts, labels = load_task_split(f"glue-tsv:rte:{r}", "train")
    assert texts[0] == ("A man sleeps.", "Someone rests.") and labels == [0, 1]
    assert num_labels("glue:mnli") == 3 and num_labels("rt-sentiment") == 2
    with pytest.raises(DataMissingError, match=r"dev\.tsv"):
        load_task_split(f"glue-tsv:rte:{r}", "val")
    with pytest.raises(ConfigError, match="lacks column"):
        load_task_split(f"glue-tsv:mrpc:{d}", "train")
    with pytest.raises(ConfigError, match="unknown GLUE task"):
        load_task_split(f"glue-tsv:nope:{d}", "train")


def test_batcher_is_a_pure_function_of_seed_and_step():
    data = ClassificationData([[i] * (1 + i % 3) for i in range(10)],
                              torch.arange(10).numpy() % 2)
    a, b = ClassificationBatcher(data, 4, seed=3), ClassificationBatcher(data, 4, seed=3)
    for step in (7, 0, 2, 7):
        xa, ya = a.get(step)
        xb, yb = b.get(step)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Steps 0..4 cover epochs 0 and 1 (20 examples): each example exactly twice.
    seen = torch.cat([a.get(s)[0][:, 0] for s in range(5)])
    assert sorted(seen.tolist()) == sorted(list(range(10)) * 2)
    x, y = a.get(1)
    assert torch.equal(y, x[:, 0] % 2)  # labels stay with their texts


def test_pad_batch_uses_minus_one():
    x = pad_batch([[5, 6, 7], [8]])
    assert x.tolist() == [[5, 6, 7], [8, PAD, PAD]]
    batches = list(ClassificationData([[1], [2, 3], [4]], [0, 1, 0]).batches(2))
    assert [b[1].tolist() for b in batches] == [[0, 1], [0]]


def test_length_sorted_batches_cover_each_example_once_with_its_label():
    ids = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 10], [11]]
    data = ClassificationData(ids, [0, 1, 0, 1, 1])
    got = list(data.batches(2, by_length=True))
    assert [x.shape[1] for x, _ in got] == [1, 3, 4]  # short first: little padding
    pairs = sorted((tuple(v for v in row.tolist() if v != PAD), int(lab))
                   for x, y in got for row, lab in zip(x, y))
    assert pairs == sorted((tuple(i), lab) for i, lab in zip(ids, [0, 1, 0, 1, 1]))
