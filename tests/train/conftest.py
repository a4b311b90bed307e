"""A tiny pretrained GPT and a target corpus for fine-tuning tests (built once per module)."""

import os

import numpy as np
import pytest

from muonft.train.pretrain import pretrain


@pytest.fixture(scope="module")
def ft_env(tmp_path_factory):
    """(root, task): a 4-step ``muonft pretrain`` output in ``root / "pt"`` on a synthetic
    corpus, and an ``lm:file:`` target task with a different word distribution."""
    root = tmp_path_factory.mktemp("ft_env")
    old = os.environ.get("MUONFT_CACHE")
    os.environ["MUONFT_CACHE"] = str(root / "cache")
    rng = np.random.default_rng(0)
    a = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light"]
    b = ["this", "film", "is", "a", "funny", "dull", "movie", "great", "plot", "bad"]
    pre_c, tgt_c = root / "pre.txt", root / "tgt.txt"
    pre_c.write_text("\n\n".join(" ".join(rng.choice(a, 60)) for _ in range(60)))
    tgt_c.write_text("\n\n".join(" ".join(rng.choice(b + a[:3], 60)) for _ in range(60)))
    pre = f"file:{pre_c}"
    pretrain(dict(model="tiny", optimizer="adamw", steps=4, batch_size=2, block_size=32,
                  corpus=pre, tokenizer_corpus=pre, vocab_size=300, eval_every=0,
                  eval_batches=2, warmup=1), root / "pt", progress=False)
    yield root, f"lm:file:{tgt_c}"
    if old is None:
        os.environ.pop("MUONFT_CACHE")
    else:
        os.environ["MUONFT_CACHE"] = old
