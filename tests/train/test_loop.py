import json
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
    wd = _cfg(steps=100, warmup=5, schedule="warmdown", warmdown_frac=0.2, final_lr_frac=0.0)
    assert lr_multiplier(4, wd) == pytest.approx(1.0)
    assert lr_multiplier(79, wd) == 1.0 and lr_multiplier(80, wd) == 1.0
    assert lr_multiplier(90, wd) == pytest.approx(0.5)
    assert lr_multiplier(99, wd) == pytest.approx(0.05)
    assert lr_multiplier(100, wd) == pytest.approx(0.0)
    assert lr_multiplier(70, _cfg(schedule="constant", warmup=0)) == 1.0
    with pytest.raises(ValueError, match="schedule must be one of"):
        _cfg(schedule="step")


class _Kill(Exception):
    pass


def _assert_same_run(model, res, ref_state, ref):
    for k, v in model.state_dict().items():
        assert torch.equal(v, ref_state[k]), k
    assert res["curves"]["train_loss"] == ref["curves"]["train_loss"]
    assert res["steps"] == ref["steps"]


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
    assert res["steps"] == 30 and res["timings"]["steps_this_session"] == 30 - 10
    _assert_same_run(model, res, ref_state, ref)


@pytest.mark.parametrize("kill_at", [1, 5, 6, 29])
def test_kill_at_any_step_then_resume_adamw(tmp_path, kill_at):
    """Killed before the first checkpoint, right on one, just after one, or at the end."""
    cfg = _cfg(checkpoint_every=5, eval_every=10)

    def eval_fn(m):
        x, y = b.get(10_000)
        return {"val_loss": float(m(x, y)[1])}

    model, opt, b = _setup("adamw")
    ref = train(model, opt, b.get, cfg, eval_fn=eval_fn)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    def die(step, loss):
        if step == kill_at:
            raise _Kill

    model, opt, b = _setup("adamw")
    with pytest.raises(_Kill):
        train(model, opt, b.get, cfg, ckpt_dir=tmp_path, on_step=die, eval_fn=eval_fn)
    model, opt, b = _setup("adamw")
    res = train(model, opt, b.get, cfg, ckpt_dir=tmp_path, eval_fn=eval_fn)
    _assert_same_run(model, res, ref_state, ref)
    assert res["curves"]["val_loss"] == ref["curves"]["val_loss"]
    assert res["best"] == ref["best"] and res["final"] == ref["final"]
    # Rerunning a finished run trains nothing and changes nothing.
    model, opt, b = _setup("adamw")
    again = train(model, opt, b.get, cfg, ckpt_dir=tmp_path, eval_fn=eval_fn)
    assert again["timings"]["steps_this_session"] == 0
    _assert_same_run(model, again, ref_state, ref)


def test_resume_refuses_a_different_schedule_or_spec(tmp_path):
    model, opt, b = _setup("adamw")
    train(model, opt, b.get, _cfg(steps=10, checkpoint_every=5), ckpt_dir=tmp_path,
          spec={"lr": 0.01})
    model, opt, b = _setup("adamw")
    with pytest.raises(CheckpointError, match=r"different LR schedule \(differs in \['steps'\]"):
        train(model, opt, b.get, _cfg(steps=20), ckpt_dir=tmp_path, spec={"lr": 0.01})
    with pytest.raises(CheckpointError, match=r"different spec \(differs in \['lr'\]"):
        train(model, opt, b.get, _cfg(steps=10), ckpt_dir=tmp_path, spec={"lr": 0.02})
    opt = torch.optim.AdamW(model.parameters(), lr=0.5)
    with pytest.raises(CheckpointError, match=r"differs in \['base_lrs'\]"):
        train(model, opt, b.get, _cfg(steps=10), ckpt_dir=tmp_path)


def test_eval_hook_best_and_final():
    model, opt, b = _setup("adamw")
    values = iter([3.0, 1.0, 2.0])
    seen = []
    res = train(model, opt, b.get, _cfg(steps=30, eval_every=10),
                eval_fn=lambda m: {"val_loss": next(values), "acc": 0.5},
                on_eval=lambda step, metrics: seen.append((step, metrics["val_loss"])))
    assert seen == [(10, 3.0), (20, 1.0), (30, 2.0)]
    assert res["best"] == {"step": 20, "val_loss": 1.0, "acc": 0.5}
    assert res["final"] == {"val_loss": 2.0, "acc": 0.5}
    assert res["curves"]["val_loss"] == [[10, 3.0], [20, 1.0], [30, 2.0]]


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


