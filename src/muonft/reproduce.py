"""``muonft reproduce``: the whole study in one call, sized by a preset.

This module sits above :mod:`muonft.experiments` and :mod:`muonft.report` and composes them:
the data, pretraining and sweep stages of a preset (:mod:`muonft.experiments.presets`), the toy
experiment (:mod:`muonft.experiments.toy_bias`, figures by :mod:`muonft.report.toy`), then the
report from the store (:mod:`muonft.report.study`). Every stage resumes: rerunning the same
call reuses the cached data and checkpoints, skips finished runs and rewrites the report.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from muonft.atomic import atomic_write_json
from muonft.errors import ConfigError
from muonft.experiments.presets import (
    PRESETS,
    Preset,
    fetch_data,
    get_preset,
    pretrain_stage,
    sweep_specs,
    write_specs,
)
from muonft.experiments.sweep import default_workers_threads, run_sweep
from muonft.experiments.sweep_spec import parse_sweep_spec
from muonft.experiments.toy_bias import run_toy, toy_document
from muonft.report.study import write_index_report, write_report
from muonft.report.toy import write_toy_outputs


@dataclass
class ReproduceResult:
    """Where everything went, and how long each stage took (seconds)."""

    out: Path
    report: Path
    stages: dict[str, float] = field(default_factory=dict)
    sweeps: list[str] = field(default_factory=list)
    checkpoints: dict[str, Path] = field(default_factory=dict)


def reproduce(preset: str | Preset, out: str | os.PathLike | None = None, *,
              workers: int | None = None, progress: bool = True,
              log: Callable[[str], None] = print, skip_toy: bool = False) -> ReproduceResult:
    """Run the whole study for ``preset`` into ``out`` (default ``reproduce-<preset>``) and
    return where the report is. A preset with ``parts`` runs each part into ``out/<part>/``
    and writes an index report linking them."""
    p = preset if isinstance(preset, Preset) else get_preset(preset)
    out = Path(out) if out is not None else Path(f"reproduce-{p.name}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    if p.parts:
        return _reproduce_parts(p, out, workers=workers, progress=progress, log=log,
                                skip_toy=skip_toy)
    w, t = default_workers_threads(workers, None)
    res = ReproduceResult(out=out, report=out / "report" / "report.md")
    specs = [parse_sweep_spec(s, f"preset {p.name}") for s in sweep_specs(p)]
    write_specs(p, out)
    log(f"muonft reproduce --preset {p.name}: {p.description} ({p.budget}); output in {out}")

    t0 = time.perf_counter()
    res.checkpoints = fetch_data(p, log)
    res.stages["data"] = time.perf_counter() - t0
    log(f"[1/5] data ready ({res.stages['data']:.0f} s)")

    t0 = time.perf_counter()
    if p.family in ("gpt", "vision"):
        res.checkpoints = pretrain_stage(p, workers=max(1, w), log=log)
        log(f"[2/5] pretrained models ready ({time.perf_counter() - t0:.0f} s)")
    else:
        log(f"[2/5] no pretraining: fine-tuning {', '.join(p.init_names().values())} "
            f"(pretrained by their authors)")
    res.stages["pretrain"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    for s in specs:
        summary = run_sweep(s, out, workers=w, threads=t, progress=progress, quiet=not progress)
        log(f"  {summary.line()}")
        res.sweeps.append(s.name)
    res.stages["sweeps"] = time.perf_counter() - t0
    log(f"[3/5] sweeps done ({res.stages['sweeps']:.0f} s)")

    t0 = time.perf_counter()
    if not skip_toy and p.toy_seeds > 0:
        run_toy_stage(p, out / "toy", log=log)
    res.stages["toy"] = time.perf_counter() - t0
    log(f"[4/5] toy implicit-bias experiment done ({res.stages['toy']:.0f} s)")

    t0 = time.perf_counter()
    res.report = write_report(out)
    res.stages["report"] = time.perf_counter() - t0
    log(f"[5/5] report written ({res.stages['report']:.0f} s)")
    return res


def _reproduce_parts(p: Preset, out: Path, *, workers: int | None, progress: bool,
                     log: Callable[[str], None], skip_toy: bool) -> ReproduceResult:
    """Run each part preset of ``p`` into ``out/<part>/`` and write an index report."""
    log(f"muonft reproduce --preset {p.name}: {p.description} ({p.budget}); parts "
        f"{', '.join(p.parts)}; output in {out}")
    res = ReproduceResult(out=out, report=out / "report" / "report.md")
    reports = {}
    for part in p.parts:
        t0 = time.perf_counter()
        r = reproduce(part, out / part, workers=workers, progress=progress, log=log,
                      skip_toy=skip_toy)
        reports[part] = r.report
        res.stages[part] = time.perf_counter() - t0
        res.sweeps += r.sweeps
        res.checkpoints.update(r.checkpoints)
    t0 = time.perf_counter()
    res.report = write_index_report(out, {part: (PRESETS[part].description, path)
                                          for part, path in reports.items()},
                                    title=f"muonft reproduce --preset {p.name}")
    res.stages["report"] = time.perf_counter() - t0
    log(f"index report written: {res.report}")
    return res


def run_toy_stage(preset: Preset, out: Path, *, log: Callable[[str], None] = print) -> Path:
    """The toy implicit-bias experiment over ``preset.toy_seeds`` seeds → ``out/toy.json`` (+
    figures of the first seed). Reuses a finished toy.json with the same seeds."""
    path = out / "toy.json"
    if path.exists():
        try:
            doc = json.loads(path.read_text())
            p = doc["problem"]
            if len(doc.get("seeds", [doc])) == preset.toy_seeds and \
                    (p["n"], p["d"], p["k"]) == tuple(preset.toy_size):
                log(f"  toy: reusing {path}")
                return path
        except (json.JSONDecodeError, KeyError, TypeError):
            pass  # a torn or foreign file: compute it again
    results = []
    n, d, k = preset.toy_size
    for s in range(preset.toy_seeds):
        res, traces = run_toy(n, d, k, s, step_fraction=preset.toy_step_fraction)
        if s == 0:
            write_toy_outputs(res, traces, out)
        results.append(res)
        log(f"  toy: seed {s} done ({s + 1}/{preset.toy_seeds})")
    return atomic_write_json(path, toy_document(results))
