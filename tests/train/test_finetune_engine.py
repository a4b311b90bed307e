"""The fine-tuning engine's options: LoRA-One, per-group update RMS, LoRA and periodic
diagnostics, Muon options, and their CLI flags (issue 4)."""

import json
import math
import subprocess
import sys

import pytest
import torch

from muonft.cli import main
from muonft.errors import ConfigError
from muonft.spec import RunSpec
from muonft.train import finetune as ft
from muonft.train.families.gpt import load_pretrained
from muonft.train.finetune import finetune
from muonft.train.loop import TrainConfig, lr_multiplier
from muonft.train.plugins import TaskData, spec_from_options
from muonft.train.pretrain import build_optimizer

LR = 1e-2


@pytest.fixture(scope="module")
def muon_run(ft_env, tmp_path_factory):
    """One full Muon run of 4 steps with diagnostics every 2 steps, shared by several tests."""
    return finetune(_spec(ft_env, diag_every=2), tmp_path_factory.mktemp("muon_run"),
                    progress=False)


def _spec(ft_env, **kw):
    root, task = ft_env
    return dict(init=str(root / "pt"), task=task, steps=4, batch_size=2, block_size=32,
                eval_every=0, eval_batches=2, warmup=1, lr=LR) | kw


# --- LoRA-One ---------------------------------------------------------------------------------
def test_lora_one_gradient_batches_are_outside_the_training_stream():
    asked = []

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(2, 2))

        def forward(self, x, y):
            return None, (self.w * x).sum()

    def get_batch(step):
        asked.append(step)
        return torch.ones(2, 2), torch.zeros(2, 2)

    model = Model()
    data = TaskData(get_batch, lambda m, b: m(*b)[1], None, None, "")
    ft.lora_one_grad_fn(data)(model)
    assert asked == [2**32 + i for i in range(ft.LORA_ONE_BATCHES)]
    # Mean over the batches: the gradient of one batch's loss, not four times it.
    assert torch.equal(model.w.grad, torch.ones(2, 2))


