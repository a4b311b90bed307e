"""`muonft reproduce`: presets expand to valid sweeps, and the whole pipeline runs end to end
(on generated corpora in an isolated cache) into a report with every claim, resumably."""

import json
from dataclasses import replace

import numpy as np
import pytest

from muonft.cli import main
from muonft.experiments.presets import PRESETS, Preset, get_preset, sweep_specs
from muonft.experiments.sweep_spec import expand, parse_sweep_spec
from muonft.reproduce import reproduce
from muonft.store import Store


@pytest.mark.parametrize("name", sorted(n for n, p in PRESETS.items() if not p.parts))
def test_every_preset_expands_to_valid_sweeps(name):
    p = get_preset(name)
    sweeps = [parse_sweep_spec(s, name) for s in sweep_specs(p)]
    lora = "lora" in p.methods
    want = ["mismatch", *(["rank"] if p.ranks and lora else []),
            *(["variants"] if p.variants and lora else []),
            *(["lowrank"] if p.update_ranks else []), *(["drift"] if p.max_drifts else []),
            *(["joint"] if p.lora_joint else [])]
    assert [s.name for s in sweeps] == [f"{p.name}-{w}" for w in want]
    main_runs = expand(sweeps[0])
    cells = {(r.init, r.optimizer, r.method) for r in main_runs}
    inits = p.init_names()
    assert len(cells) == len(inits) * 2 * len(p.methods)  # pretrained × {AdamW, Muon} × methods
    assert {r.kind for r in main_runs} == {p.kind}
    used = [v for k, v in p.lrs.items() if k.split("/")[1] in p.methods]
    assert len(main_runs) == sum(len(v) for v in used) * len(inits) * len(p.seeds)
    for grid in used:  # ≥ 3 LRs: an interior optimum is possible
        assert len(grid) >= 3 and grid == sorted(grid)
    by_name = {s.name.removeprefix(f"{p.name}-"): expand(s) for s in sweeps}
    if "rank" in by_name:
        ranks = {r.lora.rank for r in by_name["rank"]}
        assert ranks == set(p.ranks) and len(ranks) >= 2
    if "variants" in by_name:
        assert {r.lora.variant for r in by_name["variants"]} == set(p.variants)
    if "lowrank" in by_name:
        assert {r.update_rank for r in by_name["lowrank"]} == set(p.update_ranks)
        assert {(r.optimizer, r.method) for r in by_name["lowrank"]} == {("muon", "full")}
    if "drift" in by_name:
        assert {r.max_drift for r in by_name["drift"]} == set(p.max_drifts)
    if "joint" in by_name:
        assert {(r.method, r.lora_muon) for r in by_name["joint"]} == {("lora", "joint")}
    assert len(p.seeds) >= 2  # every claim gets a CI over seeds


def test_composite_presets_name_registered_parts():
    c = get_preset("constrained")
    assert c.parts and all(get_preset(part).parts == () for part in c.parts)
    assert {get_preset(part).family for part in c.parts} == {"gpt", "hf"}
    assert get_preset("minilm-rt") is get_preset("minilm")
    assert get_preset("smollm2-lora") is get_preset("smollm2")
    assert get_preset("smollm2").methods == ("lora",)
    from muonft.experiments.presets import register_preset

    with pytest.raises(ValueError, match="part 'nope'"):
        register_preset(Preset(name="bad", description="", parts=("nope",)))


def test_preset_sizes_and_checkpoint_names():
    assert len(get_preset("cpu").seeds) >= 3
    # the cpu preset reuses what `muonft pretrain` writes by default
    assert get_preset("cpu").checkpoint_name("adamw") == "gpt-tiny-adamw-s0"
    assert get_preset("quick").checkpoint_name("muon") == "gpt-tiny-muon-s0-150steps"
    # `muonft pretrain --steps 150` writes the checkpoint the quick preset reads (one rule)
    from muonft.train.pretrain import default_out, default_spec

    for opt in ("adamw", "muon"):
        cli_spec = default_spec(optimizer=opt, steps=150)
        assert default_out(cli_spec).name == get_preset("quick").checkpoint_name(opt)
    assert default_out(default_spec(batch_size=8)).name.startswith("gpt-tiny-adamw-s0-")
    gpu = get_preset("gpu").checkpoint_name("adamw")
    assert gpu.startswith("gpt-small-adamw-s0-3000steps-") and len(gpu.split("-")[-1]) == 6
    assert get_preset("quick").corpora() == ["kjv", "rt"]


