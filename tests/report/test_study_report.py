"""The study report renders from the store alone, with diverged and failed runs mixed in."""

from __future__ import annotations

import pytest

from muonft.cli import main
from muonft.experiments.sweep import run_sweep
from muonft.experiments.sweep_spec import parse_sweep_spec
from muonft.report.study import write_report
from muonft.store import Store


def _sweep(tmp_path, task, methods=("full", "lora")):
    s = parse_sweep_spec({
        "name": "r", "base": {"kind": "synthetic", "task": task},
        "grid": {"init": ["gpt-tiny-adamw", "gpt-tiny-muon"], "optimizer": ["adamw", "muon"],
                 "method": list(methods), "lr": [1e-3, 3.16e-3, 1e-2, 3.16e-2]},
        "seeds": [0, 1], "adaptive": {"enabled": False}})
    return run_sweep(s, tmp_path, workers=0, progress=False, quiet=True)


@pytest.mark.slow
def test_report_with_diverged_and_failed_runs(tmp_path, capsys):
    summary = _sweep(tmp_path, "synthetic:diverge_lr=0.03,crash_lr=0.001")
    assert summary.counts["diverged"] > 0 and summary.counts["failed"] > 0
    assert main(["report", str(tmp_path)]) == 0
    md_path = capsys.readouterr().out.strip()
    md = (tmp_path / "report" / "report.md").read_text()
    assert md_path.endswith("report.md")
    for png in ("lr_sweep", "gap", "frontier", "drift", "cosine", "update_rms", "spectral"):
        assert (tmp_path / "report" / f"{png}.png").stat().st_size > 1000
        assert f"({png}.png)" in md
    assert "## Failed runs" in md and "synthetic crash" in md
    assert "| 2 | Mismatch hurts" in md
    # the best LR of every cell is at the low edge's neighbour or an edge: the report flags it
    assert "AT LOW EDGE" in md and "WARNING" in md
    html = (tmp_path / "report" / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 7 and "<table" in html
    assert not list((tmp_path / "report").glob(".*.tmp"))  # atomic writes left no temp files


def test_report_says_what_is_missing(tmp_path):
    _sweep(tmp_path, "synthetic", methods=("full",))
    # drop the diagnostics: the spectral panel and claim 6 must say so instead of crashing
    st = Store(tmp_path)
    with st.transaction() as db:
        db.execute("DELETE FROM diagnostics")
    st.close()
    md = write_report(tmp_path).read_text()
    assert "not drawn — no diagnostics recorded" in md
    assert "| 4a |" in md and "missing: full and LoRA cells" in md
    assert "| 6a |" in md and "no data" in md


def test_report_of_missing_or_empty_store(tmp_path):
    assert main(["report", str(tmp_path / "none")]) == 2
    Store(tmp_path).close()
    assert "holds no runs yet" in write_report(tmp_path).read_text()
