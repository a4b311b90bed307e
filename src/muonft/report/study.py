"""The study report (``muonft report DIR``): tables and PNG figures drawn from the store only.

``write_report(dir)`` reads ``DIR/results.sqlite`` and writes ``DIR/report/report.md``,
``DIR/report/report.html`` (figures embedded, self-contained) and the PNGs beside them, each
atomically. A panel whose runs are missing is replaced by a sentence saying what is missing;
diverged and failed runs are shown as such, never dropped silently.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from muonft.analysis.aggregate import (
    best_lr_table,
    cell_label,
    lr_table,
    runs_frame,
    without_constrained,
)
from muonft.analysis.verdicts import (
    HOLM_ALPHA,
    SANITY_ROWS,
    claims_table,
    constrained_table,
    mismatch_pairs,
    pair_gap,
    scheme_of,
    toy_claims,
)
from muonft.atomic import atomic_savefig, atomic_write_text
from muonft.report.plots import pyplot
from muonft.report.toy import summary_lines
from muonft.store import Store

OPT_COLORS = {"adamw": "tab:blue", "muon": "tab:red"}
PRE_NAMES = {"adamw": "AdamW-pretrained", "muon": "Muon-pretrained"}


@dataclass
class _Doc:
    """Blocks rendered both to markdown and to HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, df: pd.DataFrame) -> None:
        self.blocks.append(("table", df))

    def pre(self, text: str) -> None:
        self.blocks.append(("pre", text))

    def img(self, path: Path, caption: str) -> None:
        self.blocks.append(("img", (path, caption)))

    def markdown(self) -> str:
        out = []
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"{'#' * x[0]} {x[1]}\n")
            elif kind == "p":
                out.append(f"{x}\n")
            elif kind == "table":
                out.append(_md_table(x) + "\n")
            elif kind == "pre":
                out.append(f"```\n{x}\n```\n")
            else:
                out.append(f"![{x[1]}]({x[0].name})\n\n*{x[1]}*\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
               "</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
               "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;"
               "padding:3px 6px}img{max-width:100%}</style></head><body>"]
        for kind, x in self.blocks:
            if kind == "h":
                out.append(f"<h{x[0]}>{html.escape(x[1])}</h{x[0]}>")
            elif kind == "p":
                out.append(f"<p>{html.escape(x)}</p>")
            elif kind == "table":
                out.append(x.to_html(index=False, na_rep="–", escape=True))
            elif kind == "pre":
                out.append(f"<pre>{html.escape(x)}</pre>")
            else:
                data = base64.b64encode(x[0].read_bytes()).decode()
                out.append(f"<figure><img src='data:image/png;base64,{data}' "
                           f"alt='{html.escape(x[1])}'><figcaption>{html.escape(x[1])}"
                           f"</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.4g}"
    return str(v).replace("|", "\\|")


def _md_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "*(no rows)*"
    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    rows = ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in df.itertuples(index=False)]
    return "\n".join([head, sep, *rows])


# ---------------------------------------------------------------------------------------------
# Figures (each returns the PNG path, or a sentence saying what is missing)

def _panels(frame: pd.DataFrame) -> tuple[list[str], list[str]]:
    pres = [p for p in ("adamw", "muon") if p in set(frame.pretrained)]
    pres += sorted(set(frame.pretrained) - set(pres))
    methods = [m for m in ("full", "lora") if m in set(frame.method)]
    return pres, methods


def _lora_main(frame: pd.DataFrame) -> pd.DataFrame:
    """Full runs plus LoRA runs of the main rank (8 if present, else the smallest), plain
    variant — the runs the 2×2 panels show."""
    lora = frame[frame.method == "lora"]
    if lora.empty:
        return frame
    ranks = sorted(lora["lora.rank"].dropna().astype(int).unique())
    r = 8 if 8 in ranks else ranks[0]
    keep = (frame.method == "full") | ((frame["lora.rank"] == r) &
                                       (frame["lora.variant"].fillna("lora") == "lora"))
    return frame[keep]


