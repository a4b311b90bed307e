"""The one-recipe refactor changed no result: every model family's seeded run equals the
record the three pre-refactor recipes wrote (tests/golden/golden.json, issue 15)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

GOLDEN = Path(__file__).parents[1] / "golden"
sys.path.insert(0, str(GOLDEN))

from cases import CASES, build_env, build_vit, case_options, comparable  # noqa: E402

from muonft.spec import RunSpec  # noqa: E402
from muonft.train.families import hf as hf_family  # noqa: E402
from muonft.train.finetune import finetune  # noqa: E402

# Keys the new skeleton adds to a family's record (more measured, nothing changed).
ADDED_METRICS = {"update_rms_muon", "update_rms_adamw", "pretrain_ppl_before",
                 "pretrain_ppl_after", "forgetting_corpus"}
ADDED_CURVES = ("update_rms", "diag_")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as recorded
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONFT_CACHE", str(root / "cache"))
        e = build_env(root)
        build_vit(root, mp)
        mp.setattr(hf_family, "GENERAL_CORPUS", e["general"])
        yield root, e
    torch.set_num_threads(threads)


def _close(new, old, path="") -> list[str]:
    """Where ``new`` differs from ``old`` beyond 1e-6 relative (floats) or at all."""
    if isinstance(old, dict):
        if not isinstance(new, dict):
            return [path]
        return [d for k in old for d in _close(new.get(k), old[k], f"{path}.{k}")]
    if isinstance(old, list):
        if not isinstance(new, list) or len(new) != len(old):
            return [path]
        return [d for i, (a, b) in enumerate(zip(new, old)) for d in _close(a, b, f"{path}[{i}]")]
    if isinstance(old, float) and isinstance(new, (int, float)):
        if math.isnan(old):
            return [] if math.isnan(new) else [path]
        return [] if math.isclose(new, old, rel_tol=1e-6, abs_tol=1e-9) else [path]
    return [] if new == old else [path]


@pytest.mark.parametrize("name", list(CASES))
def test_golden_result(env, name, tmp_path):
    root, e = env
    golden = json.loads((GOLDEN / "golden.json").read_text().replace("{root}", str(root)))[name]
    spec = RunSpec.from_options(**case_options(name, e))
    rec = comparable(finetune(spec, tmp_path / name, progress=False))
    old_curves = golden["curves"]
    for k in rec["curves"]:
        assert k in old_curves or k.startswith(ADDED_CURVES), k
    assert set(rec["metrics"]) - set(golden["metrics"]) <= ADDED_METRICS
    assert _close(rec, golden) == []


@pytest.mark.parametrize("name", ["gpt_lora_muon", "bert_full_muon", "llama_full_muon",
                                  "vit_full_muon"])
def test_a_killed_run_resumes_to_the_golden_result(env, name, tmp_path, monkeypatch):
    """Each family, killed after step 5 and resumed from its step-4 checkpoint, ends with
    the uninterrupted run's record (weights, evaluations, curves, update RMS)."""
    from muonft.train import finetune as skeleton

    root, e = env
    golden = json.loads((GOLDEN / "golden.json").read_text().replace("{root}", str(root)))[name]
    spec = RunSpec.from_options(**case_options(name, e))
    real_train = skeleton.train

    def killed_after_5(*args, on_step, **kw):
        def hook(step, loss):
            out = on_step(step, loss)
            if step == 5:
                raise KeyboardInterrupt("killed")
            return out
        return real_train(*args, on_step=hook, **kw)

    monkeypatch.setattr(skeleton, "train", killed_after_5)
    with pytest.raises(KeyboardInterrupt):
        finetune(spec, tmp_path / name, progress=False, checkpoint_every=4)
    monkeypatch.setattr(skeleton, "train", real_train)
    rec = finetune(spec, tmp_path / name, progress=False, checkpoint_every=4)
    assert rec["timings"]["steps_this_session"] == 2  # steps 5 and 6 again, from step 4
    assert _close(comparable(rec), golden) == []
