"""A tiny pretrained GPT and a target corpus for fine-tuning tests (built once per module)."""

import os

import numpy as np
import pytest

from ft_data import pretrain_tiny_gpt, write_lm_corpora


@pytest.fixture(scope="module")
def ft_env(tmp_path_factory):
    """(root, task): a 4-step ``muonft pretrain`` output in ``root / "pt"`` on a synthetic
    corpus, and an ``lm:file:`` target task with a different word distribution."""
    root = tmp_path_factory.mktemp("ft_env")
    old = os.environ.get("MUONFT_CACHE")
    os.environ["MUONFT_CACHE"] = str(root / "cache")
    pre, task = write_lm_corpora(root, np.random.default_rng(0))
    pretrain_tiny_gpt(root, pre)
    yield root, task
    if old is None:
        os.environ.pop("MUONFT_CACHE")
    else:
        os.environ["MUONFT_CACHE"] = old
