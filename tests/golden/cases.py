"""Golden fine-tuning cases: small seeded runs of every model family, recorded by the code
before the one-recipe refactor (issue 15) and compared after it (test_golden.py).

``build_env(root)`` makes the inputs (a 4-step tiny GPT, a tiny random BERT and Llama, a
synthetic image cache with a pretrained vit-tiny); ``CASES`` are the runs, as the flat
fine-tuning options of the old API (``muonft finetune``'s options; the migration of
:func:`muonft.spec.RunSpec.from_legacy` reads the same form). Run this module as a script
to re-record (only when a result change is intended and explained).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE.parent))

from ft_data import pretrain_tiny_gpt, write_lm_corpora, write_text_tasks  # noqa: E402
from hf_tiny import save_tiny_bert, save_tiny_llama  # noqa: E402

VOLATILE = ("timings", "versions", "resumed", "run_id")


def build_env(root: Path) -> dict[str, str]:
    """Inputs of every case under ``root`` (MUONFT_CACHE must point inside ``root``)."""
    rng = np.random.default_rng(0)
    pre, gpt_task = write_lm_corpora(root, rng)
    pretrain_tiny_gpt(root, pre)
    text = write_text_tasks(root, rng)
    save_tiny_bert(root / "bert")
    save_tiny_llama(root / "llama")
    return {"gpt": str(root / "pt"), "gpt_task": gpt_task, "bert": f"hf:{root / 'bert'}",
            "cls_task": text["task"], "llama": f"hf:{root / 'llama'}", "lm_task": text["target"],
            "general": text["general"], "vit": str(root / "vit")}


def build_vit(root: Path, monkeypatch) -> None:
    """The fake image sources in the cache and a 24-step AdamW vit-tiny in ``root/vit``."""
    from image_fakes import fetch_fakes
    from muonft.train.vision import vision_pretrain

    fetch_fakes(monkeypatch)
    vision_pretrain(dict(steps=24, batch_size=16, eval_every=12, warmup=2, optimizer="adamw"),
                    root / "vit", progress=False, checkpoint_every=0)


GPT = dict(steps=6, batch_size=4, block_size=32, eval_every=3, eval_batches=2, warmup=1,
           diag_every=3)
CASES: dict[str, dict] = {
    "gpt_full_adamw": dict(GPT, init="{gpt}", task="{gpt_task}", optimizer="adamw",
                           method="full", lr=3e-3),
    "gpt_full_muon": dict(GPT, init="{gpt}", task="{gpt_task}", optimizer="muon",
                          method="full", lr=3e-3),
    "gpt_lora_adamw": dict(GPT, init="{gpt}", task="{gpt_task}", optimizer="adamw",
                           method="lora", lr=1e-2, lora_rank=4, lora_alpha=8.0),
    "gpt_lora_muon": dict(GPT, init="{gpt}", task="{gpt_task}", optimizer="muon",
                          method="lora", lr=1e-2, lora_rank=4, lora_alpha=8.0,
                          lora_variant="lora_one", orthogonalizer="exact_thin"),
    "gpt_full_muon_constrained": dict(GPT, init="{gpt}", task="{gpt_task}", optimizer="muon",
                                      method="full", lr=3e-3, update_rank=2, max_drift=0.05),
    "bert_full_muon": dict(init="{bert}", task="{cls_task}", optimizer="muon", method="full",
                           lr=3e-3, steps=6, batch_size=8, eval_every=3, warmup=1,
                           block_size=16),
    "bert_lora_adamw": dict(init="{bert}", task="{cls_task}", optimizer="adamw",
                            method="lora", lr=1e-2, steps=6, batch_size=8, eval_every=3,
                            warmup=1, block_size=16, lora_rank=4, lora_alpha=8.0),
    "llama_full_muon": dict(init="{llama}", task="{lm_task}", optimizer="muon", method="full",
                            lr=3e-3, steps=6, batch_size=4, block_size=16, eval_every=3,
                            eval_batches=2, warmup=1),
    "vit_full_muon": dict(init="{vit}", task="mnist-rot", optimizer="muon", method="full",
                          lr=1e-2, steps=6, batch_size=16, eval_every=3, warmup=1,
                          diag_every=3),
    "vit_lora_adamw": dict(init="{vit}", task="mnist-rot", optimizer="adamw", method="lora",
                           lr=1e-2, steps=6, batch_size=16, eval_every=3, warmup=1,
                           lora_rank=4, lora_alpha=8.0),
}


def case_options(name: str, env: dict[str, str]) -> dict:
    return {k: v.format(**env) if isinstance(v, str) else v for k, v in CASES[name].items()}


def comparable(record: dict) -> dict:
    """The parts of a result record the refactor must not change (no timings, versions,
    spec form)."""
    return {k: v for k, v in record.items() if k not in (*VOLATILE, "spec")}


def _record_old(out: Path) -> None:  # the pre-refactor API (kept for the record)
    import pytest

    from muonft.train import finetune_hf
    from muonft.train.finetune import finetune
    from muonft.train.vision import vision_finetune

    torch.set_num_threads(1)
    root = out / "env"
    root.mkdir(parents=True)
    os.environ["MUONFT_CACHE"] = str(root / "cache")
    env = build_env(root)
    with pytest.MonkeyPatch.context() as mp:
        build_vit(root, mp)
        mp.setattr(finetune_hf, "GENERAL_CORPUS", env["general"])
        golden = {}
        for name in CASES:
            opts = case_options(name, env)
            run = vision_finetune if name.startswith("vit") else finetune
            rec = run(opts, out / name, progress=False)
            golden[name] = comparable(rec)
    text = json.dumps(golden, indent=1, sort_keys=True).replace(str(root), "{root}")
    (HERE / "golden.json").write_text(text + "\n")


if __name__ == "__main__":
    import tempfile

    _record_old(Path(tempfile.mkdtemp()))