def fig_metric_vs_x(frame: pd.DataFrame, lt: pd.DataFrame, out: Path, name: str, y: str,
                    ylabel: str, x: str = "lr", xlabel: str = "learning rate") -> Path | str:
    """One panel per (pretrained × method), one line per fine-tuning optimizer: seed-mean
    ``y`` (± std for the target) vs ``x``; LRs where a run diverged are marked ×."""
    if lt.empty or (y != "mean" and y not in lt):
        return f"no runs with `{ylabel}` recorded"
    plt = pyplot()
    cells = frame.drop_duplicates("cell").set_index("cell")
    lt = lt.join(cells[["pretrained", "method", "optimizer"]], on="cell")
    pres, methods = _panels(frame)
    fig, axes = plt.subplots(len(pres), len(methods), squeeze=False,
                             figsize=(4.6 * len(methods), 3.4 * len(pres)))
    for i, pre in enumerate(pres):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            sub = lt[(lt.pretrained == pre) & (lt.method == method)]
            for opt, g in sub.groupby("optimizer"):
                g = g.sort_values("lr")
                ok = g[np.isfinite(g[y].astype(float))]
                xo = ok[x] if x in ok else ok["lr"]
                ax.plot(xo, ok[y], "o-", color=OPT_COLORS.get(opt), label=f"{opt} fine-tune")
                if y == "mean" and ok["std"].notna().any():
                    ax.fill_between(xo, ok["mean"] - ok["std"].fillna(0),
                                    ok["mean"] + ok["std"].fillna(0),
                                    color=OPT_COLORS.get(opt), alpha=0.15)
                div = g[g.n_diverged > 0]
                if len(div) and x == "lr":
                    top = ax.get_ylim()[1] if len(ok) else 1.0
                    ax.plot(div["lr"], [top] * len(div), "x", color=OPT_COLORS.get(opt),
                            markersize=9, label=f"{opt} diverged")
            if x in ("lr", "update_rms_mean"):
                ax.set_xscale("log")
                _log_ticks(ax, sub["lr"] if x == "lr" else None)
            ax.set_title(f"{PRE_NAMES.get(pre, pre)}, {method}", fontsize=10)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
            if sub.empty:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center")
            else:
                ax.legend(fontsize=7)
    fig.tight_layout()
    path = atomic_savefig(fig, out / f"{name}.png")
    plt.close(fig)
    return path


