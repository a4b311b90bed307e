"""Fault injection: `muonft finetune` killed with SIGKILL at random moments (seeded), then rerun,
ends with exactly the record of an uninterrupted run — weights, evaluations and every curve.
MUONFT_FAULT_KILLS sets the number of kill points (3 in the suite; 30 for a long run)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from ft_data import pretrain_tiny_gpt, write_lm_corpora

KILLS = int(os.environ.get("MUONFT_FAULT_KILLS", "3"))
VOLATILE = ("timings", "resumed")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    environ = {**os.environ, "MUONFT_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONFT_CACHE", environ["MUONFT_CACHE"])
        pre, task = write_lm_corpora(root, np.random.default_rng(0))
        ckpt = pretrain_tiny_gpt(root, pre)
    args = ["finetune", "--init", str(ckpt), "--task", task, "--steps", "16", "--batch-size",
            "4", "--block-size", "32", "--eval-batches", "2", "--diag-every", "4",
            "--threads", "1", "--checkpoint-every", "2", "--quiet", "--no-save-model"]
    return root, environ, args


def _run(environ, args, out):
    return subprocess.Popen([sys.executable, "-m", "muonft", *args, "--out", str(out)],
                            env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _record(out) -> dict:
    rec = json.loads((out / "result.json").read_text())
    return {k: v for k, v in rec.items() if k not in VOLATILE}


def test_random_kill_points_resume_to_the_uninterrupted_record(env, tmp_path):
    _, environ, args = env
    ref = tmp_path / "reference"
    assert _run(environ, args, ref).wait(timeout=300) == 0
    t0 = time.monotonic()
    assert _run(environ, args, tmp_path / "timing").wait(timeout=300) == 0
    whole = time.monotonic() - t0  # start-up + training + evaluations
    want = _record(ref)
    rng = np.random.default_rng(0)
    killed = 0
    for i in range(KILLS):
        out = tmp_path / f"k{i}"
        for delay in rng.uniform(0.3, 0.95, size=2) * whole:  # up to two kills per run
            p = _run(environ, args, out)
            time.sleep(delay)
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
                killed += 1
        p = _run(environ, args, out)
        assert p.wait(timeout=300) == 0, p.stderr.read().decode()[-2000:]
        assert _record(out) == want, f"kill point {i}"
        assert not list(out.glob("ckpt/.*.tmp"))
    assert killed >= KILLS  # the kills landed while the runs were going
