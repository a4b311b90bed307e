"""The presets of ``muonft reproduce`` and the stages that belong to experiments: data, the
pretrained models, the sweep specs (the pipeline that adds the toy stage and the report is
:mod:`muonft.reproduce`).

Stages of ``muonft reproduce`` (each resumable: rerunning the same command skips what is finished):

1. **data** — fetch what the preset reads into the cache (sha256-verified): the pretraining
   (KJV) and fine-tuning (Rotten Tomatoes) corpora with the tokenizer and token streams, the
   images (MNIST, sklearn digits), or the third-party models (MiniLM, SmolLM2);
2. **pretrain** — the AdamW- and the Muon-pretrained models of the ``gpt`` (tiny GPT) and
   ``vision`` (small ViT) families, in parallel processes, stored in the cache under the names
   ``muonft pretrain`` gives them and reused by later calls; the ``hf`` family fine-tunes models
   pretrained by their authors (AdamW) and skips this stage;
3. **sweeps** into one results store ``DIR/results.sqlite``:
   ``<preset>-mismatch`` ({AdamW, Muon}-pretrained × {AdamW, Muon} × {full, LoRA r=8} × LR ×
   seeds, adaptive LR grids), ``<preset>-rank`` (LoRA rank study), ``<preset>-variants``
   (rsLoRA, PiSSA, LoRA-One under Muon) and, where the preset asks for them, the
   constrained-update Muon sweeps ``<preset>-lowrank`` (``update_rank``), ``<preset>-drift``
   (``max_drift``) and ``<preset>-joint`` (``lora_muon: joint``); their YAML specs are written to
   ``DIR/specs/`` so ``muonft sweep`` can rerun or extend any of them;
4. **toy** — the implicit-bias experiment (claim 1) over a few seeds, into ``DIR/toy/``;
5. **report** — ``DIR/report/report.md`` + ``report.html``, every number computed from the
   store and ``toy.json``.

A preset with ``parts`` runs each part preset into ``DIR/<part>/`` (with its own report) and
writes ``DIR/report/report.md`` linking them with their claims tables.

Presets: ``quick`` (the demo: every panel and claim present, ≤ 10 minutes on 2 CPU cores from
an empty cache, verdicts mostly inconclusive at that size), ``cpu`` (thorough, 3 seeds, about
2 hours on 2 cores), ``gpu`` (a larger GPT and budget for one GPU), ``vision`` (the ViT
pillar), ``minilm`` (alias ``minilm-rt``: all-MiniLM-L6-v2 on Rotten Tomatoes sentiment),
``smollm2`` (alias ``smollm2-lora``: SmolLM2-135M, LoRA only), ``constrained`` (the
constrained-update schemes on the tiny GPT and on MiniLM). Add one with
:func:`register_preset`.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from muonft.atomic import atomic_write_text
from muonft.cache import cache_dir
from muonft.data import corpus_path, fetch, get_tokenizer, load_lm_splits
from muonft.data.images import fetch_images, image_path
from muonft.errors import ConfigError
from muonft.models.hf import MODEL_SOURCES, fetch_model
from muonft.train import pretrain, vision

DEFAULT_PRETRAIN_STEPS = pretrain.DEFAULT_STEPS


@dataclass(frozen=True)
class Preset:
    """Everything ``reproduce`` needs to size the study.

    ``finetune`` holds RunSpec fields shared by every fine-tuning run (task, steps, batch and
    block size, eval sizes); ``lrs`` maps ``optimizer/method`` to the starting LR grid (the
    adaptive grid extends a cell whose best LR is at an edge, at most ``max_extensions`` times
    per direction).
    """

    name: str
    description: str
    family: str = "gpt"
    inits: dict[str, str] = field(default_factory=dict)
    model: str = "tiny"
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS
    pretrain_batch_size: int = 16
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    lrs: dict[str, list[float]] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    lora_rank: int = 8
    lora_alpha: float = 16.0
    ranks: tuple[int, ...] = (2, 32)
    rank_pretrained: tuple[str, ...] = ("adamw",)
    variants: tuple[str, ...] = ("rslora", "pissa", "lora_one")
    variant_optimizers: tuple[str, ...] = ("muon",)
    max_extensions: int = 1
    toy_seeds: int = 3
    toy_size: tuple[int, int, int] = (20, 40, 10)
    toy_step_fraction: float = 1e-4
    methods: tuple[str, ...] = ("full", "lora")
    pretrained: tuple[str, ...] = ("adamw", "muon")  # which own models to pretrain and tune
    # constrained-update Muon sweeps (issue 10), on the AdamW-pretrained model
    update_ranks: tuple[int, ...] = ()
    max_drifts: tuple[float, ...] = ()
    lora_joint: bool = False
    parts: tuple[str, ...] = ()
    budget: str = ""

    @property
    def kind(self) -> str:
        """The runner kind of this preset's fine-tuning runs."""
        return "vision" if self.family == "vision" else "finetune"

    def pretrain_spec(self, optimizer: str) -> dict[str, Any]:
        """The complete ``muonft pretrain`` spec of this preset's model for ``optimizer``."""
        kw = {"model": self.model, "optimizer": optimizer, "steps": self.pretrain_steps,
              "batch_size": self.pretrain_batch_size, **self.pretrain}
        if self.family == "vision":
            return vision.default_pretrain_spec(**kw)
        return pretrain.default_spec(**kw)

    def checkpoint_name(self, optimizer: str) -> str:
        """Cache name of this preset's pretrained model, as ``muonft pretrain`` names it
        (:func:`muonft.train.pretrain.checkpoint_name`; ViTs:
        :func:`muonft.train.vision.pretrain_checkpoint_name`)."""
        if self.family == "vision":
            return vision.pretrain_checkpoint_name(self.pretrain_spec(optimizer))
        return pretrain.checkpoint_name(self.pretrain_spec(optimizer))

    def corpora(self) -> list[str]:
        """Named corpora (not ``file:``) this preset reads: pretraining, tokenizer, task, and
        the general-English corpora of the HF forgetting probes (KJV, RT); none for ViTs."""
        if self.family == "vision":
            return []
        task = str(self.finetune.get("task", "lm:rt"))
        names = ["rt" if task == "rt-sentiment" else task.removeprefix("lm:")]
        if self.family == "gpt":
            spec = self.pretrain_spec("adamw")
            names = [spec["corpus"], spec["tokenizer_corpus"], *names]
        else:
            names += ["kjv", "rt"]
        return list(dict.fromkeys(n for n in names if ":" not in n))

    def image_sets(self) -> list[str]:
        """Image sources (:mod:`muonft.data.images`) a vision preset reads."""
        if self.family != "vision":
            return []
        task = str(self.finetune.get("task", "digits"))
        return ["mnist", "digits"] if task == "digits" else ["mnist"]

    def init_names(self) -> dict[str, str]:
        """Pretraining optimizer → init of the models this preset fine-tunes: its own
        pretrained GPTs, or the given third-party checkpoints (``inits``)."""
        if self.inits:
            return dict(self.inits)
        return {opt: self.checkpoint_name(opt) for opt in self.pretrained}


