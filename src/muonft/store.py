"""The results store: one SQLite file per project directory (``DIR/results.sqlite``).

Tables: ``runs`` (one row per run id: spec JSON, status, claim, timings, versions, host, error
and traceback), ``sweep_runs`` (which sweeps a run belongs to), ``metrics`` (scalar metrics),
``curves`` (metric vs step), ``diagnostics`` (per run, kind ``weight|update|lora_A|lora_B|
lora_BA``, layer group, metric), ``events`` (what a sweep did: adaptive extensions, requeues),
and ``schema_version`` with an ordered list of migrations.

Concurrency: WAL journal, a busy timeout, and every write in one ``BEGIN IMMEDIATE``
transaction, so worker processes (each with its own connection) can write at once. A run moves
``queued → running`` through one conditional UPDATE (:meth:`Store.claim`), so two executors never
both hold it; its result is written together with its status change in one transaction and only
while the writer still holds the claim (:meth:`Store.record_result`), so a run killed half-way is
never recorded half, and a stale executor cannot overwrite a newer one.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from muonft.errors import StoreError

STATUSES = ("queued", "running", "done", "diverged", "failed")
FINISHED = ("done", "diverged")
DIAG_KINDS = ("weight", "update", "lora_A", "lora_B", "lora_BA")
DB_NAME = "results.sqlite"

_SCHEMA_V1 = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    sweep TEXT,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued','running','done','diverged','failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    claim_token TEXT,
    claim_host TEXT,
    claim_pid INTEGER,
    heartbeat REAL,
    queued_at REAL,
    started_at REAL,
    finished_at REAL,
    wall_s REAL,
    versions TEXT,
    host TEXT,
    meta TEXT,
    error TEXT,
    traceback TEXT
);
CREATE INDEX runs_status ON runs(status);
CREATE TABLE sweep_runs (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs(id),
    PRIMARY KEY (sweep, run_id)
);
CREATE TABLE metrics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE curves (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name, step)
);
CREATE TABLE diagnostics (
    run_id TEXT NOT NULL REFERENCES runs(id),
    kind TEXT NOT NULL,
    layer_group TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, kind, layer_group, metric)
);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep TEXT,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    message TEXT NOT NULL
);
"""

# Ordered migrations; entry i brings the schema from version i to i + 1. Append, never edit.
MIGRATIONS: list[str] = [
    _SCHEMA_V1,
    # v2: a sha256 of each finished run's spec, status and metrics, checked on read (a flipped
    # byte inside a record passes SQLite's page checks); NULL for runs stored before it
    "ALTER TABLE runs ADD COLUMN digest TEXT",
]
SCHEMA_VERSION = len(MIGRATIONS)


def store_path(where: str | os.PathLike) -> Path:
    """``where`` itself if it names a ``.sqlite`` file, else ``where/results.sqlite``."""
    p = Path(where)
    return p if p.suffix in (".sqlite", ".db") else p / DB_NAME