def _log_ticks(ax: Any, values: pd.Series | None) -> None:
    """Label a log axis with plain numbers only (at the given values when there are few), so
    that axes spanning less than a decade do not stack minor-tick labels."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.xaxis.set_minor_formatter(NullFormatter())
    if values is not None and 0 < values.nunique() <= 8:
        ax.set_xticks(sorted(values.unique()))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))


def fig_gaps(best: pd.DataFrame, out: Path) -> Path | str:
    """Muon − AdamW gap (badness of the mismatched minus the matched optimizer at each one's
    best LR, ± 95% CI, paired over common seeds where they match) under full vs LoRA, and
    vs LoRA rank."""
    bars = []
    for method in ("full", "lora"):
        sub = best[best.method == method]
        if method == "lora" and len(sub):
            sub = _lora_main(sub)
        for pre, mis, mat in mismatch_pairs(sub, method):
            bars.append((f"{PRE_NAMES.get(pre, pre)}\n{method}", *pair_gap(mis, mat)))
    lora = best[(best.method == "lora")]
    if "lora.variant" in lora:
        lora = lora[lora["lora.variant"].fillna("lora") == "lora"]
    rank_lines: dict[str, list[tuple[int, float, float]]] = {}
    for r, g in lora.groupby("lora.rank"):
        for pre, mis, mat in mismatch_pairs(g, "lora"):
            rank_lines.setdefault(pre, []).append((int(r), *pair_gap(mis, mat)))
    if not bars:
        return "no pair of cells that differ only in the fine-tuning optimizer"
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    xs = np.arange(len(bars))
    axes[0].bar(xs, [b[1] for b in bars], yerr=[0 if math.isnan(b[2]) else b[2] for b in bars],
                color=["tab:gray" if "full" in b[0] else "tab:green" for b in bars], capsize=4)
    axes[0].set_xticks(xs, [b[0] for b in bars], fontsize=8)
    axes[0].axhline(0, color="k", lw=0.8)
    axes[0].set_ylabel("mismatched − matched (worse > 0)")
    axes[0].set_title("optimizer-mismatch gap, full vs LoRA", fontsize=10)
    ax = axes[1]
    if any(len(v) >= 2 for v in rank_lines.values()):
        for pre, pts in rank_lines.items():
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[0 if math.isnan(p[2]) else p[2] for p in pts], marker="o",
                        capsize=3, label=PRE_NAMES.get(pre, pre))
        ax.set_xscale("log", base=2)
        ax.axhline(0, color="k", lw=0.8)
        ax.legend(fontsize=8)
        ax.set_xlabel("LoRA rank")
    else:
        ax.text(0.5, 0.5, "rank study missing\n(needs ≥ 2 LoRA ranks)", ha="center",
                transform=ax.transAxes)
    ax.set_title("gap vs LoRA rank", fontsize=10)
    fig.tight_layout()
    path = atomic_savefig(fig, out / "gap.png")
    plt.close(fig)
    return path


def fig_frontier(lt: pd.DataFrame, frame: pd.DataFrame, out: Path) -> Path | str:
    """Forgetting vs target improvement (zero-shot − target, oriented so that > 0 is better)
    over LRs, one curve per optimizer: compares optimizers at matched adaptation."""
    need = {"forgetting_mean", "zero_shot_mean"}
    if lt.empty or not need <= set(lt):
        return "no runs with `forgetting` and `zero_shot` recorded"
    lt = lt.copy()
    hib = frame.drop_duplicates("cell").set_index("cell").higher_is_better
    sign = lt.cell.map(lambda c: 1.0 if hib.get(c, False) else -1.0)
    lt["improvement"] = sign * (lt["mean"] - lt["zero_shot_mean"])
    return fig_metric_vs_x(frame, lt, out, "frontier", "forgetting_mean", "forgetting",
                           x="improvement", xlabel="target improvement over zero-shot")


def fig_spectral(best: pd.DataFrame, frame: pd.DataFrame, diag: pd.DataFrame, out: Path
                 ) -> Path | str:
    """Stable rank and spectral entropy of the update ΔW per layer group, AdamW- vs
    Muon-trained (full fine-tuning runs at each cell's best LR, seed- and cell-averaged)."""
    if diag is None or diag.empty:
        return "no diagnostics recorded"
    ids = []
    for row in best.itertuples(index=False):
        sel = frame[(frame.cell == row.cell) & (frame.lr == row.best_lr) &
                    (frame.status == "done")]
        ids += [(rid, row.optimizer, row.method) for rid in sel.run_id]
    runs = pd.DataFrame(ids, columns=["run_id", "optimizer", "method"])
    d = diag[(diag.kind == "update") & diag.metric.isin(["stable_rank", "spectral_entropy"])]
    d = d.merge(runs, on="run_id")
    d = d[d.group != "overall"]
    if d.empty:
        return "no update diagnostics at the best LRs"
    plt = pyplot()
    methods = [m for m in ("full", "lora") if m in set(d.method)]
    fig, axes = plt.subplots(len(methods), 2, squeeze=False, figsize=(10, 3.2 * len(methods)))
    for i, method in enumerate(methods):
        for j, metric in enumerate(("stable_rank", "spectral_entropy")):
            ax = axes[i][j]
            sub = d[(d.method == method) & (d.metric == metric)]
            tab = sub.groupby(["group", "optimizer"]).value.mean().unstack()
            groups = list(tab.index)
            xs = np.arange(len(groups))
            for k, opt in enumerate(tab.columns):
                ax.bar(xs + (k - 0.5) * 0.38, tab[opt], width=0.38,
                       color=OPT_COLORS.get(opt), label=opt)
            ax.set_xticks(xs, groups, fontsize=8, rotation=30)
            ax.set_title(f"{metric.replace('_', ' ')} of ΔW, {method}", fontsize=10)
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = atomic_savefig(fig, out / "spectral.png")
    plt.close(fig)
    return path


def fig_constrained_gap(best: pd.DataFrame, ctab: pd.DataFrame, out: Path) -> Path | str:
    """Muon − AdamW gap vs rank: low-rank Muon full fine-tuning (``update_rank`` r, vs AdamW
    full) next to LoRA (Muon vs AdamW LoRA at rank r), with plain full Muon as a reference
    line; and the gap vs the drift budget ρ (``max_drift``)."""
    if ctab.empty:
        return "no constrained-update runs"
    low = [(int(float(s.split("=")[1])), g, h) for s, g, h in
           zip(ctab.scheme, ctab.gap, ctab.gap_ci) if "update_rank=" in s]
    drift = [(float(s.split("=")[1]), g, h) for s, g, h in
             zip(ctab.scheme, ctab.gap, ctab.gap_ci) if "max_drift=" in s]
    plain = ctab[ctab.scheme == "Muon full"]
    inits = set(ctab.init)
    lora = best[(best.method == "lora") & best.init.isin(inits)]
    if "lora.variant" in lora:
        lora = lora[lora["lora.variant"].fillna("lora") == "lora"]
    if "lora_muon" in lora:
        lora = lora[lora["lora_muon"].fillna("independent") != "joint"]
    lora_pts = []
    for r, g in lora.groupby("lora.rank"):
        for _, mis, mat in mismatch_pairs(g, "lora"):
            lora_pts.append((int(r), *pair_gap(mis, mat)))
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ax = axes[0]
    for pts, label, color in ((sorted(low), "low-rank Muon (update_rank r) − AdamW full",
                               "tab:red"),
                              (sorted(lora_pts), "Muon LoRA − AdamW LoRA (rank r)",
                               "tab:green")):
        if pts:
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts],
                        yerr=[0 if math.isnan(p[2]) else p[2] for p in pts], marker="o",
                        capsize=3, label=label, color=color)
    if len(plain):
        ax.axhline(float(plain.gap.iloc[0]), color="tab:red", ls="--", lw=1,
                   label="full Muon − AdamW full")
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r")
    ax.set_ylabel("Muon − AdamW (worse > 0)")
    ax.set_title("gap vs update rank and vs LoRA rank", fontsize=10)
    ax.legend(fontsize=7)
    ax = axes[1]
    if drift:
        drift.sort()
        ax.errorbar([p[0] for p in drift], [p[1] for p in drift],
                    yerr=[0 if math.isnan(p[2]) else p[2] for p in drift], marker="o",
                    capsize=3, color="tab:purple", label="drift-budget Muon − AdamW full")
        if len(plain):
            ax.axhline(float(plain.gap.iloc[0]), color="tab:red", ls="--", lw=1,
                       label="full Muon − AdamW full")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("drift budget ρ (max ‖W−W₀‖/‖W₀‖)")
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no drift-budget runs", ha="center", transform=ax.transAxes)
    ax.set_title("gap vs drift budget", fontsize=10)
    fig.tight_layout()
    path = atomic_savefig(fig, out / "constrained_gap.png")
    plt.close(fig)
    return path