_QUICK_FT = {"task": "lm:rt", "steps": 30, "batch_size": 16, "block_size": 64, "warmup": 3,
             "eval_every": 30, "eval_batches": 2}
# A tiny-GPT fine-tuning step (16 × 128 tokens) takes 0.37 s on one core here, ≈ 45 s a run.
_CPU_FT = {"task": "lm:rt", "steps": 100, "batch_size": 16, "block_size": 128, "warmup": 10,
           "eval_every": 50, "eval_batches": 10}
_GPU_FT = {"task": "lm:rt", "steps": 600, "batch_size": 32, "block_size": 256, "warmup": 30,
           "eval_every": 100, "eval_batches": 40}

PRESETS: dict[str, Preset] = {}


FAMILIES = ("gpt", "hf", "vision")


def _check_family(p: Preset) -> None:
    if p.family not in FAMILIES:
        raise ValueError(f"preset family must be one of {', '.join(FAMILIES)}, got "
                         f"{p.family!r}")
    if p.family == "hf" and not p.inits and not p.parts:
        raise ValueError(f"preset {p.name!r}: an hf preset needs inits "
                         f"(pretraining optimizer → model)")
    if not p.pretrained or set(p.pretrained) - {"adamw", "muon"}:
        raise ValueError(f"preset {p.name!r}: pretrained must be a non-empty subset of adamw, "
                         f"muon, got {p.pretrained}")
    bad = [m for m in p.methods if m not in ("full", "lora")]
    if bad or not p.methods:
        raise ValueError(f"preset {p.name!r}: methods must be a non-empty subset of full, "
                         f"lora, got {p.methods}")
    for part in p.parts:
        if part not in PRESETS or PRESETS[part].parts:
            raise ValueError(f"preset {p.name!r}: part {part!r} must be a registered preset "
                             f"without parts of its own")