def row_digest(spec_json: str, status: str, metrics: Iterable[tuple[str, Any]]) -> str:
    """sha256 of a finished run's stored spec, status and (name, value) metrics (in name
    order; NaN and NULL both as null)."""
    items = sorted((k, None if v is None or (isinstance(v, float) and v != v) else float(v))
                   for k, v in metrics)
    blob = json.dumps([spec_json, status, items], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _finite(v: Any) -> float | None:
    """A float for the store: bools as 0/1, non-finite values as NULL-free floats kept as is."""
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return None


class Store:
    """A handle on ``DIR/results.sqlite`` (created with the current schema when absent).

    One connection per Store; open one Store per process (connections do not cross ``fork``).
    """

    def __init__(self, where: str | os.PathLike, *, create: bool = True,
                 timeout_s: float = 60.0) -> None:
        self.path = store_path(where)
        existed = self.path.exists()
        if not existed:
            if not create:
                raise FileNotFoundError(f"no results store at {self.path}; run `muonft sweep` "
                                        f"with --out {self.path.parent} first")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif self.path.stat().st_size == 0:
            raise self._damaged("is empty (0 bytes), so it was truncated")
        try:
            self._db = sqlite3.connect(self.path, timeout=timeout_s, isolation_level=None,
                                       check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
            if existed:
                self._check_integrity()
            self._enable_wal(timeout_s)
            # NORMAL under WAL survives any process crash (SIGKILL); only power loss may drop
            # the last commits, which a sweep re-runs.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise
            raise self._damaged(f"cannot be read ({e})") from None

    def _damaged(self, what: str) -> StoreError:
        return StoreError(f"results store {self.path} {what}; move it away and run the sweep "
                          f"again with the same --out: finished runs are read back from their "
                          f"{self.path.parent / 'runs'}/*/result.json")

    def _check_integrity(self) -> None:
        """``PRAGMA quick_check`` (pages, records, indexes; linear in the file, ~ms for a study's
        store): a scribbled or truncated file is refused instead of read."""
        rows = self._db.execute("PRAGMA quick_check").fetchall()
        if [tuple(r) for r in rows] != [("ok",)]:
            raise self._damaged(f"is damaged ({rows[0][0]})")

    def _enable_wal(self, timeout_s: float) -> None:
        """Switch to WAL, retrying while another process holds the lock.

        Changing the journal mode of a database that another process is creating at the same
        moment can fail with "database is locked" without consulting the busy handler, so the
        busy timeout alone does not cover two workers opening a fresh store together.
        """
        deadline = time.monotonic() + timeout_s
        delay = 0.01
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(0.5, delay * 2)

    # -- plumbing ------------------------------------------------------------------------------
    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on any exception)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        with self.transaction() as db:
            db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = db.execute("SELECT version FROM schema_version").fetchone()
            version = row[0] if row else 0
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"{self.path} has schema version {version}, newer than this "
                                   f"muonft ({SCHEMA_VERSION}); upgrade muonft")
            for sql in MIGRATIONS[version:]:
                for stmt in filter(str.strip, sql.split(";")):
                    db.execute(stmt)
            if row is None:
                db.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif version < SCHEMA_VERSION:
                db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        return int(self._db.execute("SELECT version FROM schema_version").fetchone()[0])

    def rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        """Plain rows of a read-only query (``sqlite3.Row``: index by name or position)."""
        cur = self._db.cursor()
        cur.row_factory = sqlite3.Row
        return cur.execute(sql, tuple(params)).fetchall()

    def frame(self, sql: str, params: Iterable[Any] = ()) -> pd.DataFrame:
        """A pandas DataFrame of a read-only query."""
        return pd.read_sql_query(sql, self._db, params=tuple(params))

    # -- queue and claims ----------------------------------------------------------------------
    def enqueue(self, runs: Iterable[tuple[str, str, dict[str, Any]]], sweep: str | None = None
                ) -> int:
        """Add ``(run_id, kind, spec_dict)`` rows as ``queued`` (existing ids are left as they
        are) and record their membership of ``sweep``. Returns how many rows were new."""
        now, new = time.time(), 0
        with self.transaction() as db:
            for rid, kind, spec in runs:
                cur = db.execute(
                    "INSERT OR IGNORE INTO runs (id, sweep, kind, spec, status, queued_at) "
                    "VALUES (?, ?, ?, ?, 'queued', ?)",
                    (rid, sweep, kind, json.dumps(spec, sort_keys=True), now))
                new += cur.rowcount
                if sweep is not None:
                    db.execute("INSERT OR IGNORE INTO sweep_runs VALUES (?, ?)", (sweep, rid))
        return new

    def requeue(self, run_ids: Iterable[str], *, statuses: tuple[str, ...] = ("failed",),
                stale_after_s: float = 120.0) -> list[str]:
        """Put runs back to ``queued``: those in ``statuses``, and ``running`` ones whose claim
        is stale — its executor was on this host and is gone (pid not alive), or its heartbeat
        is older than ``stale_after_s``. Returns the ids requeued."""
        ids = list(run_ids)
        host, now, out = socket.gethostname(), time.time(), []
        with self.transaction() as db:
            for chunk in _chunks(ids, 500):
                q = ",".join("?" * len(chunk))
                for rid, status, chost, cpid, hb in db.execute(
                        f"SELECT id, status, claim_host, claim_pid, heartbeat FROM runs "
                        f"WHERE id IN ({q}) AND status NOT IN ('queued','done','diverged')",
                        chunk).fetchall():
                    if status == "running":
                        dead = chost == host and cpid is not None and not _pid_alive(cpid)
                        if not (dead or hb is None or now - hb > stale_after_s):
                            continue
                    elif status not in statuses:
                        continue
                    db.execute("UPDATE runs SET status='queued', claim_token=NULL, "
                               "claim_host=NULL, claim_pid=NULL, heartbeat=NULL WHERE id=?",
                               (rid,))
                    out.append(rid)
        return out

    def claim(self, run_id: str, token: str, pid: int | None = None) -> bool:
        """Atomically move ``run_id`` from ``queued`` to ``running`` under ``token`` (the
        executor's id; ``pid`` is the executor process whose death frees the claim). True if
        this call got it."""
        now = time.time()
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE runs SET status='running', claim_token=?, claim_host=?, claim_pid=?, "
                "heartbeat=?, started_at=?, attempts=attempts+1, error=NULL, traceback=NULL "
                "WHERE id=? AND status='queued'",
                (token, socket.gethostname(), pid or os.getpid(), now, now, run_id))
            return cur.rowcount == 1

    def heartbeat(self, token: str) -> int:
        """Refresh the heartbeat of every run held by ``token``; returns how many."""
        with self.transaction() as db:
            return db.execute("UPDATE runs SET heartbeat=? WHERE claim_token=? AND "
                              "status='running'", (time.time(), token)).rowcount

    # -- results ------------------------------------------------------------------------------
    def record_result(self, result: dict[str, Any], *, run_id: str | None = None,
                      token: str | None = None) -> bool:
        """Store a run's result record (``docs/CONTRACTS.md``) in one transaction: status,
        timings, versions, metrics, curves and diagnostics. With ``token`` the write happens
        only if that token still holds the run's claim (returns False otherwise). Without it the
        record is ingested as is (the run row is created if absent)."""
        rid = run_id or result.get("run_id")
        if not rid:
            raise ValueError("record_result needs run_id (argument or result['run_id'])")
        status = result.get("status", "done")
        if status not in ("done", "diverged", "failed"):
            raise ValueError(f"result status must be done, diverged or failed, got {status!r}")
        metrics = dict(result.get("metrics") or {})
        meta = {k: metrics.pop(k) for k in list(metrics) if _finite(metrics[k]) is None}
        if "higher_is_better" in metrics:  # a flag, not a measurement
            meta["higher_is_better"] = bool(metrics.pop("higher_is_better"))
        timings = result.get("timings") or {}
        meta["timings"] = timings
        wall = timings.get("wall_s")
        now = time.time()
        with self.transaction() as db:
            if token is not None:
                cur = db.execute(
                    "UPDATE runs SET status=?, finished_at=?, wall_s=?, versions=?, host=?, "
                    "meta=?, error=?, traceback=?, claim_token=NULL, heartbeat=NULL "
                    "WHERE id=? AND status='running' AND claim_token=?",
                    (status, now, wall, json.dumps(result.get("versions") or {}),
                     socket.gethostname(), json.dumps(meta, default=str), result.get("error"),
                     result.get("traceback"), rid, token))
                if cur.rowcount != 1:
                    return False
            else:
                spec = result.get("spec") or {}
                db.execute(
                    "INSERT INTO runs (id, kind, spec, status, queued_at, started_at, "
                    "finished_at, wall_s, versions, host, meta, error, traceback, attempts) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 1) ON CONFLICT(id) DO UPDATE "
                    "SET status=excluded.status, finished_at=excluded.finished_at, "
                    "wall_s=excluded.wall_s, versions=excluded.versions, host=excluded.host, "
                    "meta=excluded.meta, error=excluded.error, traceback=excluded.traceback, "
                    "claim_token=NULL, heartbeat=NULL",
                    (rid, spec.get("kind", "finetune"), json.dumps(spec, sort_keys=True), status,
                     now, now, now, wall, json.dumps(result.get("versions") or {}),
                     socket.gethostname(), json.dumps(meta, default=str), result.get("error"),
                     result.get("traceback")))
            for table in ("metrics", "curves", "diagnostics"):
                db.execute(f"DELETE FROM {table} WHERE run_id=?", (rid,))
            rows = [(rid, k, _finite(v)) for k, v in metrics.items()]
            db.executemany("INSERT INTO metrics VALUES (?, ?, ?)", rows)
            spec_json = db.execute("SELECT spec FROM runs WHERE id=?", (rid,)).fetchone()[0]
            db.execute("UPDATE runs SET digest=? WHERE id=?",
                       (row_digest(spec_json, status, [(k, v) for _, k, v in rows]), rid))
            db.executemany("INSERT OR REPLACE INTO curves VALUES (?, ?, ?, ?)",
                           [(rid, name, int(step), _finite(v))
                            for name, pts in (result.get("curves") or {}).items()
                            for step, v in pts])
            db.executemany("INSERT OR REPLACE INTO diagnostics VALUES (?, ?, ?, ?, ?)",
                           list(_diagnostic_rows(rid, result)))
        return True

    def mark_failed(self, run_id: str, error: str, traceback: str | None = None, *,
                    token: str | None = None, wall_s: float | None = None) -> bool:
        """Record a run as ``failed`` with its error line and traceback."""
        return self.record_result({"status": "failed", "error": error, "traceback": traceback,
                                   "timings": {"wall_s": wall_s}}, run_id=run_id, token=token)

    def log_event(self, kind: str, message: str, sweep: str | None = None) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO events (sweep, time, kind, message) VALUES (?, ?, ?, ?)",
                       (sweep, time.time(), kind, message))

    # -- queries ------------------------------------------------------------------------------
    def status_counts(self, sweep: str | None = None) -> dict[str, int]:
        sql, params = "SELECT status, COUNT(*) FROM runs", []
        if sweep is not None:
            sql += " WHERE id IN (SELECT run_id FROM sweep_runs WHERE sweep=?)"
            params.append(sweep)
        counts = dict.fromkeys(STATUSES, 0)
        counts.update(dict(self._db.execute(sql + " GROUP BY status", params).fetchall()))
        return counts

    def sweeps(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT DISTINCT sweep FROM sweep_runs "
                                               "ORDER BY sweep")]

    def runs(self, sweep: str | None = None, status: str | None = None):
        """DataFrame of the runs table (``spec`` parsed to a dict column)."""
        where, params = _where(sweep, status)
        df = self.frame(f"SELECT * FROM runs{where} ORDER BY queued_at, id", params)
        df["spec"] = df["spec"].map(json.loads)
        df["meta"] = df["meta"].map(lambda s: json.loads(s) if isinstance(s, str) else {})
        return df

    def metrics(self, sweep: str | None = None):
        """Long DataFrame (run_id, name, value) of scalar metrics, each finished run's checked
        against the digest recorded with it (StoreError naming the runs that differ)."""
        where, params = _where(sweep, None, col="run_id")
        df = self.frame(f"SELECT run_id, name, value FROM metrics{where}", params)
        self._check_digests(df)
        return df

    def _check_digests(self, metrics: pd.DataFrame) -> None:
        runs = self.rows("SELECT id, spec, status, digest FROM runs WHERE digest IS NOT NULL")
        by_run: dict[str, list[tuple[str, Any]]] = {}
        for rid, name, value in metrics.itertuples(index=False):
            by_run.setdefault(rid, []).append((name, None if pd.isna(value) else value))
        bad = [r["id"] for r in runs if r["id"] in by_run and
               row_digest(r["spec"], r["status"], by_run[r["id"]]) != r["digest"]]
        if bad:
            raise self._damaged(f"holds {len(bad)} run record(s) whose numbers changed since "
                                f"they were written (first: {bad[0]})")

    def curves(self, run_ids: Iterable[str] | None = None):
        """Long DataFrame (run_id, name, step, value) of curves."""
        if run_ids is None:
            return self.frame("SELECT * FROM curves ORDER BY run_id, name, step")
        ids = list(run_ids)
        q = ",".join("?" * len(ids)) or "NULL"
        return self.frame(f"SELECT * FROM curves WHERE run_id IN ({q}) "
                          f"ORDER BY run_id, name, step", ids)

    def diagnostics(self, sweep: str | None = None):
        """Long DataFrame (run_id, kind, group, metric, value) of diagnostics."""
        where, params = _where(sweep, None, col="run_id")
        df = self.frame(f"SELECT * FROM diagnostics{where}", params)
        return df.rename(columns={"layer_group": "group"})

    def events(self, sweep: str | None = None):
        if sweep is None:
            return self.frame("SELECT * FROM events ORDER BY id")
        return self.frame("SELECT * FROM events WHERE sweep=? ORDER BY id", [sweep])