def fig_constrained_frontier(lt: pd.DataFrame, frame: pd.DataFrame, ctab: pd.DataFrame,
                             out: Path) -> Path | str:
    """Forgetting vs target improvement over LRs for AdamW full, full Muon, LoRA Muon,
    low-rank Muon and drift-budget Muon (the inits with constrained runs)."""
    need = {"forgetting_mean", "zero_shot_mean"}
    if ctab.empty or lt.empty or not need <= set(lt):
        return "no constrained-update runs with `forgetting` and `zero_shot` recorded"
    cells = frame[frame.init.isin(set(ctab.init))].drop_duplicates("cell").set_index("cell")
    cells = cells[(cells.optimizer == "muon") | (cells.method == "full")]
    if "lora.variant" in cells:
        cells = cells[(cells.method == "full") |
                      (cells["lora.variant"].fillna("lora") == "lora")]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("tab10")
    for k, (cell, row) in enumerate(cells.iterrows()):
        g = lt[lt.cell == cell].sort_values("lr")
        g = g[np.isfinite(g.forgetting_mean.astype(float))]
        if g.empty:
            continue
        sign = 1.0 if row.higher_is_better else -1.0
        x = sign * (g["mean"] - g["zero_shot_mean"])
        name = scheme_of(row)
        style = "s-" if name == "AdamW full" else "o-"
        ax.plot(x, g.forgetting_mean, style, color="k" if name == "AdamW full" else cmap(k % 10),
                label=name, ms=4)
    ax.set_xlabel("target improvement over zero-shot")
    ax.set_ylabel("forgetting")
    ax.set_title("forgetting vs adaptation over LRs, constrained schemes", fontsize=10)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = atomic_savefig(fig, out / "constrained_frontier.png")
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------

