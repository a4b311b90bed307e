"""Run a sweep's runs as Ray tasks (``muonft sweep SPEC --executor ray [--address ADDR]``).

The driver (this process) stays the only writer of the SQLite store: it claims a run
(``queued → running`` under its token, exactly as the local executor does), submits it as a
Ray task with its resource needs (``num_cpus`` = threads per run, ``num_gpus`` =
``gpus_per_run``), and records the result the task returns, in one transaction, only while it
still holds the claim. So the resume semantics are the local executor's: a driver killed with
SIGKILL leaves claims that the next invocation sees as stale (same host, dead pid — or a
heartbeat older than ``stale_after_s``) and requeues; every run ends recorded exactly once.

Without ``address`` a local Ray instance is started on this machine (loopback only); with one,
the driver joins that cluster. Tasks write their run directories (checkpoints, result.json)
under the project dir on whichever node runs them: use a shared filesystem for the project dir
on a multi-node cluster if you want those files too (the store holds every result regardless).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

from muonft.errors import ConfigError
from muonft.experiments.run import call_runner, spec_label
from muonft.experiments.runners import runner_path
from muonft.spec import RunSpec

_REMOTE: Any = None


def _task(spec_json: str, path: str, run_dir: str, threads: int) -> dict[str, Any]:
    """Body of one Ray task: run the runner and return its result record (never raises)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    result, run_s = call_runner(spec_json, path, run_dir, threads=threads)
    result["timings"] = {**(result.get("timings") or {}), "wall_s": run_s}
    return result


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'muonft[ray]' (or "
                          "pip install ray)") from None
    return ray


class RayPool:
    """Submits claimed runs as Ray tasks, at most ``size`` in flight; same interface as the
    local worker pool (``run(todo, out, store, display, summary)``, ``close()``)."""

    def __init__(self, token: str, threads: int, *, address: str | None = None,
                 size: int | None = None, gpus_per_run: float = 0.0) -> None:
        global _REMOTE
        ray = _ray()
        self.started_here = not ray.is_initialized()
        if self.started_here:
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                  "configure_logging": False}
            if address:
                kw["address"] = address
            try:
                ray.init(**kw)
            except (ConnectionError, RuntimeError, ValueError) as e:
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ConfigError(f"cannot start or reach a Ray cluster"
                                  f"{f' at {address}' if address else ''}: {msg}") from None
        if _REMOTE is None:
            _REMOTE = ray.remote(max_retries=0)(_task)
        self.ray, self.token, self.threads, self.gpus = ray, token, threads, gpus_per_run
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.size = size or max(1, cpus // max(1, threads))
        self.wall_s = 0.0

    def run(self, todo: list[tuple[str, RunSpec]], out: Path, store: Any, display: Any,
            summary: Any) -> None:
        t0 = time.perf_counter()
        pending = list(reversed(todo))
        inflight: dict[Any, tuple[str, float]] = {}
        while pending or inflight:
            while pending and len(inflight) < self.size:
                rid, spec = pending.pop()
                if not store.claim(rid, self.token, os.getpid()):
                    continue  # another executor holds or finished it
                ref = _REMOTE.options(num_cpus=self.threads, num_gpus=self.gpus).remote(
                    spec.model_dump_json(), runner_path(spec.kind), str(out / "runs" / rid),
                    self.threads)
                inflight[ref] = (rid, time.perf_counter())
                display.start(rid, spec_label(spec))
            if not inflight:
                continue
            ready, _ = self.ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                rid, t_sent = inflight.pop(ref)
                try:
                    result = self.ray.get(ref)
                except Exception as e:  # the task's worker died: the run failed
                    result = {"status": "failed",
                              "error": f"Ray task failed: {type(e).__name__}: "
                                       f"{str(e).splitlines()[0] if str(e) else ''}",
                              "timings": {"wall_s": time.perf_counter() - t_sent}}
                result["run_id"] = rid
                ok = store.record_result(result, run_id=rid, token=self.token)
                summary.busy_s += time.perf_counter() - t_sent
                summary.runner_s += float((result.get("timings") or {}).get("wall_s") or 0.0)
                summary.ran += bool(ok)
                display.end(rid)
        self.wall_s += time.perf_counter() - t0

    def close(self) -> None:
        if self.started_here:
            with contextlib.suppress(Exception):
                self.ray.shutdown()
