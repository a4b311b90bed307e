"""The results store: schema, atomic result records, concurrent writers, exclusive claims."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from pathlib import Path

import pytest

from muonft.store import SCHEMA_VERSION, Store


def _record(i: int, dir_: str) -> dict:
    return {"run_id": f"r{i:04d}", "status": "done", "spec": {"kind": "synthetic", "lr": i},
            "metrics": {"target": float(i), "test": i + 0.5, "target_name": "val_loss",
                        "higher_is_better": False},
            "curves": {"val_loss": [[0, 3.0], [10, float(i)]]},
            "diagnostics": {"attn_q": {"stable_rank": 2.0}},
            "diagnostics_update": {"overall": {"stable_rank": 1.0, "spectral_entropy": 0.5}},
            "diagnostics_lora": {"attn_q": {"A": {"stable_rank": 1.5}, "BA": {"max_norm": 0.1}}},
            "timings": {"wall_s": 0.1}, "versions": {"muonft": "t"}, "error": None}


def _writer(dir_: str, start: int, n: int) -> None:
    st = Store(dir_)
    for i in range(start, start + n):
        st.record_result(_record(i, dir_))
    st.close()


def _claimer(dir_: str, ids: list[str], token: str, q) -> None:
    st = Store(dir_)
    q.put([rid for rid in ids if st.claim(rid, token)])
    st.close()


def test_schema_and_record_roundtrip(tmp_path):
    st = Store(tmp_path)
    assert (tmp_path / "results.sqlite").exists()
    assert st.schema_version() == SCHEMA_VERSION
    assert st.rows("PRAGMA journal_mode")[0][0] == "wal"
    assert st.record_result(_record(7, str(tmp_path)))
    runs = st.runs()
    assert list(runs.id) == ["r0007"] and runs.status[0] == "done"
    assert runs.meta[0]["target_name"] == "val_loss" and runs.meta[0]["higher_is_better"] is False
    m = st.metrics().set_index("name").value
    assert m["target"] == 7.0 and m["test"] == 7.5 and "higher_is_better" not in m
    assert len(st.curves(["r0007"])) == 2
    d = st.diagnostics()
    assert set(d.kind) == {"weight", "update", "lora_A", "lora_BA"}
    # re-recording replaces, never duplicates
    st.record_result(_record(7, str(tmp_path)))
    assert len(st.metrics()) == 2 and len(st.curves()) == 2
    st.close()
    assert Store(tmp_path).schema_version() == SCHEMA_VERSION  # reopen: no migration rerun


def test_claim_then_record_needs_the_claim(tmp_path):
    st = Store(tmp_path)
    st.enqueue([("a", "synthetic", {"lr": 1})], sweep="s")
    assert st.claim("a", "tok1")
    assert not st.claim("a", "tok2")  # already running
    assert not st.record_result(_record(1, ""), run_id="a", token="tok2")  # not the holder
    assert st.status_counts()["running"] == 1
    assert st.record_result(_record(1, ""), run_id="a", token="tok1")
    assert st.status_counts()["done"] == 1
    assert not st.record_result(_record(1, ""), run_id="a", token="tok1")  # claim released


def test_failed_record_keeps_traceback_and_requeue(tmp_path):
    st = Store(tmp_path)
    st.enqueue([("a", "synthetic", {})])
    st.claim("a", "t")
    st.mark_failed("a", "RuntimeError: boom", "Traceback ...\nRuntimeError: boom", token="t")
    r = st.runs().iloc[0]
    assert r.status == "failed" and "boom" in r.traceback
    assert st.requeue(["a"]) == ["a"]
    assert st.runs().iloc[0].status == "queued"


def test_stale_running_claim_of_a_dead_executor_is_requeued(tmp_path):
    st = Store(tmp_path)
    st.enqueue([("a", "synthetic", {}), ("b", "synthetic", {})])
    p = mp.get_context("spawn").Process(target=int)
    p.start()
    p.join()
    assert st.claim("a", "dead", pid=p.pid)  # its executor is gone
    assert st.claim("b", "alive")  # held by this (live) process, fresh heartbeat
    assert st.requeue(["a", "b"], statuses=()) == ["a"]
    assert st.requeue(["b"], statuses=(), stale_after_s=-1) == ["b"]  # heartbeat too old


def test_two_writer_processes_lose_nothing(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), k * 150, 150)) for k in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] == 300
    assert db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 600
    assert db.execute("SELECT COUNT(*) FROM curves").fetchone()[0] == 600
    assert db.execute("SELECT COUNT(DISTINCT run_id) FROM diagnostics").fetchone()[0] == 300


def test_concurrent_claims_are_exclusive(tmp_path):
    st = Store(tmp_path)
    ids = [f"r{i}" for i in range(200)]
    st.enqueue([(i, "synthetic", {}) for i in ids])
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(str(tmp_path), ids, f"t{k}", q))
             for k in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(60)
    assert sorted(got[0] + got[1]) == sorted(ids)  # every id claimed exactly once
    assert not set(got[0]) & set(got[1])


@pytest.mark.parametrize("damage", ["truncate", "scribble"])
def test_a_damaged_store_is_refused_with_one_line(tmp_path, capsys, damage):
    import shutil

    from muonft.cli import main
    from muonft.errors import StoreError

    fixture = Path(__file__).parent / "fixtures" / "store_v0" / "results.sqlite"
    shutil.copy(fixture, tmp_path / "results.sqlite")
    path = tmp_path / "results.sqlite"
    if damage == "truncate":
        path.write_bytes(b"")
    else:  # a page of the b-trees overwritten, as a failing disk would
        data = bytearray(path.read_bytes())
        data[8192:12288] = bytes(range(256)) * 16
        path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="move it away and run the sweep again"):
        Store(tmp_path)
    for cmd in (["runs", str(tmp_path)], ["report", str(tmp_path)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"results store {path}" in err[0], err


def test_a_changed_number_inside_a_record_is_detected(tmp_path, capsys):
    """A flipped byte inside a record passes SQLite's page checks; the per-run digest written
    with each result catches it when the numbers are read (report, runs)."""
    from muonft.cli import main
    from muonft.errors import StoreError

    st = Store(tmp_path)
    st.record_result({"status": "done", "spec": {"kind": "synthetic", "lr": 0.1},
                      "metrics": {"target": 2.5, "test": 2.6, "nan": float("nan")}},
                     run_id="r1")
    assert st.metrics().set_index("name").loc["target", "value"] == 2.5  # intact: reads
    st._db.execute("UPDATE metrics SET value = 2.4 WHERE run_id='r1' AND name='target'")
    with pytest.raises(StoreError, match=r"1 run record\(s\) whose numbers changed .*r1"):
        st.metrics()
    st.close()
    assert main(["report", str(tmp_path)]) == 2
    assert "numbers changed since they were written" in capsys.readouterr().err


def test_an_old_store_is_migrated_and_its_runs_still_read(tmp_path):
    import shutil

    shutil.copy(Path(__file__).parent / "fixtures" / "store_v0" / "results.sqlite",
                tmp_path / "results.sqlite")
    st = Store(tmp_path)
    assert st.schema_version() == SCHEMA_VERSION == 2
    assert len(st.metrics()) > 0  # runs without a digest are read as before
    st.close()