def write_report(where: str | Path, sweep: str | None = None) -> Path:
    """Write ``report.md``, ``report.html`` and the PNG figures under ``WHERE/report/`` from
    ``WHERE/results.sqlite``; returns the path of report.md."""
    where = Path(where)
    with Store(where, create=False) as store:
        if sweep is not None and sweep not in store.sweeps():
            raise ValueError(f"no sweep {sweep!r} in {store.path}; sweeps: "
                             f"{', '.join(store.sweeps()) or 'none'}")
        frame = runs_frame(store, sweep)
        diag = store.diagnostics(sweep)
        events = store.events(sweep)
        counts = store.status_counts(sweep)
        store_path = store.path
    out = where / "report"
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc()
    doc.h("muonft study report", 1)
    doc.p(f"Store `{store_path}`{f', sweep `{sweep}`' if sweep else ''}; generated "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}. Every number and figure below is computed "
          f"from the store.")
    doc.p("Runs: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    toy_section(doc, where / "toy" / "toy.json", out)
    if frame.empty:
        doc.p("The store holds no runs yet: run `muonft sweep SPEC.yaml --out DIR` first.")
        return _write(doc, out)
    best = best_lr_table(frame)
    lt = lr_table(frame)

    doc.h("Claims of the study (2–6)")
    claims = claims_table(frame, diag)
    doc.p("Verdict rule: `reproduced` when the whole 95% CI of the effect lies on the side the "
          "claim predicts, `not reproduced` when it lies wholly on the other side, "
          "`inconclusive` when it contains 0 (the effect is smaller than `resolvable`, the CI "
          "half-width: the smallest effect these runs could resolve), `no data` when the runs "
          "needed are missing. Metrics are oriented so that positive gaps mean worse. "
          f"`holm`: the verdict after Holm's step-down adjustment of the two-sided p-values "
          f"over the family of claim rows (all rows but the sanity rows "
          f"{', '.join(SANITY_ROWS)}) at α = {HOLM_ALPHA}. `equivalence`: two one-sided tests "
          f"(90% CI inside ± margin) where a claim says \"matches\" or \"does not help\"; "
          f"margins: 0.3 points of accuracy, 0.01 nats of loss. Rows 2, 2b, 2c and 4a are "
          f"pooled over both mismatch directions; `.adamw` / `.muon` rows are one direction.")
    doc.table(claims[["claim", "statement", "measured", "estimate", "ci_low", "ci_high",
                      "resolvable", "verdict", "p_value", "holm", "equivalence", "method"]])

    doc.h("Best learning rate per cell")
    if best.empty:
        doc.p("No cell has a finished run.")
    else:
        t = best.copy()
        varying = [f for f in ("init", "task", "steps", "muon.scale", "update_rank",
                               "max_drift", "lora_muon")
                   if f in frame and frame[f].nunique(dropna=False) > 1]
        t["cell"] = [cell_label(r, varying) for _, r in t.iterrows()]
        t["edge"] = t["edge"].map(lambda e: f"AT {e.upper()} EDGE" if e else "interior")
        t["lrs"] = t["lrs"].map(lambda v: ", ".join(f"{x:g}" for x in v))
        doc.table(t[["cell", "best_lr", "edge", "lrs", "metric", "mean", "std", "ci95", "n",
                     "n_diverged", "n_failed"]])
        at_edge = best[best.edge != ""]
        if len(at_edge):
            doc.p(f"WARNING: {len(at_edge)} cell(s) still have their best LR at an edge of "
                  f"their grid; their optimum may lie outside it (raise "
                  f"adaptive.max_extensions or widen the grid).")
    if len(events):
        doc.h("Adaptive grid log", 3)
        doc.table(events[["kind", "message"]])

    doc.h("Figures")
    plain = without_constrained(frame)
    best_plain = best_lr_table(plain) if len(plain) < len(frame) else best
    shown = _lora_main(plain)
    shown_lt = lt[lt.cell.isin(set(shown.cell))]
    figures = [
        ("LR sweeps: target metric (seed mean ± std) vs LR per fine-tuning optimizer, "
         "panels pretrained × method",
         fig_metric_vs_x(shown, shown_lt, out, "lr_sweep", "mean", "target (validation)")),
        ("Muon − AdamW mismatch gap under full vs LoRA, and vs LoRA rank",
         fig_gaps(best_plain, out)),
        ("Forgetting vs target improvement over LRs (frontier)",
         fig_frontier(shown_lt, shown, out)),
        ("Relative L2 drift of the weights vs LR",
         fig_metric_vs_x(shown, shown_lt, out, "drift", "l2_drift_mean", "L2 drift")),
        ("Cosine similarity of the weights to the pretrained ones vs LR",
         fig_metric_vs_x(shown, shown_lt, out, "cosine", "cosine_to_init_mean",
                         "cosine to pretrained")),
        ("Target metric vs measured mean update RMS per step (matched update strength)",
         fig_metric_vs_x(shown, shown_lt, out, "update_rms", "mean", "target (validation)",
                         x="update_rms_mean", xlabel="mean update RMS per step")),
        ("Stable rank and spectral entropy of the update per layer group, AdamW vs Muon",
         fig_spectral(best_plain, plain, diag, out)),
    ]
    for caption, res in figures:
        if isinstance(res, Path):
            doc.img(res, caption)
        else:
            doc.p(f"*{caption}*: not drawn — {res}.")

    constrained_section(doc, frame, best, lt, out)

    bad = frame[frame.status == "failed"]
    if len(bad):
        doc.h("Failed runs")
        doc.table(pd.DataFrame({"run_id": bad.run_id,
                                "run": [cell_label(r) + f" lr={r['lr']:g} s{r['seed']}"
                                        for _, r in bad.iterrows()],
                                "error": bad.error.fillna("").map(lambda e: e[:160])}))
    return _write(doc, out)


def constrained_section(doc: _Doc, frame: pd.DataFrame, best: pd.DataFrame, lt: pd.DataFrame,
                        out: Path) -> None:
    """The constrained-update Muon section (issue 10), when the store holds such runs."""
    ctab = constrained_table(frame, best)
    if ctab.empty:
        return
    doc.h("Constrained-update Muon vs AdamW full fine-tuning")
    doc.p("Each Muon scheme at its best LR against AdamW full fine-tuning of the same model at "
          "its best LR. `gap` = scheme − AdamW in the reported metric, oriented so that > 0 is "
          "worse, with its 95% CI half-width (`how`: paired over the common seeds, else "
          "Welch); `within_adamw_ci`: the scheme is better or "
          "within AdamW's own 95% seed CI; `forgets_no_more`: its mean forgetting is at most "
          "AdamW's mean + CI half-width; `meets_target` = both.")
    t = ctab.copy()
    t["edge"] = t["edge"].map(lambda e: f"AT {e.upper()} EDGE" if e else "interior")
    doc.table(t)
    doc.p(constrained_verdict(ctab))
    for caption, res in (
            ("Muon − AdamW gap vs update rank (low-rank Muon) and vs LoRA rank; gap vs drift "
             "budget", fig_constrained_gap(best, ctab, out)),
            ("Forgetting vs target improvement over LRs per scheme",
             fig_constrained_frontier(lt, frame, ctab, out))):
        if isinstance(res, Path):
            doc.img(res, caption)
        else:
            doc.p(f"*{caption}*: not drawn — {res}.")


def constrained_verdict(ctab: pd.DataFrame) -> str:
    """One sentence on issue 10's target from a :func:`constrained_table`: which schemes meet
    it, and whether plain Muon full fine-tuning already does (then these runs cannot tell the
    schemes apart from plain Muon: the mismatch is inside the seed CIs)."""
    met = ctab[ctab.meets_target & (ctab.scheme != "Muon full")]
    line = "Schemes meeting the target: " + (", ".join(met.scheme) if len(met) else "none") + "."
    plain = ctab[ctab.scheme == "Muon full"]
    if len(plain) and bool(plain.meets_target.iloc[0]):
        r = plain.iloc[0]
        line += (f" Plain Muon full fine-tuning meets it too (gap {r['gap']:+.4g} ± "
                 f"{r['gap_ci']:.3g}, AdamW's own CI ± {r['adamw_ci95']:.3g}): at this "
                 "resolution there is no mismatch for a scheme to fix.")
    return line


_INDEX_CONSTRAINED = ["scheme", "best_lr", "metric", "mean", "gap", "gap_ci", "forgetting",
                      "forgetting_gap", "forgetting_gap_ci", "meets_target"]


def write_index_report(where: str | Path, parts: dict[str, tuple[str, Path]],
                       title: str = "muonft study report") -> Path:
    """``WHERE/report/report.md`` (+ ``.html``) for a study made of parts: per part (name →
    (description, path of its report.md)) a link to its own report and its claims table,
    recomputed from the part's store, and its constrained-update table when it has one."""
    out = Path(where) / "report"
    out.mkdir(parents=True, exist_ok=True)
    doc = _Doc()
    doc.h(title, 1)
    doc.p(f"Generated {time.strftime('%Y-%m-%d %H:%M:%S')}; each part has its own store and "
          f"full report. The claims tables below are computed from those stores.")
    for name, (description, report) in parts.items():
        doc.h(f"{name}: {description}")
        doc.p(f"Full report: {os.path.relpath(report, out)}")
        with Store(Path(report).parent.parent, create=False) as store:
            frame = runs_frame(store)
            diag = store.diagnostics()
        claims = claims_table(frame, diag)
        if claims.empty:
            doc.p("No finished runs.")
        else:
            doc.table(claims[["claim", "measured", "estimate", "ci_low", "ci_high",
                              "resolvable", "verdict", "holm", "equivalence"]])
        ctab = constrained_table(frame)  # empty without constrained cells or runs
        if not ctab.empty:
            doc.p("Constrained-update Muon vs AdamW full fine-tuning (gaps > 0 are worse; "
                  "95% CI half-widths):")
            doc.table(ctab[[c for c in _INDEX_CONSTRAINED if c in ctab]])
            doc.p(constrained_verdict(ctab))
    return _write(doc, out)


def toy_section(doc: _Doc, toy_json: Path, out: Path) -> None:
    """Claim 1 from the toy experiment's ``toy.json`` (when the project has one): computed
    verdicts, the per-optimizer table and its figures (copied next to the report)."""
    if not toy_json.exists():
        return
    try:
        tdoc = json.loads(toy_json.read_text())
        claims = toy_claims(tdoc)
        lines = summary_lines(tdoc)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        doc.h("Claim 1: implicit bias (toy experiment)")
        doc.p(f"{toy_json} could not be read ({type(e).__name__}: {e}); rerun `muonft toy`.")
        return
    doc.h("Claim 1: implicit bias (toy experiment)")
    doc.p("Under-determined linear regression with a matrix parameter (see `muonft toy`): "
          "which interpolant does each optimizer reach? Gaps are relative excesses over the "
          "smallest norm any interpolant reaches.")
    doc.table(claims[["claim", "statement", "measured", "estimate", "ci_low", "ci_high",
                      "resolvable", "verdict", "method"]])
    doc.pre("\n".join(lines))
    for png in sorted(toy_json.parent.glob("toy_*.png")):
        dst = out / png.name
        tmp = dst.with_suffix(".png.tmp")
        shutil.copyfile(png, tmp)
        tmp.replace(dst)
        doc.img(dst, f"toy experiment: {png.stem.removeprefix('toy_')}")


def _write(doc: _Doc, out: Path) -> Path:
    atomic_write_text(out / "report.html", doc.html("muonft study report"))
    return atomic_write_text(out / "report.md", doc.markdown())
