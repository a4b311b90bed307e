"""Small seeded text data for fine-tuning tests (no network): two LM corpora with different
word distributions, a GLUE-format SST-2 with a learnable word rule, and a general-English-like
corpus for forgetting probes. The same ``rng`` gives the same files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

PRE_WORDS = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light"]
TARGET_WORDS = ["this", "film", "is", "a", "funny", "dull", "movie", "great", "plot", "bad"]
POS = ["great", "good", "fun", "love", "best"]
NEG = ["awful", "bad", "boring", "hate", "worst"]
FILLER = ["the", "a", "movie", "film", "plot", "acting", "was", "very"]


def write_lm_corpora(root: Path, rng: np.random.Generator) -> tuple[str, str]:
    """(``file:`` pretraining corpus, ``lm:file:`` target task) under ``root``."""
    pre_c, tgt_c = root / "pre.txt", root / "tgt.txt"
    pre_c.write_text("\n\n".join(" ".join(rng.choice(PRE_WORDS, 60)) for _ in range(60)))
    tgt_c.write_text("\n\n".join(" ".join(rng.choice(TARGET_WORDS + PRE_WORDS[:3], 60))
                                 for _ in range(60)))
    return f"file:{pre_c}", f"lm:file:{tgt_c}"


def pretrain_tiny_gpt(root: Path, corpus: str, steps: int = 4, eval_batches: int = 2) -> Path:
    """A ``muonft pretrain`` output of the tiny GPT in ``root / "pt"``, on ``corpus``."""
    from muonft.train.pretrain import pretrain

    pretrain(dict(model="tiny", optimizer="adamw", steps=steps, batch_size=2, block_size=32,
                  corpus=corpus, tokenizer_corpus=corpus, vocab_size=300, eval_every=0,
                  eval_batches=eval_batches, warmup=1), root / "pt", progress=False)
    return root / "pt"


def write_text_tasks(root: Path, rng: np.random.Generator) -> dict[str, str]:
    """A GLUE-format SST-2 (``task``), a general corpus (``general``, ``file:``) and a target
    LM task (``target``) under ``root``."""

    def sentence(label):
        words = [*list(rng.choice(FILLER, 5)), rng.choice(POS if label else NEG)]
        rng.shuffle(words)
        return " ".join(words)

    glue = root / "sst2"
    glue.mkdir()
    for split, n in (("train", 96), ("dev", 64)):
        labels = rng.integers(0, 2, n)
        rows = ["sentence\tlabel", *(f"{sentence(y)}\t{y}" for y in labels)]
        (glue / f"{split}.tsv").write_text("\n".join(rows) + "\n")
    general = root / "general.txt"
    general.write_text("\n\n".join(
        "the lord said unto god. " + " ".join(rng.choice([*FILLER, "lord", "god"], 30)) + "."
        for _ in range(30)))
    target = root / "target.txt"
    target.write_text("\n\n".join(" ".join(rng.choice(FILLER + POS, 40)) for _ in range(30)))
    return {"task": f"glue-tsv:sst2:{glue}", "general": f"file:{general}",
            "target": f"lm:file:{target}"}
