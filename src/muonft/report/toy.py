"""Figures and the text summary of the toy implicit-bias experiment (from the result dict and
traces of :func:`muonft.experiments.toy_bias.run_toy`, or a stored toy.json)."""

from __future__ import annotations

from pathlib import Path

from muonft.atomic import atomic_savefig
from muonft.report.plots import pyplot


def _grouped_bars(ax, names: list[str], series: dict[str, list[float]], ylabel: str,
                  title: str) -> None:
    width = 0.8 / len(series)
    for j, (label, vals) in enumerate(series.items()):
        offset = (j - (len(series) - 1) / 2) * width
        ax.bar([i + offset for i in range(len(names))], vals, width, label=label)
    ax.set_xticks(list(range(len(names))), names)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)


def plot_distances(result: dict, path: Path) -> None:
    """Per optimizer: norm gaps, distances to the optimal sets, distances to the canonical refs."""
    plt = pyplot()
    opt = result["optimizers"]
    names = list(opt)

    def col(key: str) -> list[float]:
        return [opt[n].get(key, float("nan")) for n in names]

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
    _grouped_bars(axes[0], names, {"max-norm gap (vs LP)": col("maxnorm_gap"),
                                   "spectral gap (vs SDP)": col("spectral_gap")},
                  "(‖W‖ − min) / min", "norm above the minimum")
    _grouped_bars(axes[1], names, {"to min-max-norm set": col("dist_to_maxnorm_set"),
                                   "to min-spectral set": col("dist_to_spectral_set")},
                  "‖W − P(W)‖_F / ‖W_ref‖_F", "distance to the set of minimizers")
    _grouped_bars(axes[2], names, {"to max-norm ref": col("dist_to_maxnorm"),
                                   "to spectral ref (= X⁺Y)": col("dist_to_spectral")},
                  "‖W − W_ref‖_F / ‖W_ref‖_F", "distance to the least-Frobenius minimizer")
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_trajectories(traces: dict, refs: dict, path: Path) -> None:
    """Max-norm and spectral norm of W over the steps, with the two minimum norms as lines."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, tr in traces.items():
        if not tr.history.get("step"):
            continue
        axes[0].plot(tr.history["step"], tr.history["max_norm"], label=name)
        axes[1].plot(tr.history["step"], tr.history["spectral_norm"], label=name)
    axes[0].axhline(refs["min_max_norm"], color="k", ls="--", lw=1, label="min (LP)")
    axes[1].axhline(refs["min_spectral_norm"], color="k", ls="--", lw=1, label="min (SDP)")
    for ax, t in zip(axes, ("‖W‖_max", "‖W‖₂")):
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(t)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_lora(result: dict, path: Path) -> None:
    """Relative distance between the Adam- and Muon-trained updates vs LoRA rank (and full)."""
    plt = pyplot()
    ranks = result["lora"]["ranks"]
    d = [result["lora"]["by_rank"][str(r)]["adam_vs_muon_dist"] for r in ranks]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(ranks, d, "o-", label="LoRA W₀ + BA")
    ax.axhline(result["lora"]["full"]["adam_vs_muon_dist"], color="k", ls="--", lw=1,
               label="full fine-tuning")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("‖ΔW_Adam − ΔW_Muon‖ / mean ‖ΔW‖")
    ax.set_title("Adam vs Muon on a rank-1 target shift")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def write_toy_outputs(result: dict, traces: dict, out: Path) -> list[Path]:
    """Write the three figures of one seed into ``out``; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "toy_norms.png", out / "toy_trajectories.png", out / "toy_lora.png"]
    plot_distances(result, paths[0])
    plot_trajectories(traces, result["references"], paths[1])
    plot_lora(result, paths[2])
    return paths


def summary_lines(doc: dict) -> list[str]:
    """A short text table of a toy.json document (the mean over seeds when it has several)."""
    agg = doc.get("aggregate")
    head = (f"{'optimizer':<9} {'max gap':>8} {'spec gap':>8} {'d(Smax)':>8} {'d(Sspec)':>8} "
            f"{'d(max)':>7} {'d(spec)':>7} {'steps':>7}")
    title = f"mean over {agg['n_seeds']} seeds" if agg else f"seed {doc['problem']['seed']}"
    lines = [title,
             head]
    for name in (agg or doc)["optimizers"]:
        r = ({k: v["mean"] for k, v in agg["optimizers"][name].items()} if agg
             else doc["optimizers"][name])
        lines.append(f"{name:<9} {r['maxnorm_gap']:>8.3f} {r['spectral_gap']:>8.3f} "
                     f"{r['dist_to_maxnorm_set']:>8.3f} {r['dist_to_spectral_set']:>8.3f} "
                     f"{r['dist_to_maxnorm']:>7.3f} {r['dist_to_spectral']:>7.3f} "
                     f"{r['steps']:>7.0f}")
    lora = doc["lora"]
    by = ", ".join(f"r={r}: {lora['by_rank'][str(r)]['adam_vs_muon_dist']:.3f}"
                   for r in lora["ranks"])
    lines.append(f"LoRA Adam-vs-Muon distance (seed {doc['problem']['seed']}): {by}; full "
                 f"{lora['full']['adam_vs_muon_dist']:.3f}")
    return lines


def plot_classification(result: dict, path: Path) -> Path:
    """Log-log curves of 1 − margin ratio (to the optimizer's own norm's optimum) and of the
    direction distance over iterations, one line per optimizer (the classification toy)."""
    plt = pyplot()
    own = {"signgd": "linf", "muon": "spectral", "gd": "fro"}
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for opt, res in result["optimizers"].items():
        norm = own.get(opt, "fro")
        pts = res["curves"][f"margin_ratio_{norm}"]
        axes[0].loglog([t for t, _ in pts], [max(1 - v, 1e-6) for _, v in pts], marker=".",
                       label=f"{opt} (to the {norm} optimum)")
        pts = res["curves"][f"direction_distance_{norm}"]
        axes[1].loglog([t for t, _ in pts], [max(v, 1e-6) for _, v in pts], marker=".",
                       label=f"{opt} ({norm})")
    axes[0].set(xlabel="iteration", ylabel="1 − normalised margin / optimum",
                title="Gap to the max-margin value")
    axes[1].set(xlabel="iteration", ylabel="‖W/‖W‖ − W*/‖W*‖‖_F",
                title="Distance to the max-margin direction")
    for ax in axes:
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Separable {result['k']}-class linear classification, seed {result['seed']}")
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)
    return path


def classification_lines(doc: dict) -> list[str]:
    """The console summary of the classification toy: final margin ratios per optimizer
    (mean and min over seeds)."""
    lines = [f"separable classification, {len(doc['seeds'])} seed(s), {doc['steps']} steps: "
             f"margin ratio to each norm's max-margin optimum (1 = optimal), mean (min)"]
    for opt, keys in doc["summary"].items():
        cells = ", ".join(f"{k.removeprefix('margin_ratio_')} {v['mean']:.3f} ({v['min']:.3f})"
                          for k, v in keys.items())
        lines.append(f"  {opt:7s} {cells}")
    return lines

