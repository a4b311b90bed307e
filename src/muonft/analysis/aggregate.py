"""Best-LR selection, seed aggregation and adaptive LR grids, from the results store.

A *cell* is every run that shares all settings except ``lr`` and ``seed``. Per cell, the best LR
is the one with the best mean validation metric (``target``) over seeds, respecting
``higher_is_better``; a diverged run counts as the worst possible value, a failed run is left out.
At the best LR, the reported metric (``test`` when recorded, else ``target``) is given as
mean ± std over seeds with a 95% confidence half-width ``t₀.₉₇₅,ₙ₋₁ · s/√n`` (Student t).

All functions take and return pandas DataFrames so that tests and notebooks can feed them
synthetic frames.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import stdtrit  # the t quantile; far lighter to import than scipy.stats

from muonft.cache import cache_dir
from muonft.spec import RunSpec, cell_key
from muonft.store import Store

# Spec fields shown to describe a cell (when they vary).
LABEL_FIELDS = ("init", "task", "optimizer", "method", "lora.rank", "lora.variant", "lora.alpha",
                "muon.scale", "steps", "update_rank", "max_drift", "lora_muon")


def pretrained_with(init: str) -> str:
    """The pretraining optimizer of an ``init``: ``spec.optimizer`` of its ``run.json`` when it
    is a ``muonft pretrain`` output (a path, or a checkpoint name in the cache), else what its
    name tells (``…muon…`` → ``muon``, ``…adam…`` → ``adamw``; HF sources and ``hf:`` models
    → ``adamw`` unless named Muon/Moonlight), else the init itself."""
    for d in (Path(str(init)).expanduser(), _cache_checkpoints() / str(init)):
        try:
            opt = json.loads((d / "run.json").read_text())["spec"]["optimizer"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if opt in ("adamw", "muon"):
            return opt
    low = str(init).lower()
    # lazy: muonft.models imports torch (~2 s), which a store reader (muonft runs) never needs
    from muonft.models.hf import MODEL_SOURCES

    if str(init) in MODEL_SOURCES or low.startswith("hf:"):
        # third-party checkpoints: AdamW-pretrained unless the name says Muon (Moonlight)
        return "muon" if "muon" in low or "moonlight" in low else "adamw"
    if "muon" in low:
        return "muon"
    if "adam" in low:
        return "adamw"
    return str(init)


def _cache_checkpoints() -> Path:
    return cache_dir() / "checkpoints"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = tuple(v) if isinstance(v, list) else v
    return out


def runs_frame(store: Store, sweep: str | None = None) -> pd.DataFrame:
    """One row per run: ``run_id``, ``status``, ``error``, every spec field flattened
    (``optimizer``, ``lr``, ``lora.rank`` …), ``cell``, ``pretrained``, ``higher_is_better``
    and one column per scalar metric."""
    runs = store.runs(sweep)
    rows = []
    for r in runs.itertuples(index=False):
        spec = RunSpec.model_validate(r.spec)
        shown = spec.model_dump(mode="json")
        if spec.method == "full":  # settings that did not shape the run are left blank
            shown["lora"] = dict.fromkeys(shown["lora"])
        if spec.optimizer == "adamw":
            shown["muon"] = dict.fromkeys(shown["muon"])
        row = {"run_id": r.id, "status": r.status, "error": r.error, "wall_s": r.wall_s,
               **_flatten(shown), "cell": cell_key(spec),
               "pretrained": pretrained_with(spec.init),
               "higher_is_better": bool((r.meta or {}).get("higher_is_better", False))}
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    m = store.metrics(sweep)
    # Drift is a per-group diagnostic in the engine's record; its ``overall`` value stands in
    # for the scalar metric when a runner does not report one.
    d = store.diagnostics(sweep)
    d = d[(d.kind == "weight") & (d.group == "overall") &
          d.metric.isin(["l2_drift", "cosine_to_init"])]
    if not d.empty:
        have = set(zip(m.run_id, m.name)) if not m.empty else set()
        d = d[[(r, n) not in have for r, n in zip(d.run_id, d.metric)]]
        m = pd.concat([m, d.rename(columns={"metric": "name"})[["run_id", "name", "value"]]])
    if not m.empty:
        wide = m.pivot_table(index="run_id", columns="name", values="value", aggfunc="first")
        frame = frame.merge(wide, left_on="run_id", right_index=True, how="left")
    return frame


def without_constrained(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` without the constrained-update Muon runs (``update_rank``, ``max_drift``,
    ``lora_muon: joint``): the study's claims and main panels compare plain optimizers."""
    if frame.empty:
        return frame
    keep = pd.Series(True, index=frame.index)
    for col in ("update_rank", "max_drift"):
        if col in frame:
            keep &= frame[col].isna()
    if "lora_muon" in frame:
        keep &= frame["lora_muon"].fillna("independent") != "joint"
    return frame[keep]


def _badness(values: pd.Series, higher_is_better: bool) -> pd.Series:
    return -values if higher_is_better else values