def test_nan_gradient_gives_diverged_without_stepping():
    model, opt, b = _setup("adamw")
    state = {"step": 0}
    model.head.weight.register_hook(
        lambda g: g * float("nan") if state["step"] >= 4 else g)
    res = train(model, opt, b.get, _cfg(), on_step=lambda s, _: state.update(step=s))
    assert res["status"] == "diverged" and res["steps"] == 4
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_truncated_or_missing_checkpoint_is_refused(tmp_path):
    model, opt, b = _setup("adamw")
    train(model, opt, b.get, _cfg(steps=10, checkpoint_every=5), ckpt_dir=tmp_path)
    latest = tmp_path / json.loads((tmp_path / "latest.json").read_text())["dir"]
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[:100])
    model, opt, b = _setup("adamw")
    with pytest.raises(CheckpointError, match=r"state.pt is corrupt \(sha256 mismatch\)"):
        train(model, opt, b.get, _cfg(steps=10), ckpt_dir=tmp_path)
    (latest / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors is missing"):
        train(model, opt, b.get, _cfg(steps=10), ckpt_dir=tmp_path)


def test_checkpoint_pair_survives_a_killed_save(tmp_path, monkeypatch):
    """A save killed after writing its directory but before the commit leaves `latest` at the
    previous checkpoint; the next run resumes from it and matches an uninterrupted run."""
    import muonft.train.checkpoint as ck

    cfg = _cfg(steps=12, checkpoint_every=4)
    model, opt, b = _setup("adamw")
    ref = train(model, opt, b.get, cfg)
    ref_state = {k: v.clone() for k, v in model.state_dict().items()}

    real = ck.atomic_write_json

    def dying_commit(path, data):
        if data.get("step") == 8:
            raise _Kill
        return real(path, data)

    monkeypatch.setattr(ck, "atomic_write_json", dying_commit)
    model, opt, b = _setup("adamw")
    with pytest.raises(_Kill):
        train(model, opt, b.get, cfg, ckpt_dir=tmp_path)
    assert json.loads((tmp_path / "latest.json").read_text())["step"] == 4
    monkeypatch.setattr(ck, "atomic_write_json", real)
    model, opt, b = _setup("adamw")
    res = train(model, opt, b.get, cfg, ckpt_dir=tmp_path)
    _assert_same_run(model, res, ref_state, ref)
    sidecar = torch.load(tmp_path / "step-0000012" / "state.pt", weights_only=True)
    assert sidecar["schedule"]["steps"] == 12 and "optimizer" in sidecar


def test_exploding_loss_gives_diverged():
    model, _, b = _setup()
    opt = torch.optim.SGD(model.parameters(), lr=1e4)
    res = train(model, opt, b.get, _cfg(warmup=0, schedule="constant", grad_clip=None))
    assert res["status"] == "diverged"


def test_device_helpers():
    import torch

    from muonft.train.loop import resolve_device, to_device

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    x = torch.ones(2)
    b = to_device({"a": (x, [x]), "n": 3}, torch.device("cpu"))
    assert b["a"][0] is x and isinstance(b["a"][1], list) and b["n"] == 3


def test_resuming_from_the_final_checkpoint_does_not_evaluate_twice(tmp_path):
    """Killed after the final checkpoint but before the caller wrote its record: the rerun
    restores the final state and adds no second evaluation point to the curves."""
    import torch

    from muonft.train.loop import TrainConfig, train

    def run():
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.randn(8, 4), torch.randn(8, 1)
        cfg = TrainConfig(steps=3, eval_every=0, checkpoint_every=0, progress=False)
        return train(model, opt, lambda s: (x, y), cfg, ckpt_dir=tmp_path / "ckpt",
                     loss_fn=lambda m, b: ((m(b[0]) - b[1]) ** 2).mean(),
                     eval_fn=lambda m: {"val_loss": float(((m(x) - y) ** 2).mean())})

    first, again = run(), run()
    assert again["curves"]["val_loss"] == first["curves"]["val_loss"]
    assert len(first["curves"]["val_loss"]) == 1 and again["final"] == first["final"]
