"""One run of a sweep, wherever it executes (a worker process, the executor's own process, a Ray
task): its short label, and the call of its runner that never raises."""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from muonft.experiments.runners import load_runner
from muonft.spec import RunSpec


def spec_label(spec: RunSpec) -> str:
    """A short human label of a run: pretrained init, optimizer, method, lr, seed."""
    extra = f" r{spec.lora.rank}" if spec.method == "lora" else ""
    return f"{spec.init} {spec.optimizer} {spec.method}{extra} lr={spec.lr:.3g} s{spec.seed}"


def call_runner(spec_json: str, path: str, run_dir: str, *, threads: int | None = None
                ) -> tuple[dict[str, Any], float]:
    """Run the runner at import ``path`` on a RunSpec (JSON) in ``run_dir``; returns (result
    record, seconds). Never raises: a crash becomes ``status: failed`` with its traceback."""
    t0 = time.perf_counter()
    try:
        spec = RunSpec.model_validate_json(spec_json)
        runner = load_runner(path)
        n = threads or int(os.environ.get("OMP_NUM_THREADS", "1"))
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(n)
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        result = dict(runner(spec, Path(run_dir)))
        if result.get("status") not in ("done", "diverged", "failed"):
            raise ValueError(f"runner {path} returned status {result.get('status')!r}; "
                             f"expected done, diverged or failed")
    except Exception as e:  # a crashing run is recorded, the sweep goes on
        result = {"status": "failed", "error": f"{type(e).__name__}: {e}",
                  "traceback": traceback.format_exc()}
    return result, time.perf_counter() - t0