def test_lora_one_run_init_has_spectral_norm_s_over_gamma(ft_env, tmp_path):
    rec = finetune(_spec(ft_env, method="lora", lora_variant="lora_one", steps=0),
                   tmp_path / "r", progress=False)
    lora = rec["diagnostics_lora"]
    s = 16.0 / math.sqrt(8)  # rsLoRA scaling of LoRA-One, α = 16, r = 8
    assert set(lora) >= {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_in", "mlp_out"}
    for group in lora.values():
        assert set(group) == {"A", "B", "BA"}
        assert group["BA"]["spectral_norm"] == pytest.approx(s / 64.0, rel=1e-4)
        assert group["BA"]["stable_rank"] <= 8 + 1e-6
    # The model at step 0 is W₀ + s·B₀A₀ (the study keeps the frozen weight), so it moved.
    assert rec["diagnostics"]["overall"]["l2_drift"] > 0


def test_plain_lora_run_has_lora_diagnostics_and_full_run_none(ft_env, tmp_path, muon_run):
    rec = finetune(_spec(ft_env, method="lora", optimizer="adamw"), tmp_path / "l",
                   progress=False)
    doc = json.loads((tmp_path / "l" / "result.json").read_text())
    assert doc["diagnostics_lora"] == rec["diagnostics_lora"]
    assert rec["diagnostics_lora"]["overall"]["BA"]["stable_rank"] >= 1.0
    assert "diagnostics_lora" not in muon_run


# --- per-group update RMS ---------------------------------------------------------------------
def test_update_rms_per_group_matches_the_muon_scale_rule(ft_env, tmp_path, muon_run):
    m, c = muon_run["metrics"], muon_run["curves"]
    # match_adamw_rms: an orthogonalized update of rank k has RMS 0.2·lr_t·√(k/min(m, n)), at
    # most 0.2·lr_t (this corpus has a dozen words, so gradients are far from full rank).
    cfg = TrainConfig(steps=4, warmup=1)
    rows = zip(c["update_rms_muon"], c["update_rms_adamw"], c["update_rms"])
    for (step, mu), (_, ad), (_, pooled) in rows:
        assert 0 < mu <= 0.2 * LR * lr_multiplier(step - 1, cfg) * 1.02
        assert min(mu, ad) <= pooled <= max(mu, ad)  # pooled over both groups
    assert [s for s, _ in c["update_rms"]] == [1, 2, 3, 4]
    for k in ("update_rms", "update_rms_muon", "update_rms_adamw"):
        assert m[k] == pytest.approx(sum(v for _, v in c[k]) / 4)
    a = finetune(_spec(ft_env, optimizer="adamw"), tmp_path / "adamw", progress=False)
    assert "update_rms_muon" not in a["metrics"]
    assert a["metrics"]["update_rms"] == pytest.approx(a["metrics"]["update_rms_adamw"])


def test_resumed_run_keeps_every_step_of_its_curves_and_means(ft_env, tmp_path, monkeypatch,
                                                              muon_run):
    """Update-RMS and diagnostics curves live in the checkpoint: a run killed after step 3
    and resumed from step 2 records exactly what the uninterrupted run records."""
    real_train = ft.train

    def killed_at_3(*args, on_step, **kw):
        def hook(step, loss):
            out = on_step(step, loss)
            if step == 3:
                raise RuntimeError("killed")
            return out
        return real_train(*args, on_step=hook, **kw)

    spec = _spec(ft_env, diag_every=2)
    monkeypatch.setattr(ft, "train", killed_at_3)
    with pytest.raises(RuntimeError, match="killed"):
        finetune(spec, tmp_path / "r", progress=False, checkpoint_every=2)
    monkeypatch.setattr(ft, "train", real_train)
    rec = finetune(spec, tmp_path / "r", progress=False, checkpoint_every=2)
    assert rec["status"] == "done"
    for k in ("update_rms", "update_rms_muon", "update_rms_adamw", "diag_l2_drift"):
        assert rec["curves"][k] == muon_run["curves"][k], k
    for k in ("update_rms", "update_rms_muon", "update_rms_adamw", "target", "test"):
        assert rec["metrics"][k] == muon_run["metrics"][k], k
    assert [s for s, _ in rec["curves"]["update_rms_muon"]] == [1, 2, 3, 4]


# --- periodic diagnostics -----------------------------------------------------------------------
def test_diag_every_gives_curves_ending_at_the_final_diagnostics(muon_run, ft_env, tmp_path):
    rec = muon_run
    c = rec["curves"]
    for k in ("diag_l2_drift", "diag_stable_rank", "diag_spectral_entropy",
              "diag_cosine_to_init", "diag_update_stable_rank"):
        assert [s for s, _ in c[k]] == [2, 4]
    drift = [v for _, v in c["diag_l2_drift"]]
    assert 0 < drift[0] < drift[1]
    assert drift[-1] == pytest.approx(rec["diagnostics"]["overall"]["l2_drift"])
    assert c["diag_stable_rank"][-1][1] == pytest.approx(
        rec["diagnostics"]["overall"]["stable_rank"])
    assert not any(k.startswith("diag_") for k in finetune(
        _spec(ft_env, steps=0), tmp_path / "n", progress=False)["curves"])


def test_diag_curves_land_in_the_store(muon_run, tmp_path):
    from muonft.store import Store

    rec = muon_run
    store = Store(tmp_path / "store")
    store.record_result(rec, run_id="r1")
    got = store.curves(["r1"])
    store.close()
    assert sorted(got[got.name == "diag_l2_drift"].step) == [2, 4]


# --- Muon options, LoRA options and the partition ------------------------------------------------
def test_muon_options_reach_the_optimizer(ft_env):
    root, _ = ft_env
    spec = spec_from_options(**_spec(ft_env, orthogonalizer="exact_thin", ns_steps=3,
                                     momentum=0.9, nesterov=False, adamw_lr_ratio=0.25,
                                     scale="lora_balanced"))
    model, _, _ = load_pretrained(root / "pt")
    opt = build_optimizer(model, "muon", spec.lr, 0.0, **spec.optimizer_kwargs())
    muon = [g for g in opt.param_groups if g["use_muon"]]
    adamw = [g for g in opt.param_groups if not g["use_muon"]]
    assert muon and adamw
    for g in muon:
        assert (g["orthogonalizer"], g["ns_steps"], g["momentum"], g["nesterov"], g["scale"],
                g["lr"]) == ("exact_thin", 3, 0.9, False, "lora_balanced", LR)
    assert all(g["lr"] == pytest.approx(0.25 * LR) for g in adamw)
    assert spec_from_options(**_spec(ft_env, optimizer="adamw")).optimizer_kwargs() == {}


def test_adamw_lr_ratio_scales_only_the_adamw_groups(ft_env, tmp_path, muon_run):
    d = [muon_run["diagnostics"], finetune(_spec(ft_env, adamw_lr_ratio=0.01), tmp_path / "r",
                                           progress=False)["diagnostics"]]
    # Adam's step is ~lr·sign-like, so the embedding's drift shrinks with its lr ...
    assert d[1]["embedding"]["l2_drift"] < 0.05 * d[0]["embedding"]["l2_drift"]
    # ... while the Muon matrices move as before (their update size is set by the scale rule).
    assert d[1]["attn_q"]["l2_drift"] == pytest.approx(d[0]["attn_q"]["l2_drift"], rel=0.2)


def test_lora_exact_thin_dropout_and_targets_run(ft_env, tmp_path):
    rec = finetune(_spec(ft_env, method="lora", orthogonalizer="exact_thin", lora_dropout=0.1,
                         lora_targets=("attn.q", "attn.v"), scale="lora_balanced"),
                   tmp_path / "r", progress=False)
    assert rec["status"] == "done"
    assert rec["spec"]["lora"]["targets"] == ["attn.q", "attn.v"]
    assert set(rec["diagnostics_lora"]) == {"attn_q", "attn_v", "overall"}
    moved = {g for g, row in rec["diagnostics"].items() if row["l2_drift"] > 0}
    assert moved == {"attn_q", "attn_v", "overall"}
    # The stored spec (a list) matches a rerun's, so the finished run is returned.
    again = finetune(_spec(ft_env, method="lora", orthogonalizer="exact_thin",
                           lora_dropout=0.1, lora_targets=["attn.q", "attn.v"],
                           scale="lora_balanced"), tmp_path / "r", progress=False)
    assert again["resumed"] == "already finished"


def test_muon_applies_to_exactly_the_adapter_factors(ft_env):
    from muonft.adapters import LoRASpec, apply_lora, lora_factors

    root, _ = ft_env
    model, _, _ = load_pretrained(root / "pt")
    model = apply_lora(model, LoRASpec(rank=4))
    opt = build_optimizer(model, "muon", LR, 0.0, **RunSpec(lr=LR).optimizer_kwargs())
    factors = {id(t) for _, A, B, _ in lora_factors(model) for t in (A, B)}
    in_muon = {id(p) for g in opt.param_groups if g["use_muon"] for p in g["params"]}
    in_any = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_muon == factors == in_any
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        for _, _, B, _ in lora_factors(model):
            B.normal_(std=0.1)
    x = torch.randint(0, 300, (2, 16))
    model(x, x)[1].backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)


