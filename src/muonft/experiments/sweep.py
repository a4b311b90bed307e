"""The sweep executor: expand a SweepSpec, run what is missing in worker processes, extend
LR grids adaptively, and leave every result in the results store.

Exactly-once: each run id is enqueued once; a worker *claims* it (atomic ``queued → running``
under the executor's token) before running it and writes its result together with the status
change, in one transaction, only while it still holds the claim. A sweep restarted after a crash
(SIGKILL included) requeues the runs whose claim is stale — the executor that held them was on
this host and is dead, or its heartbeat is older than ``stale_after_s`` — and re-runs them; runs
that are ``done`` or ``diverged`` are skipped, ``failed`` ones are tried again once per sweep
invocation. Workers ask the kernel to kill them when the executor dies (``PR_SET_PDEATHSIG``),
so no orphan keeps running a claimed run.

Workers are ``spawn``-ed processes (default: one per core, one torch thread each) fed one run at
a time; a worker that dies mid-run has that run recorded ``failed`` and is replaced.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from muonft.analysis.aggregate import best_lr_table, cell_label, runs_frame
from muonft.errors import ConfigError, MuonftError
from muonft.experiments.ray_executor import RayPool
from muonft.experiments.run import call_runner, spec_label
from muonft.experiments.runners import register_runner, runner_path
from muonft.experiments.sweep_spec import SweepSpec, expand, lr_grid_for
from muonft.spec import RunSpec, cell_key, run_id
from muonft.store import Store
from muonft.train.plugins import resolve

__all__ = ["SweepSummary", "register_runner", "run_sweep"]

HEARTBEAT_S = 5.0
EXECUTORS = ("local", "ray")


@dataclass
class SweepSummary:
    """What a sweep invocation did, with its time accounting.

    ``overhead`` = (time workers spent on a run other than inside the runner — claim, store
    write, queue transfer, runner import — plus the executor's own store/aggregation time) ÷
    (that plus the time inside runners). ``idle_s`` (worker start-up and the tail where fewer
    runs than workers remain) is reported apart.
    """

    name: str
    store: str
    total: int = 0
    skipped: int = 0
    ran: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    rounds: int = 0
    extensions: list[str] = field(default_factory=list)
    workers: int = 0
    threads: int = 0
    wall_s: float = 0.0
    runner_s: float = 0.0
    busy_s: float = 0.0
    main_store_s: float = 0.0
    idle_s: float = 0.0
    held_elsewhere: int = 0

    @property
    def overhead(self) -> float:
        denom = self.busy_s + self.main_store_s
        return (denom - self.runner_s) / denom if denom > 0 else 0.0

    def line(self) -> str:
        c = self.counts
        return (f"sweep {self.name}: {self.total} runs ({self.skipped} already finished, "
                f"{self.ran} run now): {c.get('done', 0)} done, {c.get('diverged', 0)} diverged, "
                f"{c.get('failed', 0)} failed; {self.wall_s:.1f}s with {self.workers} worker(s) "
                f"× {self.threads} thread(s); " + (
                    f"overhead {100 * self.overhead:.2f}%" if self.runner_s > 0
                    else "nothing to run"))


def default_workers_threads(workers: int | None, threads: int | None) -> tuple[int, int]:
    """Default: one single-thread worker per core; ``threads`` default = cores // workers."""
    cores = os.cpu_count() or 1
    w = cores if workers is None else workers
    t = threads if threads else max(1, cores // max(1, w))
    if w < 0 or t < 1:
        raise ValueError(f"workers must be >= 0 and threads >= 1, got {w}, {t}")
    return w, t


def check_runs(specs: list[RunSpec]) -> None:
    """Refuse a sweep whose runs could never start — an unknown runner kind, or a
    fine-tuning run whose init no model family claims, whose task does not fit the model or
    whose Muon scale rule does not exist — with one ConfigError naming the run, before
    anything is written (it used to finish with "N failed")."""
    seen: set[tuple] = set()
    for s in specs:
        runner_path(s.kind)
        key = (s.kind, s.init, s.task, s.optimizer, s.muon.scale)
        if s.kind not in ("finetune", "vision") or key in seen:
            continue
        seen.add(key)
        try:
            resolve(s)
        except ConfigError as e:
            raise ConfigError(f"run {spec_label(s)}: {e}") from None


# ---------------------------------------------------------------------------------------------
# One run (shared by worker processes and the inline executor)

def execute_run(store: Store, rid: str, spec_json: str, path: str, run_dir: str, token: str,
                owner_pid: int, on_start: Callable[[], None] | None = None
                ) -> tuple[str, float]:
    """Claim, run and record one run. Returns (status, seconds inside the runner); status is
    ``skipped`` when the claim was not ours, ``lost`` when the claim was lost before writing."""
    if not store.claim(rid, token, owner_pid):
        return "skipped", 0.0
    if on_start:
        on_start()
    result, run_s = call_runner(spec_json, path, run_dir)
    result["timings"] = {**(result.get("timings") or {}), "wall_s": run_s}
    result["run_id"] = rid
    ok = store.record_result(result, run_id=rid, token=token)
    return (result["status"] if ok else "lost"), run_s


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no orphaned runs)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(idx: int, conn: Any, db_path: str, token: str, owner_pid: int,
                 threads: int) -> None:
    _die_with_parent()
    if os.getppid() != owner_pid:  # parent died before prctl took effect
        os._exit(1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the executor decides on Ctrl-C
    rid = None
    try:
        store = Store(db_path)
        conn.send(("ready", idx, None, None, 0.0))
        while True:
            try:
                task = conn.recv()
            except EOFError:  # the executor is gone
                break
            if task is None:
                break
            rid, spec_json, path, run_dir = task
            status, run_s = execute_run(
                store, rid, spec_json, path, run_dir, token, owner_pid,
                on_start=lambda rid=rid: conn.send(("start", idx, rid, None, 0.0)))
            conn.send(("end", idx, rid, status, run_s))
        store.close()
    except (sqlite3.Error, OSError, MuonftError) as e:
        # the store or the disk failed (full, read-only, damaged): every worker would fail the
        # same way, so the executor stops the sweep instead of respawning workers
        with contextlib.suppress(OSError):
            conn.send(("fatal", idx, rid, f"{type(e).__name__}: {e}", 0.0))


class _Heartbeat(threading.Thread):
    """Refreshes the executor's claims every HEARTBEAT_S seconds from its own connection."""

    def __init__(self, db_path: Path, token: str) -> None:
        super().__init__(daemon=True)
        self.db_path, self.token, self.stop = db_path, token, threading.Event()

    def run(self) -> None:
        store = Store(self.db_path)
        while not self.stop.wait(HEARTBEAT_S):
            with contextlib.suppress(Exception):
                store.heartbeat(self.token)
        store.close()


# ---------------------------------------------------------------------------------------------
# Progress display

class _Display:
    def __init__(self, enabled: bool, total: int, done: int) -> None:
        self.enabled = enabled
        self.active: dict[str, Any] = {}
        if not enabled:
            return
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
        self.overall = self.progress.add_task("runs", total=total, completed=done)
        self.progress.start()

    def add_total(self, n: int) -> None:
        if self.enabled:
            t = self.progress.tasks[self.overall].total or 0
            self.progress.update(self.overall, total=t + n)

    def start(self, rid: str, label: str) -> None:
        if self.enabled:
            self.active[rid] = self.progress.add_task(f"  {label}", total=None)

    def end(self, rid: str) -> None:
        if self.enabled:
            if rid in self.active:
                self.progress.remove_task(self.active.pop(rid))
            self.progress.advance(self.overall)

    def log(self, msg: str) -> None:
        if self.enabled:
            self.progress.console.print(msg)
        else:
            print(msg, file=sys.stderr)

    def close(self) -> None:
        if self.enabled:
            self.progress.stop()


# ---------------------------------------------------------------------------------------------
# The executor

def run_sweep(sweep: SweepSpec, out: str | os.PathLike, *, workers: int | None = None,
              threads: int | None = None, progress: bool = True, stale_after_s: float = 120.0,
              quiet: bool = False, executor: str = "local", address: str | None = None,
              gpus_per_run: float = 0.0) -> SweepSummary:
    """Run every missing run of ``sweep`` into ``out/results.sqlite`` (run dirs under
    ``out/runs/<id>``), extending LR grids adaptively, and return a :class:`SweepSummary`.

    ``workers`` 0 runs in this process (runners registered here need no import path);
    default = sweep.workers or one worker per core; ``threads`` = torch threads per worker.
    ``executor="ray"`` runs each run as a Ray task instead (:mod:`muonft.experiments.
    ray_executor`; ``address`` of a cluster, else a local one; ``workers`` caps the runs in
    flight, default cluster CPUs ÷ threads; ``gpus_per_run`` is each task's GPU request).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if gpus_per_run < 0:
        raise ValueError(f"gpus_per_run must be >= 0, got {gpus_per_run}")
    out = Path(out)
    check_runs(expand(sweep))  # bad kinds, inits, tasks, scale rules: before the store
    store = Store(out)
    w, t = default_workers_threads(workers if workers is not None else sweep.workers,
                                   threads if threads is not None else sweep.threads)
    token = f"{os.uname().nodename}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    summary = SweepSummary(name=sweep.name, store=str(store.path), workers=w, threads=t)
    t_start = time.perf_counter()
    heart = _Heartbeat(store.path, token)
    heart.start()
    display = None
    pool: Any = None
    try:
        ts = time.perf_counter()
        extra = existing_extra_lrs(store, sweep)
        summary.main_store_s += time.perf_counter() - ts
        first = True
        while True:
            summary.rounds += 1
            ts = time.perf_counter()
            specs = expand(sweep, extra)
            ids = [run_id(s) for s in specs]
            for s in specs:
                runner_path(s.kind)  # unknown kind → one-line error before anything runs
            store.enqueue(((i, s.kind, s.model_dump(mode="json")) for i, s in zip(ids, specs)),
                          sweep=sweep.name)
            requeued = store.requeue(ids, statuses=("failed",) if first else (),
                                     stale_after_s=stale_after_s)
            if requeued:
                store.log_event("requeue", f"requeued {len(requeued)} failed or stale run(s)",
                                sweep.name)
            status = _statuses(store, ids)
            todo = [(i, s) for i, s in zip(ids, specs) if status[i] == "queued"]
            summary.main_store_s += time.perf_counter() - ts
            summary.total = len(ids)
            if first:
                summary.skipped = sum(status[i] in ("done", "diverged") for i in ids)
                display = _Display(progress and not quiet, len(ids), len(ids) - len(todo))
            elif display is not None:
                display.add_total(len(todo))
            if todo:
                if executor == "ray":
                    if pool is None:
                        pool = RayPool(token, t, address=address, size=workers or None,
                                       gpus_per_run=gpus_per_run)
                        summary.workers = pool.size
                    pool.run(todo, out, store, display, summary)
                elif w == 0:
                    _run_inline(store, todo, out, token, display, summary)
                else:
                    if pool is None:
                        pool = _Pool(min(w, len(todo)) if first else w, store.path, token, t)
                    pool.run(todo, out, store, display, summary)
            first = False
            if not sweep.adaptive.enabled:
                break
            ts = time.perf_counter()
            new = propose_extensions(runs_frame(store, sweep.name), sweep, extra)
            summary.main_store_s += time.perf_counter() - ts
            if not new:
                break
            for cell, lr, direction, label in new:
                extra.setdefault(cell, []).append(lr)
                msg = f"adaptive grid: {label}: best lr at the {direction} edge, adding lr={lr:g}"
                summary.extensions.append(msg)
                store.log_event("extend", msg, sweep.name)
                if not quiet:
                    display.log(msg)
        summary.counts = store.status_counts(sweep.name)
        summary.held_elsewhere = summary.counts.get("running", 0)
    finally:
        if pool is not None:
            pool.close()
        if display is not None:
            display.close()
        heart.stop.set()
        summary.wall_s = time.perf_counter() - t_start
        if pool is not None:
            summary.idle_s = max(0.0, pool.size * pool.wall_s - summary.busy_s)
        store.close()
    return summary


def _statuses(store: Store, ids: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k in range(0, len(ids), 500):
        chunk = ids[k:k + 500]
        q = ",".join("?" * len(chunk))
        out.update(dict(store.rows(f"SELECT id, status FROM runs WHERE id IN ({q})", chunk)))
    return out


def _run_inline(store: Store, todo: list[tuple[str, RunSpec]], out: Path, token: str,
                display: _Display, summary: SweepSummary) -> None:
    for rid, spec in todo:
        t0 = time.perf_counter()
        status, run_s = execute_run(store, rid, spec.model_dump_json(), runner_path(spec.kind),
                                    str(out / "runs" / rid), token, os.getpid(),
                                    on_start=lambda rid=rid, spec=spec: display.start(
                                        rid, spec_label(spec)))
        summary.busy_s += time.perf_counter() - t0
        summary.runner_s += run_s
        summary.ran += status not in ("skipped", "lost")
        display.end(rid)


class _Pool:
    """``size`` spawned workers, each fed one run at a time over its own pipe.

    One pipe per worker (not a shared queue): a worker that dies while writing can never leave
    a shared lock held and stall the others."""

    def __init__(self, size: int, db_path: Path, token: str, threads: int) -> None:
        self.ctx = mp.get_context("spawn")
        self.size, self.db_path, self.token, self.threads = size, db_path, token, threads
        self.procs: list[Any] = [None] * size
        self.conns: list[Any] = [None] * size
        self.wall_s = 0.0
        self.ready: set[int] = set()
        self.deaths = 0  # worker deaths since a worker last got ready or finished a run
        for i in range(size):
            self._spawn(i)

    def _spawn(self, i: int) -> None:
        mine, theirs = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=_worker_main, name=f"muonft-sweep-{i}", daemon=True,
                             args=(i, theirs, str(self.db_path), self.token, os.getpid(),
                                   self.threads))
        p.start()
        theirs.close()
        self.procs[i], self.conns[i] = p, mine

    def run(self, todo: list[tuple[str, RunSpec]], out: Path, store: Store, display: _Display,
            summary: SweepSummary) -> None:
        t0 = time.perf_counter()
        pending = list(reversed(todo))
        specs = dict(todo)
        assigned: dict[int, tuple[str, float]] = {}
        idle = list(self.ready)
        while pending or assigned:
            while idle and pending:
                i = idle.pop()
                rid, spec = pending.pop()
                self.conns[i].send((rid, spec.model_dump_json(), runner_path(spec.kind),
                                    str(out / "runs" / rid)))
                assigned[i] = (rid, time.perf_counter())
            ready = mp_connection.wait(self.conns, timeout=1.0)
            dead: list[int] = []
            for conn in ready:
                i = self.conns.index(conn)
                try:
                    kind, _, rid, status, run_s = conn.recv()
                except (EOFError, OSError):
                    dead.append(i)
                    continue
                if kind in ("ready", "end"):
                    self.deaths = 0
                if kind == "ready":  # start-up done (import, store open): idle, not overhead
                    self.ready.add(i)
                    if i not in assigned and i not in idle:
                        idle.append(i)
                elif kind == "fatal":
                    raise MuonftError(f"sweep stopped: a worker could not write the results "
                                      f"store {self.db_path} ({status}); free space or fix the "
                                      f"store, then rerun the sweep: finished runs are kept")
                elif kind == "start":
                    display.start(rid, spec_label(specs[rid]))
                elif kind == "end":
                    _, t_sent = assigned.pop(i)
                    summary.busy_s += time.perf_counter() - t_sent
                    summary.runner_s += run_s
                    summary.ran += status not in ("skipped", "lost")
                    display.end(rid)
                    idle.append(i)
            dead += [i for i, p in enumerate(self.procs) if not p.is_alive() and i not in dead]
            self.deaths += len(dead)
            if self.deaths > 3 * self.size:  # workers die before doing anything: stop
                raise MuonftError(f"sweep stopped: {self.deaths} worker processes in a row died "
                                  f"(last exit code {self.procs[dead[0]].exitcode}); rerun the "
                                  f"sweep once the cause is fixed: finished runs are kept")
            for i in dead:
                self._replace(i, assigned, idle, pending, specs, store, display, summary)
        self.wall_s += time.perf_counter() - t0

    def _replace(self, i: int, assigned: dict[int, tuple[str, float]], idle: list[int],
                 pending: list[tuple[str, RunSpec]], specs: dict[str, RunSpec], store: Store,
                 display: _Display, summary: SweepSummary) -> None:
        """Replace dead worker ``i``; the run it held is recorded failed."""
        p = self.procs[i]
        p.join(5)
        code = p.exitcode
        if i in assigned:
            rid, t_sent = assigned.pop(i)
            summary.busy_s += time.perf_counter() - t_sent
            row = store.rows("SELECT status, claim_token FROM runs WHERE id=?", [rid])[0]
            if row["status"] == "running" and row["claim_token"] == self.token:
                store.mark_failed(rid, f"worker process died (exit code {code})",
                                  token=self.token)
                summary.ran += 1
                display.end(rid)
            elif row["status"] == "queued":
                pending.append((rid, specs[rid]))
            else:
                display.end(rid)
        if i in idle:
            idle.remove(i)
        self.ready.discard(i)
        self.conns[i].close()
        self._spawn(i)

    def close(self) -> None:
        for c in self.conns:
            with contextlib.suppress(Exception):
                c.send(None)
        deadline = time.monotonic() + 5
        for p in self.procs:
            p.join(timeout=max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for c in self.conns:
            c.close()


# ---------------------------------------------------------------------------------------------
# Adaptive grids

def existing_extra_lrs(store: Store, sweep: SweepSpec) -> dict[str, list[float]]:
    """LRs already added to each cell by earlier adaptive extensions (runs of the sweep whose
    LR is not in the cell's base grid), so a restarted sweep continues where it stopped."""
    extra: dict[str, list[float]] = {}
    for r in store.runs(sweep.name).itertuples(index=False):
        spec = RunSpec.model_validate(r.spec)
        grid = lr_grid_for(sweep, {"optimizer": spec.optimizer, "method": spec.method,
                                   "lr": spec.lr})
        if not any(math.isclose(spec.lr, g, rel_tol=1e-9) for g in grid):
            lst = extra.setdefault(cell_key(spec), [])
            if spec.lr not in lst:
                lst.append(spec.lr)
    return extra


def propose_extensions(frame: Any, sweep: SweepSpec,
                       extra: dict[str, list[float]]) -> list[tuple[str, float, str, str]]:
    """For each cell whose best LR is at an edge of its grid (and not yet extended
    ``max_extensions`` times in that direction): ``(cell, new_lr, direction, label)`` with
    new_lr = edge·f or edge/f, f = ``adaptive.lr_factor`` or the ratio of the two LRs nearest
    that edge (3 for a single-LR grid)."""
    cfg = sweep.adaptive
    if frame.empty or cfg.max_extensions == 0:
        return []
    best = best_lr_table(frame, cfg.metric, report=cfg.metric)
    out = []
    for _, row in best.iterrows():
        if not row["edge"]:
            continue
        lrs = sorted(row["lrs"])
        added = extra.get(row["cell"], [])
        base_lo, base_hi = min(set(lrs) - set(added)), max(set(lrs) - set(added))
        for direction in (["low", "high"] if row["edge"] == "both" else [row["edge"]]):
            n_done = sum((lr < base_lo) if direction == "low" else (lr > base_hi)
                         for lr in added)
            if n_done >= cfg.max_extensions:
                continue
            if cfg.lr_factor:
                f = cfg.lr_factor
            elif len(lrs) >= 2:
                f = lrs[1] / lrs[0] if direction == "low" else lrs[-1] / lrs[-2]
            else:
                f = 3.0
            edge_lr = lrs[0] if direction == "low" else lrs[-1]
            new = float(f"{(edge_lr / f if direction == 'low' else edge_lr * f):.6g}")
            out.append((row["cell"], new, direction, cell_label(row)))
    return out
