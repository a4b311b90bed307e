import json

import numpy as np
import pytest
import torch

from muonft.cli import main
from muonft.errors import ConfigError
from muonft.train.pretrain import default_spec, pretrain


@pytest.fixture
def corpus(tmp_path, tmp_cache):
    rng = np.random.default_rng(0)
    words = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light"]
    f = tmp_path / "c.txt"
    f.write_text("\n\n".join(" ".join(rng.choice(words, 60)) for _ in range(80)))
    return f"file:{f}"


def _spec(corpus, **kw):
    return dict(model="tiny", steps=6, batch_size=2, block_size=32, corpus=corpus,
                tokenizer_corpus=corpus, vocab_size=300, eval_every=3, eval_batches=2,
                warmup=1) | kw


def test_pretrain_writes_outputs_and_resumes(corpus, tmp_path):
    out = tmp_path / "run"
    rec = pretrain(_spec(corpus, optimizer="muon"), out, progress=False, checkpoint_every=2)
    assert rec["status"] == "done" and rec["metrics"]["val_loss"] > 0
    assert {"hidden_rms", "hidden_mean_spectral_norm"} <= set(rec["metrics"])
    assert (out / "model.safetensors").exists()
    assert json.loads((out / "config.json").read_text())["config"]["vocab_size"] <= 300
    again = pretrain(_spec(corpus, optimizer="muon"), out, progress=False)
    assert again["resumed"] == "already finished"
    with pytest.raises(ConfigError, match=r"different spec \(differs in \['lr'\]\)"):
        pretrain(_spec(corpus, optimizer="muon", lr=0.5), out, progress=False)


@pytest.mark.slow
def test_killed_pretrain_resumes_bit_identical(corpus, tmp_path, monkeypatch):
    import muonft.train.pretrain as pt
    from muonft.train.checkpoint import load_weights

    spec = _spec(corpus, optimizer="adamw", steps=5)
    pretrain(spec, tmp_path / "ref", progress=False, checkpoint_every=2)
    real_train = pt.train

    def killed_train(*args, **kw):
        def die(step, loss):
            if step == 3:
                raise KeyboardInterrupt
        return real_train(*args, **kw, on_step=die)

    monkeypatch.setattr(pt, "train", killed_train)
    with pytest.raises(KeyboardInterrupt):
        pretrain(spec, tmp_path / "run", progress=False, checkpoint_every=2)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["status"] == "running"
    monkeypatch.setattr(pt, "train", real_train)
    rec = pretrain(spec, tmp_path / "run", progress=False, checkpoint_every=2)
    assert rec["status"] == "done" and rec["timings"]["steps_this_session"] == 3
    ref, got = (load_weights(tmp_path / d / "model.safetensors") for d in ("ref", "run"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_tokens_set_steps():
    assert default_spec(tokens=10_000, batch_size=4, block_size=32)["steps"] == 78
    assert default_spec(tokens=5)["steps"] == 1
    with pytest.raises(ConfigError, match="not both"):
        default_spec(tokens=1000, steps=3)


def test_spec_validation():
    with pytest.raises(ConfigError, match="unknown model 'huge'"):
        default_spec(model="huge")
    with pytest.raises(ConfigError, match="steps must be a positive integer, got -3"):
        default_spec(steps=-3)
    with pytest.raises(ConfigError, match="optimizer must be one of"):
        default_spec(optimizer="sgd")
    assert default_spec(optimizer="muon")["lr"] != default_spec(optimizer="adamw")["lr"]


@pytest.mark.parametrize(
    ("args", "msg"),
    [(["--model", "huge"], "unknown model 'huge'"),
     (["--steps", "-5"], "--steps must be > 0, got -5"),
     (["--optimizer", "sgd"], "optimizer must be one of")],
)
def test_cli_bad_inputs_exit_2(args, msg, capsys, tmp_cache):
    assert main(["pretrain", *args, "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]


def test_cli_unwritable_cache(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    monkeypatch.setenv("MUONFT_CACHE", str(blocker / "cache"))
    assert main(["pretrain", "--quiet", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("muonft: error:")


def test_cli_unwritable_out(capsys, tmp_path, tmp_cache):
    blocker = tmp_path / "f"
    blocker.write_text("x")
    assert main(["pretrain", "--out", str(blocker / "sub"), "--quiet", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot create output directory" in err[0]