def test_lora_balanced_needs_no_adapter_import():
    code = ("import sys; from muonft.optim import Muon; import torch; "
            "Muon([torch.nn.Parameter(torch.ones(2, 8))], scale='lora_balanced'); "
            "assert 'muonft.adapters' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- specs, resume, errors -------------------------------------------------------------------
def test_result_json_of_an_older_version_still_resumes(ft_env, tmp_path):
    """A result.json with the flat spec of earlier versions (options added since missing)
    is the same run: returned as finished, not refused."""
    rec = finetune(_spec(ft_env, steps=0), tmp_path / "r", progress=False)
    path = tmp_path / "r" / "result.json"
    doc = json.loads(path.read_text())
    flat = {**{k: v for k, v in doc["spec"].items() if k not in ("lora", "muon", "kind",
                                                                  "model", "diag_every")},
            "scale": "match_adamw_rms", "lora_rank": None, "lora_alpha": None}
    path.write_text(json.dumps({**doc, "spec": flat}))
    again = finetune(_spec(ft_env, steps=0), tmp_path / "r", progress=False)
    assert again["resumed"] == "already finished"
    assert again["metrics"] == rec["metrics"]
    with pytest.raises(ConfigError, match=r"differs in \['muon'\]"):
        finetune(_spec(ft_env, steps=0, orthogonalizer="ns5"), tmp_path / "r", progress=False)


@pytest.mark.parametrize(("kw", "msg"), [
    (dict(method="lora", lora_rank=0), "lora.rank: Input should be greater than 0 .got 0."),
    (dict(method="lora", lora_variant="lora_two"), "lora.variant: Input should be 'lora'"),
    (dict(method="lora", lora_dropout=1.0), "lora.dropout: Input should be less than 1"),
    (dict(orthogonalizer="qr"), "muon.orthogonalizer: Input should be 'ns5'"),
    (dict(ns_steps=0), "muon.ns_steps: Input should be greater than 0"),
    (dict(momentum=1.0), "muon.momentum: Input should be less than 1"),
    (dict(adamw_lr_ratio=-1.0), "muon.adamw_lr_ratio: Input should be greater than 0"),
    (dict(diag_every=-2), "diag_every: Input should be greater than or equal to 0 .got -2."),
    (dict(block_size=0), "block_size: Input should be greater than 0 .got 0."),
    (dict(lr=float("inf")), "lr: Input should be a finite number"),
    (dict(weight_decay=float("inf")), "weight_decay: Input should be a finite number"),
])
def test_bad_spec_values(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        spec_from_options(**kw)


def test_unknown_scale_rule_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match=r"muon.scale: unknown scale rule 'huge'"):
        finetune(RunSpec(lr=0.01, muon={"scale": "huge"}), tmp_path / "o")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("kw", "msg"), [
    (dict(lora_rank=10_000), r"rank 10000 exceeds min\(in, out\) = 128"),
    (dict(lora_targets=["attn.zz"]), "LoRA target 'attn.zz' matches no linear module"),
])
def test_bad_lora_settings_for_the_model(ft_env, tmp_path, kw, msg):
    with pytest.raises(ConfigError, match=msg):
        finetune(_spec(ft_env, method="lora", **kw), tmp_path / "r", progress=False)