def register_preset(preset: Preset, *aliases: str) -> None:
    """Make ``muonft reproduce --preset NAME`` available (replaces a preset of that name);
    ``aliases`` are further names for the same preset."""
    for name in (preset.name, *aliases):
        if not name.replace("-", "").isalnum():
            raise ValueError(f"preset name must be alphanumeric (dashes allowed), got "
                             f"{name!r}")
    _check_family(preset)
    for name in (preset.name, *aliases):
        PRESETS[name] = preset


register_preset(Preset(
    name="quick",
    description="the demo: every stage, panel and claim at the smallest useful size",
    pretrain_steps=150, finetune=_QUICK_FT,
    # Centred on the optima of a 5-point LR probe (40-step runs from 250-step models).
    lrs={"adamw/full": [3e-3, 1e-2, 3e-2], "muon/full": [3e-3, 1e-2, 3e-2],
         "adamw/lora": [1e-2, 3e-2, 1e-1], "muon/lora": [1e-2, 3e-2, 1e-1]},
    seeds=(0, 1), ranks=(2, 32), max_extensions=1, toy_seeds=3,
    budget="≤ 10 minutes on 2 CPU cores from an empty cache"))
register_preset(Preset(
    name="cpu",
    description="the thorough CPU study: 3 seeds, wider grids, longer runs",
    pretrain_steps=DEFAULT_PRETRAIN_STEPS, finetune=_CPU_FT,
    lrs={"adamw/full": [1e-3, 3e-3, 1e-2, 3e-2], "muon/full": [1e-3, 3e-3, 1e-2, 3e-2],
         # LoRA: 3e-3 was never best at any rank (measured, 100-step runs); the adaptive
         # grid still extends a cell whose optimum sits at an edge
         "adamw/lora": [1e-2, 3e-2, 1e-1], "muon/lora": [1e-2, 3e-2, 1e-1]},
    seeds=(0, 1, 2), ranks=(1, 32), rank_pretrained=("adamw", "muon"),
    variant_optimizers=("muon",), max_extensions=2, toy_seeds=10,
    budget="≈ 1.6 hours on 2 CPU cores (198 runs with extensions, 26 s of wall time each with 2 "
           "workers; measured)"))
register_preset(Preset(
    name="gpu",
    description="one GPU: the 'small' GPT (6 layers, d=384), longer pretraining and runs",
    model="small", pretrain_steps=3000, pretrain_batch_size=64, finetune=_GPU_FT,
    lrs={"adamw/full": [1e-4, 3e-4, 1e-3, 3e-3], "muon/full": [1e-4, 3e-4, 1e-3, 3e-3],
         "adamw/lora": [3e-4, 1e-3, 3e-3, 1e-2], "muon/lora": [3e-4, 1e-3, 3e-3, 1e-2]},
    seeds=(0, 1, 2), ranks=(1, 2, 4, 32, 128), rank_pretrained=("adamw", "muon"),
    variant_optimizers=("muon", "adamw"), max_extensions=2, toy_seeds=10,
    budget="a few hours on one GPU"))


_VISION_FT = {"task": "mnist-rot", "steps": 150, "batch_size": 64, "warmup": 10,
              "eval_every": 50, "eval_batches": 10}
register_preset(Preset(
    name="vision",
    description="the ViT pillar: vit-tiny pretrained on MNIST with AdamW and Muon, fine-tuned "
                "on rotated MNIST",
    family="vision", model="vit-tiny", pretrain_steps=600, pretrain_batch_size=128,
    finetune=_VISION_FT,
    # Centred on the optima of a 3-seed probe on mnist-rot (README, "Vision (ViT)").
    lrs={"adamw/full": [3e-3, 1e-2, 3e-2], "muon/full": [3e-3, 1e-2, 3e-2],
         "adamw/lora": [3e-3, 1e-2, 3e-2], "muon/lora": [3e-3, 1e-2, 3e-2]},
    seeds=(0, 1, 2), ranks=(1, 2, 32), rank_pretrained=("adamw", "muon"),
    variant_optimizers=("muon", "adamw"), max_extensions=2, toy_seeds=0,
    budget="≤ 20 minutes on 2 CPU cores"))