def _where(sweep: str | None, status: str | None, col: str = "id") -> tuple[str, list[Any]]:
    conds, params = [], []
    if sweep is not None:
        conds.append(f"{col} IN (SELECT run_id FROM sweep_runs WHERE sweep=?)")
        params.append(sweep)
    if status is not None:
        conds.append("status=?")
        params.append(status)
    return (" WHERE " + " AND ".join(conds) if conds else ""), params


def _diagnostic_rows(rid: str, result: dict[str, Any]) -> Iterator[tuple]:
    for key, kind in (("diagnostics", "weight"), ("diagnostics_update", "update")):
        for group, vals in (result.get(key) or {}).items():
            for metric, v in (vals or {}).items():
                if _finite(v) is not None:
                    yield rid, kind, group, metric, _finite(v)
    for group, factors in (result.get("diagnostics_lora") or {}).items():
        for factor, vals in (factors or {}).items():
            for metric, v in (vals or {}).items():
                if _finite(v) is not None:
                    yield rid, f"lora_{factor}", group, metric, _finite(v)


def _chunks(xs: list[Any], n: int) -> Iterator[list[Any]]:
    for i in range(0, len(xs), n):
        yield xs[i:i + n]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (killed, not yet reaped by its parent) is not alive for our purpose.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True
