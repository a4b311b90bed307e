"""Shared test setup: deterministic seeds, bounded threads, and an isolated cache per session."""

from __future__ import annotations

import os

import pytest
import torch


def pytest_configure(config: pytest.Config) -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    # Tests never touch a hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty MUONFT_CACHE for tests that must not see the user's cache."""
    d = tmp_path / "cache"
    d.mkdir()
    monkeypatch.setenv("MUONFT_CACHE", str(d))
    return d