def lr_table(frame: pd.DataFrame, metric: str = "target") -> pd.DataFrame:
    """Per cell and LR: mean, std and count of ``metric`` over seeds (finished runs), number
    of diverged and failed runs, and ``score`` (mean badness, +inf if any seed diverged)."""
    if frame.empty or metric not in frame:
        return pd.DataFrame()
    rows = []
    for (cell, lr), g in frame.groupby(["cell", "lr"], sort=True):
        hib = bool(g["higher_is_better"].iloc[0])
        ok = g[g.status == "done"]
        vals = ok[metric].astype(float).dropna()
        n_div = int((g.status == "diverged").sum())
        if not len(vals) and not n_div:
            continue  # only failed (or unfinished) runs: no evidence about this LR
        score = float(_badness(vals, hib).mean()) if len(vals) else math.inf
        if n_div:
            score = math.inf
        row = {"cell": cell, "lr": lr, "mean": vals.mean() if len(vals) else math.nan,
               "std": vals.std(ddof=1) if len(vals) > 1 else math.nan, "n": len(vals),
               "n_diverged": n_div, "n_failed": int((g.status == "failed").sum()),
               "score": score}
        for extra in ("update_rms", "l2_drift", "cosine_to_init", "forgetting", "zero_shot",
                      "test"):
            if extra in ok:
                row[f"{extra}_mean"] = ok[extra].astype(float).mean()
        rows.append(row)
    return pd.DataFrame(rows)


def t_ci_halfwidth(values: np.ndarray | list[float], level: float = 0.95) -> float:
    """Half-width of the Student-t confidence interval of a mean: t_{(1+level)/2, n−1}·s/√n
    (NaN for fewer than 2 values)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return math.nan
    return float(stdtrit(len(v) - 1, (1 + level) / 2) * v.std(ddof=1) / math.sqrt(len(v)))


def best_lr_table(frame: pd.DataFrame, metric: str = "target", report: str = "test"
                  ) -> pd.DataFrame:
    """Per cell: the best LR by mean ``metric`` over seeds (ties → the smaller LR), whether it
    sits at the low/high edge of the cell's LRs, and the ``report`` metric (``test`` if
    recorded, else ``metric``) at that LR: per-seed ``values``, ``mean``, ``std``, ``ci95``."""
    lt = lr_table(frame, metric)
    if lt.empty:
        return pd.DataFrame()
    if report not in frame or frame[report].isna().all():
        report = metric
    rows = []
    for cell, g in lt.groupby("cell", sort=False):
        g = g.sort_values("lr")
        finite = g[np.isfinite(g.score)]
        best = (finite if len(finite) else g).sort_values(["score", "lr"]).iloc[0]
        lrs = list(g.lr)
        edge = "low" if best.lr == lrs[0] else "high" if best.lr == lrs[-1] else ""
        if len(lrs) == 1:
            edge = "both"
        cell_runs = frame[frame.cell == cell]
        at = cell_runs[(cell_runs.lr == best.lr) & (cell_runs.status == "done")]
        vals = at[report].astype(float).dropna().to_numpy()
        first = cell_runs.iloc[0]
        row = {"cell": cell, **{f: first.get(f) for f in LABEL_FIELDS if f in cell_runs},
               "pretrained": first["pretrained"], "higher_is_better": first["higher_is_better"],
               "best_lr": float(best.lr), "edge": edge, "lrs": lrs,
               "val_mean": best["mean"], "metric": report, "values": list(vals),
               "seeds": list(at.seed), "n": len(vals),
               "mean": float(vals.mean()) if len(vals) else math.nan,
               "std": float(vals.std(ddof=1)) if len(vals) > 1 else math.nan,
               "ci95": t_ci_halfwidth(vals),
               "all_diverged": not len(finite),
               "n_diverged": int((cell_runs.status == "diverged").sum()),
               "n_failed": int((cell_runs.status == "failed").sum())}
        for extra in ("update_rms_mean", "l2_drift_mean", "forgetting_mean"):
            if extra in best:
                row[extra.removesuffix("_mean")] = best[extra]
        rows.append(row)
    return pd.DataFrame(rows)


def cell_label(row: pd.Series | dict[str, Any], varying: list[str] | None = None) -> str:
    """``init optimizer method [rank r]`` (plus any other varying label field)."""
    parts = [str(row.get("init")), str(row.get("optimizer")), str(row.get("method"))]
    if row.get("method") == "lora":
        r = row.get("lora.rank")
        parts.append(f"r{int(r)}" if isinstance(r, (int, float)) and float(r).is_integer()
                     else f"r{r}")
        if row.get("lora.variant") not in (None, "lora"):
            parts.append(str(row.get("lora.variant")))
    for f in varying or []:
        v = row.get(f)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue  # a setting this cell does not have (e.g. update_rank off)
        if f not in ("init", "optimizer", "method", "lora.rank", "lora.variant"):
            parts.append(f"{f}={int(v) if isinstance(v, float) and v.is_integer() else v}")
    return " ".join(parts)
