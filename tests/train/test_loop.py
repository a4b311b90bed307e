import math

import numpy as np
import pytest
import torch

from muonft.data import LMBatcher
from muonft.errors import CheckpointError
from muonft.models import GPTConfig, build_gpt
from muonft.optim import Muon, muon_param_groups
from muonft.train import TrainConfig, lr_multiplier, train

CFG = GPTConfig(vocab_size=32, n_layer=2, n_head=2, n_embd=32, block_size=16)


def _tokens():
    # A learnable stream: a repeating pattern with a little noise.
    rng = np.random.default_rng(0)
    base = np.tile(np.arange(32, dtype=np.uint16), 200)
    noise = rng.random(base.shape) < 0.05
    base[noise] = rng.integers(0, 32, noise.sum())
    return base


def _setup(optimizer="muon"):
    torch.manual_seed(0)
    model = build_gpt(CFG)
    if optimizer == "muon":
        opt = Muon(muon_param_groups(model), lr=0.02, weight_decay=0.01)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, opt, LMBatcher(_tokens(), 16, 8, seed=1)


def _cfg(**kw):
    base = dict(steps=30, schedule="cosine", warmup=3, progress=False, log_every=5)
    return TrainConfig(**(base | kw))


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_loss_decreases(optimizer):
    model, opt, b = _setup(optimizer)
    res = train(model, opt, b.get, _cfg(steps=40))
    curve = [v for _, v in res["curves"]["train_loss"]]
    assert res["status"] == "done" and res["steps"] == 40
    assert curve[-1] < 0.6 * curve[0]


def test_schedules():
    c = _cfg(steps=100, warmup=10, schedule="cosine", final_lr_frac=0.1)
    assert lr_multiplier(0, c) == pytest.approx(0.1)
    assert lr_multiplier(9, c) == pytest.approx(1.0)
    assert lr_multiplier(10, c) == pytest.approx(1.0)
    assert lr_multiplier(55, c) == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr_multiplier(100, c) == pytest.approx(0.1)
    lin = _cfg(steps=100, warmup=0, schedule="linear")
    assert lr_multiplier(50, lin) == pytest.approx(0.5)
    assert lr_multiplier(70, _cfg(schedule="constant", warmup=0)) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        _cfg(schedule="step")


class _Kill(Exception):
    pass


def test_kill_and_resume_is_bit_identical(tmp_path):
    model, opt, b = _setup()
    ref = train(model, opt, b.get, _cfg(checkpoint_every=5))
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    model, opt, b = _setup()

    def die(step, loss):
        if step == 13:
            raise _Kill

    with pytest.raises(_Kill):
        train(model, opt, b.get, _cfg(checkpoint_every=5), ckpt_dir=tmp_path, on_step=die)
    model, opt, b = _setup()  # a fresh process: new model and optimizer
    res = train(model, opt, b.get, _cfg(checkpoint_every=5), ckpt_dir=tmp_path)
    assert res["steps"] == 30
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert res["curves"]["train_loss"] == ref["curves"]["train_loss"]


def test_corrupt_checkpoint_is_refused(tmp_path):
    model, opt, b = _setup()
    train(model, opt, b.get, _cfg(steps=10, checkpoint_every=5), ckpt_dir=tmp_path)
    latest = sorted(tmp_path.glob("step-*"))[-1]
    f = latest / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[-10] ^= 0xFF
    f.write_bytes(bytes(data))
    model, opt, b = _setup()
    with pytest.raises(CheckpointError, match="corrupt"):
        train(model, opt, b.get, _cfg(steps=20), ckpt_dir=tmp_path)
    (tmp_path / "latest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"pointer .* is corrupt"):
        train(model, opt, b.get, _cfg(steps=20), ckpt_dir=tmp_path)


def test_nan_loss_gives_diverged():
    model, opt, b = _setup()

    def loss_fn(m, batch):
        _, loss = m(*batch)
        return loss * float("nan") if b_state["step"] >= 7 else loss

    b_state = {"step": 0}

    def on_step(step, loss):
        b_state["step"] = step

    res = train(model, opt, b.get, _cfg(), loss_fn=loss_fn, on_step=on_step)
    assert res["status"] == "diverged" and res["steps"] == 7
    assert math.isnan(res["curves"]["train_loss"][-1][1])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_exploding_loss_gives_diverged():
    model, _, b = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e4)
    res = train(model, opt, b.get, _cfg(warmup=0, schedule="constant", grad_clip=None))
    assert res["status"] == "diverged"
