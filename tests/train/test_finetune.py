import json

import numpy as np
import pytest

from ft_data import pretrain_tiny_gpt, write_lm_corpora
from muonft.cli import main
from muonft.errors import CheckpointError, ConfigError
from muonft.train.finetune import finetune
from muonft.train.plugins import spec_from_options

KEYS = {"stable_rank", "spectral_entropy", "spectral_norm", "max_norm", "l2_drift",
        "cosine_to_init"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("ft")
    old = os.environ.get("MUONFT_CACHE")
    os.environ["MUONFT_CACHE"] = str(root / "cache")
    pre, task = write_lm_corpora(root, np.random.default_rng(0))
    pretrain_tiny_gpt(root, pre, steps=4, eval_batches=2)
    yield root, task
    if old is None:
        os.environ.pop("MUONFT_CACHE")
    else:
        os.environ["MUONFT_CACHE"] = old


def _spec(setup, **kw):
    root, task = setup
    return dict(init=str(root / "pt"), task=task, steps=4, batch_size=2, block_size=32,
                eval_every=0, eval_batches=2, warmup=1) | kw


def test_zero_steps_no_drift_no_forgetting(setup, tmp_path):
    rec = finetune(_spec(setup, steps=0), tmp_path / "r", progress=False)
    assert rec["metrics"]["forgetting"] == 0.0
    assert rec["metrics"]["target"] == rec["metrics"]["zero_shot"]
    for row in rec["diagnostics"].values():
        assert row["l2_drift"] == 0.0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_result_record_and_drift_grows_with_lr(setup, tmp_path, method):
    drifts = []
    for lr in (1e-3, 1e-2):
        rec = finetune(_spec(setup, method=method, lr=lr), tmp_path / f"{method}-{lr}",
                       progress=False)
        drifts.append(rec["diagnostics"]["overall"]["l2_drift"])
    assert rec["status"] == "done"
    doc = json.loads((tmp_path / f"{method}-0.01" / "result.json").read_text())
    assert {"status", "spec", "metrics", "diagnostics"} <= set(doc)
    assert {"target", "zero_shot", "forgetting", "test", "relative_ppl"} <= set(doc["metrics"])
    best = doc["best"]  # the best evaluation during the run, also as scalar metrics
    assert doc["metrics"]["best_target"] == best["val_loss"] <= doc["metrics"]["target"] + 1e-9
    assert doc["metrics"]["best_step"] == best["step"] > 0
    assert set(doc["diagnostics"]["attn_q"]) >= KEYS
    assert 0 < drifts[0] < drifts[1]
    if method == "lora":  # embeddings and head are frozen under LoRA
        assert doc["diagnostics"]["embedding"]["l2_drift"] == 0.0


def test_rerun_is_a_noop_and_spec_change_refused(setup, tmp_path):
    finetune(_spec(setup), tmp_path / "r", progress=False)
    assert finetune(_spec(setup), tmp_path / "r", progress=False)["resumed"] == \
        "already finished"
    with pytest.raises(ConfigError, match="different spec"):
        finetune(_spec(setup, lr=0.5), tmp_path / "r", progress=False)


def test_spec_validation(setup, tmp_path):
    init = str(setup[0] / "pt")
    with pytest.raises(ConfigError, match="method: Input should be 'full' or 'lora'"):
        spec_from_options(method="half")
    with pytest.raises(ConfigError, match=r"task: 'rt-sentiment' .classification. does not fit "
                                          r"init '.*' .gpt., which trains lm"):
        finetune(spec_from_options(init=init, task="rt-sentiment"), tmp_path / "o")
    with pytest.raises(ConfigError, match=r"init: no model family claims '/nope' .no pretrained "
                                          r"checkpoint .*; families: hf: minilm, smollm2 or "
                                          r"hf:<path-or-hub-id>; vit: .*; gpt: "):
        finetune({"init": "/nope"}, tmp_path / "o")
    assert not (tmp_path / "o").exists()
    s = spec_from_options(init="minilm")  # an HF family's own task and defaults
    assert (s.task, s.lr, s.batch_size, s.block_size) == ("rt-sentiment", 5e-5, 32, 64)
    s = spec_from_options(init=init, method="lora")
    assert (s.task, s.lr, s.block_size) == ("lm:rt", 1e-2, 128)


@pytest.mark.parametrize(("args", "msg"), [
    (["--init", "/nonexistent/ckpt"], "no pretrained checkpoint"),
    (["--method", "half"], "method: Input should be 'full' or 'lora' (got 'half')"),
    (["--method", "lora", "--rank", "0"], "lora.rank: Input should be greater than 0 (got 0)"),
    (["--steps", "-1"], "steps: Input should be greater than or equal to 0 (got -1)"),
    (["--steps", "3", "--epochs", "1"], "give --steps or --epochs, not both"),
    (["--lr", "1e308"], "lr: Input should be less than or equal to 10000 (got 1e+308)"),
    (["--weight-decay", "inf"], "weight_decay: Input should be a finite number"),
    (["--threads", "-1"], "threads must be >= 1, got -1"),
    (["--seed", "-1"], "seed: Input should be greater than or equal to 0"),
])
def test_cli_bad_inputs(args, msg, tmp_path, capsys, tmp_cache):
    assert main(["finetune", "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not (tmp_path / "o").exists()  # nothing written


@pytest.mark.parametrize(("args", "msg"), [
    (["--batch-size", "100000000"], "a step of 100000000 × 32 on"),
    (["--method", "lora", "--rank", "4", "--variant", "pissa", "--dropout", "0.5",
      "--threads", "0"], "threads must be >= 1, got 0"),
])
def test_cli_bad_inputs_with_a_checkpoint_write_nothing(setup, args, msg, tmp_path, capsys):
    root, task = setup
    out = tmp_path / "o"
    assert main(["finetune", "--init", str(root / "pt"), "--task", task, "--block-size", "32",
                 "--out", str(out), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not out.exists()


def test_cli_refuses_the_working_directory_as_out(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", "--out", "", "--quiet"]) == 2
    assert "--out must name a directory for the run" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_checkpoints_that_are_not_one_are_refused(setup, tmp_path):
    import shutil

    root, task = setup
    bad = tmp_path / "bad"
    shutil.copytree(root / "pt", bad)
    cfg = json.loads((bad / "config.json").read_text())
    for edit, msg in (({**cfg, "config": {**cfg["config"], "vocab_size": 8}},
                       "its tokenizer has .* tokens but the model embeds 8"),
                      ({**cfg, "config": {**cfg["config"], "n_embd": 2**20, "n_head": 1}},
                       "the model of .* needs at least .* GiB"),
                      ({k: v for k, v in cfg.items() if k != "config"},
                       "has no 'config'/'tokenizer' entry")):
        (bad / "config.json").write_text(json.dumps(edit))
        with pytest.raises((CheckpointError, ConfigError), match=msg):
            finetune({"init": str(bad), "task": task}, tmp_path / "o")
        assert not (tmp_path / "o").exists()


def test_epochs_convert_to_steps_from_the_training_split(ft_env, tmp_path, capsys):
    import math

    from muonft.data import load_lm_splits
    from muonft.train.families.gpt import load_pretrained, resolve_init
    from muonft.train.finetune import steps_for_epochs

    root, task = ft_env
    spec = spec_from_options(init=str(root / "pt"), task=task, batch_size=2, block_size=16)
    tok = load_pretrained(resolve_init(str(root / "pt")))[1]
    tokens = len(load_lm_splits(task[3:], tok).train)
    assert steps_for_epochs(spec, 0.5) == math.ceil(0.5 * tokens / 32)
    with pytest.raises(ConfigError, match="epochs must be a number > 0"):
        steps_for_epochs(spec, 0)
    out = tmp_path / "ep"
    assert main(["finetune", "--init", str(root / "pt"), "--task", task, "--epochs", "0.01",
                 "--batch-size", "2", "--block-size", "16", "--out", str(out), "--quiet"]) == 0
    n = steps_for_epochs(spec, 0.01)
    assert f"0.01 epoch(s) = {n} steps" in capsys.readouterr().err
    assert json.loads((out / "result.json").read_text())["spec"]["steps"] == n


def test_zero_shot_and_pretraining_loss_are_measured_once_per_weights(ft_env, tmp_path,
                                                                      monkeypatch):
    """A second run from the same weights reads the cached pre-fine-tuning losses (the same
    numbers); other weights are measured."""
    from muonft.train import probes, tasks

    root, task = ft_env
    calls = []
    real = tasks.lm_windows_loss
    for module in (tasks, probes):  # every LM-loss evaluation, of the task and of the probe
        monkeypatch.setattr(module, "lm_windows_loss", lambda *a: calls.append(1) or real(*a))
    # sizes no other test of the module uses, so the shared cache holds nothing for them yet
    spec = {"init": str(root / "pt"), "task": task, "steps": 2, "batch_size": 2,
            "block_size": 12, "eval_every": 0, "eval_batches": 1, "warmup": 0}
    a = finetune({**spec, "lr": 1e-3}, tmp_path / "a", progress=False)
    # zero-shot, pretraining loss before and after, the loop's final evaluation (the target)
    # and test
    n_run = len(calls)
    assert n_run == 5 and a["metrics"]["target"] == a["curves"]["val_loss"][-1][1]
    b = finetune({**spec, "lr": 2e-3, "optimizer": "adamw"}, tmp_path / "b", progress=False)
    assert len(calls) == 2 * n_run - 2  # zero-shot and pretraining-domain loss: cached
    assert b["metrics"]["zero_shot"] == a["metrics"]["zero_shot"]
    assert b["metrics"]["pretrain_loss_before"] == a["metrics"]["pretrain_loss_before"]
    fresh = finetune({**spec, "lr": 1e-3, "block_size": 8}, tmp_path / "c", progress=False)
    assert len(calls) == 3 * n_run - 2  # other sizes: measured again
    assert fresh["metrics"]["zero_shot"] != a["metrics"]["zero_shot"]


def test_the_saved_gpt_is_an_init_that_starts_where_the_run_ended(setup, tmp_path):
    """OUT/model of a GPT run is a checkpoint --init takes: a run from it starts with the
    zero-shot loss the first run ended with (LoRA merged in)."""
    root = setup[0]
    base = _spec(setup, eval_every=0)
    for method in ("full", "lora"):
        out = tmp_path / method
        first = finetune({**base, "method": method}, out, progress=False, save_model=True)
        assert json.loads((out / "model" / "config.json").read_text())["finetuned_from"] == \
            str(root / "pt")
        again = finetune({**base, "init": str(out / "model"), "steps": 0}, tmp_path / "again"
                         / method, progress=False)
        assert again["metrics"]["zero_shot"] == pytest.approx(first["metrics"]["target"],
                                                              rel=1e-6)