_MINILM_FT = {"task": "rt-sentiment", "steps": 60, "batch_size": 32, "block_size": 64,
              "warmup": 6, "eval_every": 60, "eval_batches": 10}
# Centred on a 60-step probe (seed 0, val accuracy): AdamW full 3e-4 0.804; Muon full 3e-4
# 0.639 (still at the majority class), 1e-3 0.784; AdamW LoRA 3e-3 0.789; Muon LoRA 3e-3
# 0.765, 1e-2 0.778 (and at 90 steps AdamW full 1e-4 0.814, Muon full 1e-4 0.639).
_MINILM_LRS = {"adamw/full": [3e-5, 1e-4, 3e-4], "muon/full": [3e-4, 1e-3, 3e-3],
               "adamw/lora": [1e-3, 3e-3, 1e-2], "muon/lora": [3e-3, 1e-2, 3e-2]}
register_preset(Preset(
    name="minilm",
    description="all-MiniLM-L6-v2 (AdamW-pretrained by its authors) on Rotten Tomatoes "
                "sentiment: AdamW vs Muon × full vs LoRA r=8, whole val/held-out splits",
    family="hf", inits={"adamw": "minilm"}, finetune=_MINILM_FT, lrs=_MINILM_LRS,
    seeds=(0, 1, 2), ranks=(), variants=(), max_extensions=1, toy_seeds=0,
    budget="≤ 45 minutes on 2 CPU cores"), "minilm-rt")

# The minilm preset resolves ≈ ±4 accuracy points with 3 seeds (paired Muon − AdamW
# differences at 60 steps spread by ~1.6 points); a 1-point gap needs ~12 seeds.
register_preset(Preset(
    name="minilm-thorough",
    description="the minilm study sized to resolve a 1-point accuracy gap: 12 seeds, "
                "150-step runs (half an epoch)",
    family="hf", inits={"adamw": "minilm"}, lrs=_MINILM_LRS,
    finetune={**_MINILM_FT, "steps": 150, "warmup": 15, "eval_every": 150},
    seeds=tuple(range(12)), ranks=(), variants=(), max_extensions=1, toy_seeds=0,
    budget="about 4.5 hours on 2 CPU cores (from the minilm preset's per-run times); "
           "minutes on one GPU"))

_SMOLLM2_FT = {"task": "lm:rt", "steps": 40, "batch_size": 8, "block_size": 128, "warmup": 4,
               "eval_every": 40, "eval_batches": 8, "grad_clip": 1.0}
register_preset(Preset(
    name="smollm2",
    description="SmolLM2-135M-Instruct (AdamW-pretrained by its authors; dequantized Q4_1) "
                "fine-tuned with LoRA on Rotten Tomatoes text, forgetting on KJV",
    family="hf", inits={"adamw": "smollm2"}, finetune=_SMOLLM2_FT, methods=("lora",),
    lrs={"adamw/lora": [3e-4, 1e-3, 3e-3], "muon/lora": [3e-4, 1e-3, 3e-3]},
    seeds=(0, 1), ranks=(), variants=(), max_extensions=1, toy_seeds=0,
    budget="about 1.5 hours on 2 CPU cores (LoRA only; add full with methods=('full', "
           "'lora') on a GPU)"), "smollm2-lora")


register_preset(Preset(
    name="constrained-gpt",
    description="constrained-update Muon on the AdamW-pretrained tiny GPT: low-rank updates, "
                "drift budgets and joint LoRA-Muon against AdamW and plain Muon",
    pretrained=("adamw",), finetune=_CPU_FT,
    lrs={"adamw/full": [1e-3, 3e-3, 1e-2, 3e-2], "muon/full": [1e-3, 3e-3, 1e-2, 3e-2],
         "adamw/lora": [3e-3, 1e-2, 3e-2, 1e-1], "muon/lora": [3e-3, 1e-2, 3e-2, 1e-1]},
    seeds=(0, 1, 2), ranks=(1, 32), rank_pretrained=("adamw",), variants=(),
    # AdamW's full-FT drift ‖W−W₀‖/‖W₀‖ was 0.08 / 0.17 / 0.35 / 0.69 at lr 1e-3 … 3e-2
    update_ranks=(1, 4, 32), max_drifts=(0.25, 0.5), lora_joint=True,
    max_extensions=2, toy_seeds=0,
    budget="about 100 minutes on 2 CPU cores (204 runs with extensions, ≈ 60 s each per worker)"))
