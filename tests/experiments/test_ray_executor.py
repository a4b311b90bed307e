"""The Ray sweep executor: a local Ray cluster (loopback) runs a sweep into the store, the
driver stays the only store writer, and a killed driver's sweep completes exactly once."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from muonft.cli import main
from muonft.experiments.sweep import run_sweep
from muonft.experiments.sweep_spec import expand, parse_sweep_spec
from muonft.spec import run_id
from muonft.store import Store

ray = pytest.importorskip("ray")


def _spec(sleep=0.0, lrs=(1e-3, 1e-2)):
    return {"name": "r", "base": {"kind": "synthetic", "task": f"synthetic:sleep={sleep}"},
            "grid": {"optimizer": ["adamw", "muon"], "lr": list(lrs)}, "seeds": [0],
            "adaptive": {"enabled": False}}


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield
    ray.shutdown()


def test_ray_sweep_into_the_store_and_skip_on_rerun(local_ray, tmp_path):
    s = parse_sweep_spec(_spec())
    summary = run_sweep(s, tmp_path, executor="ray", progress=False, quiet=True)
    assert summary.counts["done"] == 4 and summary.ran == 4 and summary.workers == 2
    with Store(tmp_path, create=False) as st:
        runs = st.runs()
        assert set(runs.id) == {run_id(x) for x in expand(s)}
        assert (runs.attempts == 1).all() and runs.host.notna().all()
        m = st.metrics()
        assert m.groupby("run_id").size().nunique() == 1 and len(m.run_id.unique()) == 4
    again = run_sweep(s, tmp_path, executor="ray", progress=False, quiet=True)
    assert again.ran == 0 and again.skipped == 4


def test_a_crashing_ray_task_is_recorded_failed(local_ray, tmp_path):
    s = parse_sweep_spec({**_spec(), "base": {"kind": "synthetic",
                                              "task": "synthetic:crash_lr=0.01"}})
    summary = run_sweep(s, tmp_path, executor="ray", progress=False, quiet=True)
    assert summary.counts["done"] == 2 and summary.counts["failed"] == 2
    with Store(tmp_path, create=False) as st:
        failed = st.runs(status="failed")
        assert failed.error.str.startswith("RuntimeError").all()
        assert failed.traceback.str.contains("Traceback").all()


@pytest.mark.slow
def test_killed_ray_driver_then_restart_completes_exactly_once(tmp_path):
    spec = _spec(sleep=1.5, lrs=(1e-3, 3e-3, 1e-2, 3e-2))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "muonft", "sweep", str(path), "--out", str(out),
           "--executor", "ray", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    db = out / "results.sqlite"
    deadline, done = time.time() + 90, 0
    while time.time() < deadline and done < 2:
        time.sleep(0.2)
        if db.exists():
            with contextlib.suppress(sqlite3.OperationalError):
                done = sqlite3.connect(db).execute(
                    "SELECT COUNT(*) FROM runs WHERE status='done'").fetchone()[0]
    os.kill(proc.pid, signal.SIGKILL)  # the driver only: its Ray instance goes with it
    proc.wait()
    before = dict(sqlite3.connect(db).execute(
        "SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())
    assert 2 <= before.get("done", 0) < 8
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rows = sqlite3.connect(db).execute("SELECT id, status, attempts FROM runs").fetchall()
    assert {i for i, _, _ in rows} == {run_id(x) for x in expand(parse_sweep_spec(spec))}
    assert len(rows) == 8 and all(s == "done" for _, s, _ in rows)
    # only runs claimed by the dead driver ran again
    assert sum(a for _, _, a in rows) == 8 + before.get("running", 0)
    per_run = sqlite3.connect(db).execute(
        "SELECT run_id, COUNT(*) FROM metrics GROUP BY run_id").fetchall()
    assert len(per_run) == 8 and len({n for _, n in per_run}) == 1


def test_cli_executor_errors_are_one_line(tmp_path, capsys):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(_spec()))
    assert main(["sweep", str(path), "--executor", "slurm", "--out", str(tmp_path)]) == 2
    assert "--executor must be one of local, ray" in capsys.readouterr().err
    assert main(["sweep", str(path), "--address", "1.2.3.4:6379", "--out",
                 str(tmp_path)]) == 2
    assert "only used with --executor ray" in capsys.readouterr().err
    assert not (tmp_path / "results.sqlite").exists()