# --- CLI -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("args", "msg"), [
    (["--orthogonalizer", "qr"], "muon.orthogonalizer: Input should be 'ns5'"),
    (["--scale", "huge"], "muon.scale: unknown scale rule 'huge'"),
    (["--diag-every", "-1"], "diag_every: Input should be greater than or equal to 0 (got -1)"),
    (["--block-size", "0"], "block_size: Input should be greater than 0 (got 0)"),
    (["--batch-size", "0"], "batch_size: Input should be greater than 0 (got 0)"),
    (["--eval-batches", "0"], "eval_batches: Input should be greater than 0 (got 0)"),
    (["--method", "lora", "--dropout", "1.5"], "lora.dropout: Input should be less than 1"),
    (["--method", "lora", "--variant", "lora_two"], "lora.variant: Input should be 'lora'"),
])
def test_cli_bad_option_values(args, msg, tmp_path, capsys, tmp_cache):
    assert main(["finetune", "--out", str(tmp_path / "o"), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0]
    assert not (tmp_path / "o").exists()


def test_cli_lora_one_with_muon_options(ft_env, tmp_path, capsys):
    root, task = ft_env
    out = tmp_path / "o"
    assert main(["finetune", "--init", str(root / "pt"), "--task", task, "--method", "lora",
                 "--variant", "lora_one", "--orthogonalizer", "exact_thin", "--scale",
                 "lora_balanced", "--diag-every", "1", "--block-size", "32", "--batch-size",
                 "2", "--eval-batches", "2", "--steps", "2", "--dropout", "0.05",
                 "--out", str(out), "--quiet"]) == 0
    doc = json.loads((out / "result.json").read_text())
    assert doc["status"] == "done"
    spec = RunSpec.model_validate(doc["spec"])
    assert (spec.lora.variant, spec.lora.dropout, spec.muon.orthogonalizer, spec.muon.scale,
            spec.diag_every, spec.block_size, spec.batch_size, spec.eval_batches) == (
        "lora_one", 0.05, "exact_thin", "lora_balanced", 1, 32, 2, 2)
    assert [s for s, _ in doc["curves"]["diag_l2_drift"]] == [1, 2]
    assert "diagnostics_lora" in doc


# --- bounded disk ------------------------------------------------------------------------------
def test_finished_runs_keep_only_the_checkpoints_asked_for(ft_env, tmp_path, muon_run):
    spec = _spec(ft_env, diag_every=2)
    rec = finetune(spec, tmp_path / "none", progress=False, checkpoint_every=1,
                   keep_checkpoints=0)
    assert not (tmp_path / "none" / "ckpt").exists()
    assert rec["metrics"] == muon_run["metrics"]  # deleting changes nothing measured
    finetune(spec, tmp_path / "one", progress=False, checkpoint_every=1, keep_checkpoints=1)
    assert [p.name for p in (tmp_path / "one" / "ckpt").glob("step-*")] == ["step-0000004"]


def test_a_kill_while_checkpoints_are_deleted_leaves_a_correct_run(ft_env, tmp_path):
    """The record is written before the checkpoints go: a run killed in between is finished
    (its rerun returns the same record and completes the deletion), never resumed from a
    half-deleted checkpoint."""
    out = tmp_path / "r"
    rec = finetune(_spec(ft_env), out, progress=False, checkpoint_every=2)  # keeps them all
    for f in sorted((out / "ckpt").rglob("*.safetensors"))[:1]:  # a deletion cut short
        f.unlink()
    again = finetune(_spec(ft_env), out, progress=False, keep_checkpoints=0)
    assert again["resumed"] == "already finished" and again["metrics"] == rec["metrics"]
    assert not (out / "ckpt").exists()


def test_alpha_2r_gives_peft_a_scaling_of_2_at_every_rank(ft_env, tmp_path):
    """The study ties α = 2r: the adapters PEFT builds scale BA by α/r = 2 at any rank."""
    from muonft.adapters import apply_lora, lora_layers
    from muonft.train.finetune import lora_spec

    root, _ = ft_env
    for rank in (1, 4, 32):
        spec = spec_from_options(**_spec(ft_env, method="lora", lora_rank=rank,
                                         lora_alpha="2r"))
        assert spec.lora.alpha == "2r" and lora_spec(spec).alpha == 2.0 * rank
        model = apply_lora(load_pretrained(root / "pt")[0], lora_spec(spec))
        scales = {layer.scaling["default"] for layer in lora_layers(model).values()}
        assert scales == {2.0}
    rec = finetune(_spec(ft_env, method="lora", lora_rank=2, lora_alpha="2r", steps=1),
                   tmp_path / "r", progress=False)
    assert rec["spec"]["lora"]["alpha"] == "2r"