register_preset(Preset(
    name="constrained-minilm",
    description="constrained-update Muon on MiniLM (the minilm preset's runs plus low-rank, "
                "drift-budget and joint LoRA-Muon sweeps)",
    family="hf", inits={"adamw": "minilm"}, finetune=_MINILM_FT, lrs=_MINILM_LRS,
    # AdamW's full-FT drift at its best LR was 0.019, Muon's 0.044 (minilm preset)
    seeds=(0, 1, 2), ranks=(), variants=(), update_ranks=(8,), max_drifts=(0.01, 0.03),
    lora_joint=True, max_extensions=1, toy_seeds=0,
    budget="about 90 minutes on 2 CPU cores (38 of them the minilm preset's runs, reused "
           "with --out reproduce-minilm)"))
register_preset(Preset(
    name="constrained",
    description="constrained-update Muon for full fine-tuning (issue 10), on the tiny GPT and "
                "on MiniLM",
    parts=("constrained-gpt", "constrained-minilm"),
    budget="about 3 hours on 2 CPU cores (measured: 100 + 90 minutes)"))


def get_preset(name: str) -> Preset:
    """The registered preset ``name`` (ConfigError listing the known ones)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return PRESETS[name]


# ---------------------------------------------------------------------------------------------
# Sweep specs of a preset

def sweep_specs(preset: Preset) -> list[dict[str, Any]]:
    """The preset's sweeps as plain mappings (what ``muonft sweep`` reads from YAML)."""
    inits = preset.init_names()
    base = {"kind": preset.kind, **preset.finetune,
            "lora": {"rank": preset.lora_rank, "alpha": preset.lora_alpha}}
    adaptive = {"enabled": preset.max_extensions > 0,
                "max_extensions": preset.max_extensions}
    seeds = list(preset.seeds)
    methods = list(preset.methods)
    lrs = {k: v for k, v in preset.lrs.items() if k.partition("/")[2] in ("", *methods)}
    lora_lrs = {k: v for k, v in preset.lrs.items() if k.endswith("/lora")}
    adam_init = inits.get("adamw", next(iter(inits.values())))

    def sweep(suffix: str, grid: dict[str, Any], **base_kw: Any) -> dict[str, Any]:
        return {"name": f"{preset.name}-{suffix}", "base": {**base, **base_kw}, "seeds": seeds,
                "adaptive": adaptive, "grid": grid}

    out = [sweep("mismatch", {"init": list(inits.values()), "optimizer": ["adamw", "muon"],
                              "method": methods, "lr": lrs})]
    if preset.ranks and "lora" in methods:
        out.append(sweep("rank", {
            "init": [inits[p] for p in preset.rank_pretrained if p in inits],
            "optimizer": ["adamw", "muon"], "lora.rank": list(preset.ranks), "lr": lora_lrs},
            method="lora"))
    if preset.variants and "lora" in methods:
        out.append(sweep("variants", {
            "init": [adam_init], "optimizer": list(preset.variant_optimizers),
            "lora.variant": list(preset.variants), "lr": lora_lrs}, method="lora"))
    muon_full = {"muon": preset.lrs["muon/full"]} if "muon/full" in preset.lrs else {}
    if preset.update_ranks and muon_full:
        out.append(sweep("lowrank", {"init": [adam_init],
                                     "update_rank": list(preset.update_ranks),
                                     "lr": muon_full}, optimizer="muon", method="full"))
    if preset.max_drifts and muon_full:
        out.append(sweep("drift", {"init": [adam_init], "max_drift": list(preset.max_drifts),
                                   "lr": muon_full}, optimizer="muon", method="full"))
    if preset.lora_joint and "muon/lora" in preset.lrs:
        out.append(sweep("joint", {"init": [adam_init], "lr": {"muon": preset.lrs["muon/lora"]}},
                         optimizer="muon", method="lora", lora_muon="joint"))
    return out


