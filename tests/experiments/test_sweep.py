"""The sweep executor: exactly-once under SIGKILL, crashes recorded, adaptive grids, CLI."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from muonft.cli import main
from muonft.experiments.runners import register_runner
from muonft.experiments.sweep import run_sweep
from muonft.experiments.sweep_spec import expand, parse_sweep_spec
from muonft.spec import run_id
from muonft.store import Store

CALLS: list[float] = []


def counting_runner(spec, run_dir):
    """An in-process runner (workers=0) that records its calls."""
    CALLS.append(spec.lr)
    return {"status": "done", "metrics": {"target": abs(spec.lr - 0.01), "test": 0.0}}


def _sweep(task="synthetic", lrs=(1e-3, 1e-2, 1e-1), seeds=(0,), adaptive=None, **base):
    return parse_sweep_spec({
        "name": "t", "base": {"kind": "synthetic", "task": task, **base},
        "grid": {"optimizer": ["adamw", "muon"], "lr": list(lrs)}, "seeds": list(seeds),
        "adaptive": adaptive or {"enabled": False}})


def _db(out: Path):
    return sqlite3.connect(out / "results.sqlite")


def test_crashing_and_diverging_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    s = _sweep(task="synthetic:crash_lr=0.01,diverge_lr=0.1")
    summary = run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)
    assert summary.counts["done"] == 2 and summary.counts["failed"] == 2
    assert summary.counts["diverged"] == 2
    rows = _db(tmp_path).execute(
        "SELECT error, traceback FROM runs WHERE status='failed'").fetchall()
    assert all("synthetic crash" in e and "Traceback" in tb and "RuntimeError" in tb
               for e, tb in rows)
    # a rerun skips done/diverged and retries failed ones (they fail again, once)
    again = run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)
    assert again.skipped == 4 and again.ran == 2
    assert _db(tmp_path).execute("SELECT MAX(attempts) FROM runs").fetchone()[0] == 2


def test_registered_in_process_runner_and_skip_on_rerun(tmp_path):
    register_runner("counting", counting_runner)
    s = parse_sweep_spec({"name": "c", "base": {"kind": "counting"},
                          "grid": {"lr": [0.001, 0.01, 0.1]}, "seeds": [0, 1],
                          "adaptive": {"enabled": False}})
    CALLS.clear()
    run_sweep(s, tmp_path, workers=0, progress=False)
    assert len(CALLS) == 6
    again = run_sweep(s, tmp_path, workers=0, progress=False)
    assert len(CALLS) == 6  # nothing runs twice
    # with nothing run there is no overhead ratio to speak of (not "100%")
    assert again.ran == 0 and again.line().endswith("nothing to run")


def test_adaptive_grid_extends_at_the_edge_and_stops_at_the_bound(tmp_path):
    # AdamW's optimum is lr = 10^-2.5, Muon's 10^-2: a grid of [1e-5, 3e-5] puts both at the
    # high edge; two extensions (factor 3) are not enough to reach them.
    s = _sweep(lrs=(1e-5, 3e-5), adaptive={"max_extensions": 2, "lr_factor": 3.0},
               task="synthetic:noise=0")
    summary = run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)
    assert len(summary.extensions) == 4  # 2 cells × 2 extensions, then the bound
    assert all("high edge" in m for m in summary.extensions)
    lrs = sorted({r[0] for r in _db(tmp_path).execute("SELECT json_extract(spec, '$.lr') "
                                                      "FROM runs")})
    assert lrs == pytest.approx([1e-5, 3e-5, 9e-5, 2.7e-4])
    assert len(Store(tmp_path).events("t")) == 4
    # a restart reconstructs the extensions from the store and adds none
    again = run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)
    assert again.extensions == [] and again.ran == 0


def test_adaptive_grid_stops_when_interior(tmp_path):
    s = _sweep(lrs=(1e-3, 3e-3), adaptive={"max_extensions": 5}, task="synthetic:noise=0")
    summary = run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)
    # AdamW optimum 3.2e-3 → one step up (1e-2) makes 3e-3 interior; Muon (1e-2) needs two.
    assert len(summary.extensions) == 3
    from muonft.analysis.aggregate import best_lr_table, runs_frame

    best = best_lr_table(runs_frame(Store(tmp_path)))
    assert set(best.edge) == {""}


@pytest.mark.slow
def test_worker_pool_and_a_worker_that_dies(tmp_path):
    s = _sweep(task="synthetic:hard_crash_lr=0.01", seeds=(0, 1))
    summary = run_sweep(s, tmp_path, workers=2, progress=False, quiet=True)
    assert summary.counts == {"queued": 0, "running": 0, "done": 8, "diverged": 0, "failed": 4}
    errs = {e for (e,) in _db(tmp_path).execute("SELECT error FROM runs WHERE status='failed'")}
    assert errs == {"worker process died (exit code 3)"}
    assert 0 <= summary.overhead < 1


@pytest.mark.slow
def test_sigkill_mid_sweep_then_restart_runs_everything_exactly_once(tmp_path):
    spec = {"name": "k", "base": {"kind": "synthetic", "task": "synthetic:sleep=0.25"},
            "grid": {"optimizer": ["adamw", "muon"], "lr": [1e-3, 3e-3, 1e-2, 3e-2]},
            "seeds": [0, 1, 2], "adaptive": {"enabled": False}}
    path = tmp_path / "k.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "muonft", "sweep", str(path), "--out", str(out),
           "--workers", "2", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 60
    done = 0
    while time.time() < deadline and done < 4:
        time.sleep(0.2)
        if (out / "results.sqlite").exists():
            with contextlib.suppress(sqlite3.OperationalError):
                done = _db(out).execute(
                    "SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
    os.kill(proc.pid, signal.SIGKILL)  # the executor only; its workers die with it
    proc.wait()
    db = _db(out)
    before = dict(db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    assert before.get("done", 0) >= 4 and before.get("done", 0) < 24
    assert before.get("running", 0) >= 1  # claims left behind by the dead executor
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ids = {run_id(x) for x in expand(parse_sweep_spec(spec))}
    rows = db.execute("SELECT id, status, attempts FROM runs").fetchall()
    assert {i for i, _, _ in rows} == ids and len(rows) == 24  # none lost, none duplicated
    assert all(s == "done" for _, s, _ in rows)
    # each run has exactly one result (one metrics set)
    per_run = db.execute("SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id").fetchall()
    assert len(per_run) == 24 and len({n for _, n in per_run}) == 1
    # only the runs interrupted by the kill were started twice
    assert sum(a for _, _, a in rows) == 24 + before.get("running", 0)


def test_cli_invalid_yaml_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nbase: {kind: synthetic, lr: 0.1, lora: {rank: -4}}\n")
    out = tmp_path / "out"
    assert main(["sweep", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "base.lora.rank" in err
    assert not out.exists()
    bad.write_text("name: x\nbase: {kind: nosuchkind, lr: 0.1}\n")
    assert main(["sweep", str(bad), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "nosuchkind" in err and "synthetic" in err and not out.exists()


def test_cli_sweep_runs_and_report(tmp_path, capsys):
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump({
        "name": "g", "base": {"kind": "synthetic", "task": "synthetic"},
        "grid": {"optimizer": ["adamw", "muon"], "lr": [1e-3, 1e-2]},
        "adaptive": {"enabled": False}}))
    assert main(["sweep", str(good), "--out", str(tmp_path / "o"), "--workers", "0",
                 "--quiet"]) == 0
    assert "4 done" in capsys.readouterr().out
    assert main(["runs", str(tmp_path / "o"), "--status", "done"]) == 0
    assert capsys.readouterr().out.count("done") == 4
    assert main(["runs", str(tmp_path / "nothing")]) == 2
