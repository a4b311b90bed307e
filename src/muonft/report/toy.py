"""Figures of the toy implicit-bias experiment (from the result dict and traces of run_toy)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from muonft.atomic import atomic_savefig


def plot_distances(result: dict, path: Path) -> None:
    """Bars: each optimizer's norm gap to the min-max-norm and min-spectral-norm interpolants."""
    names = list(result["optimizers"])
    gaps_max = [result["optimizers"][n]["maxnorm_gap"] for n in names]
    gaps_spec = [result["optimizers"][n]["spectral_gap"] for n in names]
    dists = {key: [result["optimizers"][n][key] for n in names]
             for key in ("dist_to_maxnorm", "dist_to_spectral", "dist_to_frobenius")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = range(len(names))
    w = 0.38
    axes[0].bar([i - w / 2 for i in x], gaps_max, w, label="max-norm gap (vs LP)")
    axes[0].bar([i + w / 2 for i in x], gaps_spec, w, label="spectral-norm gap (vs SDP)")
    axes[0].set_xticks(list(x), names)
    axes[0].set_ylabel("(‖W‖ − ‖W_ref‖) / ‖W_ref‖")
    axes[0].set_title("norm above the minimum interpolant")
    axes[0].legend(fontsize=8)
    w3 = 0.27
    for j, (key, vals) in enumerate(dists.items()):
        axes[1].bar([i + (j - 1) * w3 for i in x], vals, w3, label=key.replace("dist_to_", "to "))
    axes[1].set_xticks(list(x), names)
    axes[1].set_ylabel("‖W − W_ref‖_F / ‖W_ref‖_F")
    axes[1].set_title("distance to each reference")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_trajectories(traces: dict, refs: dict, path: Path) -> None:
    """Max-norm and spectral norm of W over the steps, with the two minimum norms as lines."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for name, tr in traces.items():
        if not tr.history.get("step"):
            continue
        axes[0].plot(tr.history["step"], tr.history["max_norm"], label=name)
        axes[1].plot(tr.history["step"], tr.history["spectral_norm"], label=name)
    axes[0].axhline(refs["maxnorm"]["max_norm"], color="k", ls="--", lw=1, label="min (LP)")
    axes[1].axhline(refs["spectral"]["spectral_norm"], color="k", ls="--", lw=1,
                    label="min (SDP)")
    for ax, t in zip(axes, ("‖W‖_max", "‖W‖₂")):
        ax.set_xscale("log")
        ax.set_xlabel("step")
        ax.set_title(t)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)


def plot_lora(result: dict, path: Path) -> None:
    """Relative distance between the Adam- and Muon-trained LoRA updates vs rank."""
    ranks = result["lora"]["ranks"]
    d = [result["lora"]["by_rank"][str(r)]["adam_vs_muon_dist"] for r in ranks]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(ranks, d, "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel("‖ΔW_Adam − ΔW_Muon‖ / mean ‖ΔW‖")
    ax.set_title("Adam vs Muon under LoRA")
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
