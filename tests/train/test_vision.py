"""The vision recipes on synthetic 'MNIST' (no network): pretrain, resume, fine-tune full and
LoRA under AdamW and Muon, forgetting on the pretraining task, the sweep runner, the CLI."""

import json

import pytest
import torch

from image_fakes import fetch_fakes
from muonft.cli import main
from muonft.errors import ConfigError
from muonft.spec import RunSpec
from muonft.train import vision
from muonft.train.finetune import finetune
from muonft.train.plugins import spec_from_options

PRE = dict(steps=24, batch_size=16, eval_every=12, warmup=2)
FT = dict(task="mnist-rot", steps=12, batch_size=16, eval_every=6, warmup=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """A cache with the fake image sources and one AdamW-pretrained vit-tiny in ``root/pt``."""
    root = tmp_path_factory.mktemp("vision")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONFT_CACHE", str(root / "cache"))
        fetch_fakes(mp)
        rec = vision.vision_pretrain(dict(PRE, optimizer="adamw"), root / "pt", progress=False,
                                     checkpoint_every=0)
        yield root, rec


def test_pretrain_learns_and_writes_a_checkpoint(env):
    root, rec = env
    assert rec["status"] == "done" and rec["spec"]["optimizer"] == "adamw"
    m = rec["metrics"]
    assert m["train_loss"] < 0.5 * m["initial_loss"] and m["val_accuracy"] > 0.5
    run = json.loads((root / "pt" / "run.json").read_text())
    assert run["spec"]["optimizer"] == "adamw" and run["status"] == "done"
    cfg = json.loads((root / "pt" / "config.json").read_text())
    assert cfg["kind"] == "vit" and cfg["pretrain_task"] == "mnist"
    again = vision.vision_pretrain(dict(PRE, optimizer="adamw"), root / "pt", progress=False)
    assert again["resumed"] == "already finished"
    with pytest.raises(ConfigError, match="different spec"):
        vision.vision_pretrain(dict(PRE, optimizer="adamw", lr=0.5), root / "pt", progress=False)


def test_pretrain_resumes_exactly_after_a_kill(env, monkeypatch, tmp_path):
    from muonft.data.images import ImageBatcher

    spec = dict(PRE, optimizer="muon", steps=16, eval_every=0)
    whole = vision.vision_pretrain(spec, tmp_path / "a", progress=False, checkpoint_every=8)
    get = ImageBatcher.get

    def dies_at_12(self, step):
        if step == 12:
            raise KeyboardInterrupt("killed")
        return get(self, step)

    monkeypatch.setattr(ImageBatcher, "get", dies_at_12)
    with pytest.raises(KeyboardInterrupt):
        vision.vision_pretrain(spec, tmp_path / "b", progress=False, checkpoint_every=8)
    monkeypatch.setattr(ImageBatcher, "get", get)
    resumed = vision.vision_pretrain(spec, tmp_path / "b", progress=False, checkpoint_every=8)
    assert resumed["timings"]["steps_this_session"] == 8
    from muonft.train.checkpoint import load_weights

    a, b = (load_weights(tmp_path / d / "model.safetensors") for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["val_loss"] == whole["metrics"]["val_loss"]


def test_checkpoint_names():
    assert vision.pretrain_checkpoint_name({"optimizer": "muon"}) == "vit-tiny-muon-s0"
    assert vision.pretrain_checkpoint_name({"steps": 300, "seed": 2}) == \
        "vit-tiny-adamw-s2-300steps"
    other = vision.pretrain_checkpoint_name({"lr": 0.5})
    assert other.startswith("vit-tiny-adamw-s0-") and len(other) == len("vit-tiny-adamw-s0-") + 6


def test_zero_steps_leave_the_pretraining_task_untouched(env):
    root, _ = env
    for method in ("full", "lora"):
        rec = finetune(dict(FT, init=str(root / "pt"), steps=0, method=method,
                            optimizer="muon"), root / f"zero-{method}", progress=False)
        m = rec["metrics"]
        assert m["forgetting"] == 0.0 and m["forgetting_acc"] == 0.0
        assert m["feature_drift"] == pytest.approx(0.0, abs=1e-6)
        assert m["target"] == m["zero_shot"] and m["update_rms"] == 0.0


@pytest.mark.parametrize("optimizer,method", [("muon", "full"), ("adamw", "lora")])
def test_finetune_learns_the_new_domain_and_measures_forgetting(env, optimizer, method):
    root, _ = env
    lr = {"full": 3e-3, "lora": 2e-2}[method]
    out = root / f"ft-{optimizer}-{method}"
    spec = dict(FT, init=str(root / "pt"), optimizer=optimizer, method=method, lr=lr)
    rec = finetune(spec, out, progress=False)
    m = rec["metrics"]
    assert rec["status"] == "done" and m["higher_is_better"] is True
    assert m["target_name"] == "val_accuracy" and m["target"] > m["zero_shot"]
    assert m["forgetting"] == pytest.approx(m["pretrain_loss_after"] - m["pretrain_loss_before"])
    assert m["forgetting"] != 0.0 and m["update_rms"] > 0
    assert {"attn_q", "mlp_in", "overall"} <= set(rec["diagnostics_update"])
    assert rec["diagnostics"]["overall"]["l2_drift"] > 0
    assert ("diagnostics_lora" in rec) == (method == "lora")
    if method == "lora":  # adapters only: the pretrained head and embeddings stay
        assert rec["diagnostics"]["head"]["l2_drift"] == 0.0
        assert rec["diagnostics"]["embedding"]["l2_drift"] == 0.0
    stored = json.loads((out / "result.json").read_text())
    assert stored["metrics"]["target"] == m["target"]
    assert finetune(spec, out, progress=False)["resumed"] == "already finished"


def test_finetune_spec_errors(env, tmp_path):
    root, _ = env
    init = str(root / "pt")
    with pytest.raises(ConfigError, match=r"task: unknown task 'mnist'"):  # pretraining task
        finetune(dict(FT, init=init, task="mnist"), tmp_path / "o")
    with pytest.raises(ConfigError, match=r"block_size: image tasks have no sequences"):
        finetune(dict(FT, init=init, block_size=64), tmp_path / "o")
    with pytest.raises(ConfigError, match=r"lora.rank: Input should be greater than 0"):
        spec_from_options(init=init, method="lora", lora_rank=0)
    with pytest.raises(ConfigError, match=r"task: 'lm:rt' .lm. does not fit init .* .vit., which "
                                          r"trains image tasks"):
        finetune(dict(FT, init=init, task="lm:rt"), tmp_path / "o")
    with pytest.raises(ConfigError, match="ViT pretraining runs on 'mnist'"):
        vision.default_pretrain_spec(task="digits")
    gpt = root / "gptlike"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"kind": "gpt", "config": {}}))
    (gpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"task: 'mnist-rot' .image. does not fit init .* "
                                          r".gpt., which trains lm tasks"):
        finetune(dict(FT, init=str(gpt)), tmp_path / "o")
    assert not (tmp_path / "o").exists()
    spec = spec_from_options(init=init)  # the ViT family's defaults
    assert (spec.task, spec.lr, spec.steps, spec.batch_size, spec.block_size) == \
        ("digits", 1e-2, 150, 64, None)


