"""Faults under a multi-worker sweep (issue 19): a store that cannot be written (a full disk)
stops the sweep within seconds with one line and a non-zero exit instead of respawning
workers forever, and the sweep completes every run once afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from muonft.store import Store

DISK_FULL = '''
import sqlite3
import muonft.store as store
def claim(self, *args, **kwargs):
    raise sqlite3.OperationalError("database or disk is full")
store.Store.claim = claim
'''


def _sweep(tmp_path: Path) -> Path:
    spec = {"name": "full", "base": {"kind": "synthetic", "task": "synthetic"},
            "grid": {"lr": [0.001, 0.01, 0.1]}, "seeds": [0, 1],
            "adaptive": {"enabled": False}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _run(spec: Path, out: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "muonft", "sweep", str(spec), "--out", str(out),
                           "--workers", "2", "--quiet"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_full_disk_stops_a_worker_sweep_and_it_resumes_after(tmp_path):
    spec, out = _sweep(tmp_path), tmp_path / "project"
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(DISK_FULL)  # every worker's store "is full"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(inject), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.monotonic()
    r = _run(spec, out, env)
    assert time.monotonic() - t0 < 60  # it used to respawn workers ~10×/s forever
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "database or disk is full" in lines[0], r.stderr
    assert "Traceback" not in r.stderr
    r = _run(spec, out, dict(os.environ))  # space freed
    assert r.returncode == 0, r.stderr
    store = Store(out)
    rows = store.rows("SELECT status, COUNT(*) n FROM runs GROUP BY status")
    store.close()
    assert {tuple(x) for x in rows} == {("done", 6)}


@pytest.mark.parametrize(("base", "msg"), [
    ({"task": "lm:rt", "init": "/no/such/ckpt"}, "init: no model family claims '/no/such/ckpt'"),
    ({"task": "nope", "init": "hf:/x"}, "task: unknown task 'nope'"),
    ({"task": "lm:rt", "init": "hf:/x", "muon": {"scale": "huge"}},
     "muon.scale: unknown scale rule 'huge'"),
])
def test_a_sweep_whose_runs_cannot_start_is_refused_before_anything_is_written(
        tmp_path, capsys, base, msg):
    from muonft.cli import main

    spec = {"name": "bad", "base": {"kind": "finetune", **base}, "grid": {"lr": [0.01]}}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["sweep", str(path), "--out", str(tmp_path / "p"), "--workers", "0",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "p").exists()