# ---------------------------------------------------------------------------------------------
# The pipeline

def _pretrain_job(spec: dict[str, Any], out: str, threads: int, family: str = "gpt"
                  ) -> dict[str, Any]:
    if family == "vision":
        rec = vision.vision_pretrain(spec, Path(out), threads=threads, progress=False,
                              checkpoint_every=100)
        return {"status": rec["status"], "resumed": rec.get("resumed"),
                "val": ("val accuracy", rec["metrics"].get("val_accuracy"))}
    rec = pretrain.pretrain(spec, Path(out), threads=threads, progress=False, checkpoint_every=50)
    return {"status": rec["status"], "resumed": rec.get("resumed"),
            "val": ("val loss", rec["metrics"].get("val_loss"))}


def pretrain_stage(preset: Preset, *, workers: int, log: Callable[[str], None]
                   ) -> dict[str, Path]:
    """Pretrain (or reuse from the cache) the AdamW and Muon models of ``preset``, in parallel
    processes when ``workers`` > 1. Returns optimizer → checkpoint dir."""
    jobs = {opt: (preset.pretrain_spec(opt),
                  cache_dir() / "checkpoints" / preset.checkpoint_name(opt))
            for opt in preset.pretrained}
    cores = os.cpu_count() or 1
    n = max(1, min(workers, len(jobs)))
    threads = max(1, cores // n)
    t0 = time.perf_counter()
    log(f"pretraining {', '.join(jobs)} ({preset.model}, {preset.pretrain_steps} steps) in "
        f"{n} process(es) × {threads} thread(s); checkpoints in {cache_dir() / 'checkpoints'}")
    if n == 1:
        for opt, (spec, out) in jobs.items():
            res = _pretrain_job(spec, str(out), threads, preset.family)
            log(_pretrain_line(opt, res, t0))
    else:
        with ProcessPoolExecutor(n, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_pretrain_job, spec, str(out), threads, preset.family): opt
                    for opt, (spec, out) in jobs.items()}
            for f in as_completed(futs):
                log(_pretrain_line(futs[f], f.result(), t0))
    return {opt: out for opt, (_, out) in jobs.items()}


def _pretrain_line(opt: str, res: dict[str, Any], t0: float) -> str:
    how = "reused" if res.get("resumed") == "already finished" else res["status"]
    name, val = res["val"]
    val_s = f"{name} {val:.3f}" if isinstance(val, float) else f"no {name}"
    return f"  {opt}-pretrained: {how}, {val_s} ({time.perf_counter() - t0:.0f} s)"


def write_specs(preset: Preset, out: Path) -> list[Path]:
    """Write the preset's sweep specs as YAML under ``out/specs/`` (for ``muonft sweep``)."""
    paths = []
    for s in sweep_specs(preset):
        text = (f"# Written by `muonft reproduce --preset {preset.name}`; rerun or edit with\n"
                f"# `muonft sweep {out / 'specs' / (s['name'] + '.yaml')} --out {out}`.\n"
                + yaml.safe_dump(s, sort_keys=False))
        paths.append(atomic_write_text(out / "specs" / f"{s['name']}.yaml", text))
    return paths


def fetch_data(preset: Preset, log: Callable[[str], None]) -> dict[str, Path]:
    """Stage 1: fetch what ``preset`` reads into the cache (corpora, and the image sets, the
    tokenizer and token streams, or the third-party models of its family). Returns the
    third-party model name → its cache directory."""
    models: dict[str, Path] = {}
    for name in preset.corpora():
        if not corpus_path(name).exists():
            fetch(name, progress=lambda m: log(f"  {m}"))
    if preset.family == "vision":
        for name in preset.image_sets():
            if not image_path(name).exists():
                fetch_images(name, progress=lambda m: log(f"  {m}"))
    elif preset.family == "gpt":
        pspec = preset.pretrain_spec("adamw")
        tok = get_tokenizer(pspec["vocab_size"], corpus=pspec["tokenizer_corpus"])
        task = str(preset.finetune.get("task", "lm:rt"))
        for corpus in (pspec["corpus"], task.removeprefix("lm:")):
            load_lm_splits(corpus, tok)
    else:
        for init in preset.init_names().values():
            if init in MODEL_SOURCES:
                models[init] = fetch_model(init, progress=lambda m: log(f"  {m}"))
    return models