def test_unknown_preset_is_one_line_exit_2(capsys):
    assert main(["reproduce", "--preset", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown preset 'huge'" in err[0] and "quick" in err[0]


@pytest.fixture
def tiny_preset(tmp_path, monkeypatch):
    monkeypatch.setenv("MUONFT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    a = ["in", "the", "beginning", "god", "created", "heaven", "and", "earth", "light"]
    b = ["this", "film", "is", "a", "funny", "dull", "movie", "great", "plot", "bad"]
    pre_c, tgt_c = tmp_path / "pre.txt", tmp_path / "tgt.txt"
    pre_c.write_text("\n\n".join(" ".join(rng.choice(a, 60)) for _ in range(40)))
    tgt_c.write_text("\n\n".join(" ".join(rng.choice(b + a[:3], 60)) for _ in range(40)))
    pre = f"file:{pre_c}"
    return Preset(
        name="tiny-test", description="test", pretrain_steps=3,
        pretrain={"batch_size": 2, "block_size": 32, "corpus": pre, "tokenizer_corpus": pre,
                  "vocab_size": 300, "eval_every": 0, "eval_batches": 2, "warmup": 1},
        finetune={"task": f"lm:file:{tgt_c}", "steps": 2, "batch_size": 2, "block_size": 32,
                  "warmup": 1, "eval_every": 2, "eval_batches": 1},
        lrs={"adamw/full": [1e-3, 1e-2], "muon/full": [1e-3, 1e-2],
             "adamw/lora": [1e-3, 1e-2], "muon/lora": [1e-3, 1e-2]},
        seeds=(0,), ranks=(2,), variants=("rslora",), max_extensions=0, toy_seeds=2,
        toy_size=(4, 8, 3), toy_step_fraction=1e-3)


@pytest.mark.slow
def test_reproduce_end_to_end_and_resume(tiny_preset, tmp_path):
    out = tmp_path / "proj"
    logs: list[str] = []
    res = reproduce(tiny_preset, out, workers=0, progress=False, log=logs.append)
    assert res.report == out / "report" / "report.md" and res.report.exists()
    assert set(res.stages) == {"data", "pretrain", "sweeps", "toy", "report"}
    assert res.sweeps == ["tiny-test-mismatch", "tiny-test-rank", "tiny-test-variants"]
    for opt in ("adamw", "muon"):
        run = json.loads((res.checkpoints[opt] / "run.json").read_text())
        assert run["status"] == "done" and run["spec"]["optimizer"] == opt
    with Store(out, create=False) as st:
        counts = st.status_counts()
        n_runs = sum(counts.values())
        # 8 cells × 2 LRs + rank 2 (2 optimizers × 2 LRs) + rslora (Muon, 2 LRs); rank-8 LoRA
        # runs of the rank sweep are the mismatch sweep's own runs (same ids)
        assert n_runs == 16 + 4 + 2 and counts.get("done") == n_runs
        assert set(st.sweeps()) == set(res.sweeps)
    text = res.report.read_text()
    for claim in ("| 1a |", "| 1b |", "| 1c |", "| 2 |", "| 2b |", "| 2c |", "| 3a |", "| 3b |",
                  "| 4a |", "| 4b |", "| 5 (rslora) |", "| 6a |", "| 6b |"):
        assert claim in text, claim
    assert "Claim 1: implicit bias" in text
    assert (out / "report" / "toy_norms.png").stat().st_size > 1000
    # bounded disk: finished sweep runs keep their result.json, not their checkpoints
    assert not list(out.glob("runs/*/ckpt")) and len(list(out.glob("runs/*/result.json"))) == 22
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 100 * 2**20
    assert "<pre>" in (out / "report" / "report.html").read_text()
    for spec in out.glob("specs/*.yaml"):  # the written specs are valid `muonft sweep` input
        from muonft.experiments.sweep_spec import load_sweep_spec

        assert load_sweep_spec(spec).name in res.sweeps
    # rerun: data and checkpoints reused, no run repeated, toy reused, report rewritten
    logs.clear()
    res2 = reproduce(tiny_preset, out, workers=0, progress=False, log=logs.append)
    assert sum("reused" in m for m in logs) == 2 and any("toy: reusing" in m for m in logs)
    assert any("0 run now" in m for m in logs)
    with Store(out, create=False) as st:
        assert sum(st.status_counts().values()) == n_runs
    assert res2.report.exists()


def test_hf_family_preset_fine_tunes_given_models_without_pretraining():
    from muonft.analysis.aggregate import pretrained_with

    p = Preset(name="hf-test", description="t", family="hf", inits={"adamw": "minilm"},
               finetune={"task": "rt-sentiment", "steps": 5},
               lrs={"adamw/full": [1e-5, 3e-5, 1e-4], "muon/full": [1e-5, 3e-5, 1e-4],
                    "adamw/lora": [1e-4, 3e-4, 1e-3], "muon/lora": [1e-4, 3e-4, 1e-3]},
               seeds=(0, 1), ranks=(2,), rank_pretrained=("adamw", "muon"))
    assert p.corpora() == ["rt", "kjv"] and p.init_names() == {"adamw": "minilm"}
    sweeps = [parse_sweep_spec(s, "t") for s in sweep_specs(p)]
    cells = {(r.init, r.optimizer, r.method) for r in expand(sweeps[0])}
    assert cells == {("minilm", o, m) for o in ("adamw", "muon") for m in ("full", "lora")}
    assert {r.init for r in expand(sweeps[1])} == {"minilm"}  # no Muon-pretrained MiniLM
    assert pretrained_with("minilm") == "adamw" and pretrained_with("hf:org/llama") == "adamw"
    assert pretrained_with("hf:moonshotai/Moonlight-16B") == "muon"
    with pytest.raises(ValueError, match="needs inits"):
        from muonft.experiments.presets import register_preset

        register_preset(Preset(name="bad", description="", family="hf"))


@pytest.mark.slow
def test_constrained_sweeps_and_composite_preset(tiny_preset, tmp_path, monkeypatch):
    """A preset with the constrained-update sweeps, run as a part of a composite preset: the
    part's report has the constrained section and figures; the index links and summarises."""
    from muonft.experiments import presets as rp

    part = replace(tiny_preset, name="tiny-con", pretrained=("adamw",), ranks=(),
                          variants=(), update_ranks=(2,), max_drifts=(0.05,), lora_joint=True,
                          toy_seeds=0)
    monkeypatch.setitem(rp.PRESETS, "tiny-con", part)
    combo = Preset(name="tiny-combo", description="parts", parts=("tiny-con",))
    monkeypatch.setitem(rp.PRESETS, "tiny-combo", combo)
    out = tmp_path / "combo"
    res = reproduce("tiny-combo", out, workers=0, progress=False, log=lambda m: None)
    assert res.sweeps == ["tiny-con-mismatch", "tiny-con-lowrank", "tiny-con-drift",
                          "tiny-con-joint"]
    assert set(res.checkpoints) == {"adamw"}  # only the AdamW-pretrained model is needed
    with Store(out / "tiny-con", create=False) as st:
        runs = st.runs()
        specs = [r for r in runs.spec]
        assert {s.get("update_rank") for s in specs} == {None, 2}
        assert {s.get("max_drift") for s in specs} == {None, 0.05}
        assert {s.get("lora_muon") for s in specs} == {None, "joint"}
        assert set(runs.status) == {"done"}
        drift_runs = [r.id for r in runs.itertuples() if r.spec.get("max_drift")]
        m = st.metrics()
        bound = m[m.run_id.isin(drift_runs) & (m.name == "drift_max")].value
        assert len(bound) and (bound <= 0.05 + 1e-6).all()  # the budget holds in every run
    part_report = (out / "tiny-con" / "report" / "report.md").read_text()
    assert "Constrained-update Muon vs AdamW full fine-tuning" in part_report
    for scheme in ("Muon full", "Muon update_rank=2", "Muon max_drift=0.05",
                   "Muon LoRA joint r8"):
        assert f"| {scheme} |" in part_report, scheme
    assert (out / "tiny-con" / "report" / "constrained_gap.png").stat().st_size > 1000
    assert (out / "tiny-con" / "report" / "constrained_frontier.png").stat().st_size > 1000
    index = res.report.read_text()
    assert res.report == out / "report" / "report.md"
    assert "tiny-con: test" in index and "../tiny-con/report/report.md" in index
    assert "| 2 |" in index  # the part's claims table
    assert "| Muon update_rank=2 |" in index and "Schemes meeting the target:" in index


@pytest.mark.slow
def test_vision_preset_end_to_end(tmp_path, monkeypatch):
    from image_fakes import fake_sources

    monkeypatch.setenv("MUONFT_CACHE", str(tmp_path / "cache"))
    served = fake_sources(monkeypatch)
    p = Preset(name="tiny-vision", description="t", family="vision", model="vit-tiny",
               pretrain_steps=3, pretrain_batch_size=8,
               pretrain={"eval_every": 0, "eval_batches": 1, "warmup": 1},
               finetune={"task": "digits", "steps": 2, "batch_size": 8, "warmup": 1,
                         "eval_every": 2, "eval_batches": 1},
               lrs={"adamw/full": [1e-3, 1e-2], "muon/full": [1e-3, 1e-2],
                    "adamw/lora": [1e-3, 1e-2], "muon/lora": [1e-3, 1e-2]},
               seeds=(0,), ranks=(2,), variants=("rslora",), max_extensions=0, toy_seeds=0)
    assert p.image_sets() == ["mnist", "digits"] and p.corpora() == []
    assert p.checkpoint_name("adamw").startswith("vit-tiny-adamw-s0-3steps")
    out = tmp_path / "vis"
    res = reproduce(p, out, workers=0, progress=False, log=lambda m: None)
    assert served["calls"] == 2  # both image sets fetched once, nothing else
    for opt in ("adamw", "muon"):
        run = json.loads((res.checkpoints[opt] / "run.json").read_text())
        assert run["status"] == "done" and run["spec"]["optimizer"] == opt
    with Store(out, create=False) as st:
        runs = st.runs()
        assert set(runs.status) == {"done"} and {s["kind"] for s in runs.spec} == {"vision"}
        assert sum(st.status_counts().values()) == 16 + 4 + 2
    text = res.report.read_text()
    assert "| 2 |" in text and "| 4b |" in text and "Best learning rate per cell" in text