def test_sweep_runner_kind_vision(env):
    from muonft.experiments.runners import get_runner

    root, _ = env
    spec = RunSpec(kind="vision", init=str(root / "pt"), task="mnist-inv", optimizer="adamw",
                   method="lora", lr=1e-2, steps=4, batch_size=8, warmup=1, eval_every=4,
                   lora={"rank": 2, "alpha": 4.0})
    rec = get_runner("vision")(spec, root / "runner")
    assert rec["status"] == "done" and rec["spec"]["lora"]["rank"] == 2
    assert RunSpec.model_validate(rec["spec"]) == spec


def test_cli_pretrain_and_finetune(env, capsys):
    root, _ = env
    assert main(["pretrain", "--model", "vit-tiny", "--steps", "3", "--batch-size", "8",
                 "--out", str(root / "cli-pt"), "--quiet"]) == 0
    assert "val_accuracy" in capsys.readouterr().out
    assert main(["finetune", "--init", str(root / "cli-pt"), "--task", "digits", "--steps", "2",
                 "--batch-size", "8", "--method", "lora", "--rank", "2",
                 "--out", str(root / "cli-ft"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "target val_accuracy" in out and "forgetting" in out
    assert main(["pretrain", "--model", "vit-tiny", "--tokens", "100", "--quiet"]) == 2
    assert "--tokens: language-model options" in capsys.readouterr().err
