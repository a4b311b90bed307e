"""The fine-tuning recipe: a pretrained GPT, full or LoRA, AdamW or Muon, then measured.

``finetune(spec, out)`` loads a ``muonft pretrain`` output (a directory, or a checkpoint name in
the cache such as ``gpt-tiny-adamw-s0``), optionally injects LoRA adapters, trains on the target
task with the shared loop (checkpoints in ``out/ckpt``, resume on rerun) and writes
``out/result.json`` atomically with the record of ``docs/CONTRACTS.md``:

- ``metrics``: ``target`` (validation loss on the target corpus), ``zero_shot`` (the same before
  fine-tuning), ``relative_ppl`` = exp(target − zero_shot), ``test`` (held-out loss on the
  target corpus), ``forgetting`` = held-out loss on the *pretraining* corpus after − before,
  ``update_rms`` (mean RMS of the per-step weight change of trainable matrices);
- ``diagnostics`` / ``diagnostics_update``: per layer group, of the (merged) weights and of
  ΔW = W − W₀ (stable rank, spectral entropy, σ₁, max-norm; drift and cosine to W₀).

Only LM tasks (``lm:<corpus>``) on in-house GPT checkpoints are supported so far; HF models and
classification tasks are added by the real-model work.
"""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

import torch

from muonft.atomic import atomic_write_json
from muonft.errors import CheckpointError, ConfigError, DataMissingError
from muonft.train.loop import TrainConfig, train
from muonft.train.pretrain import build_optimizer, lm_eval_fn

METHODS = ("full", "lora")
DEFAULT_LR = {("adamw", "full"): 3e-3, ("muon", "full"): 3e-3,
              ("adamw", "lora"): 1e-2, ("muon", "lora"): 1e-2}


def default_spec(**overrides: Any) -> dict[str, Any]:
    """A complete fine-tuning spec with defaults filled in (validated)."""
    from muonft.train import finetune_hf  # HF inits and classification tasks: their own recipe

    if finetune_hf.is_hf_spec(overrides):
        return finetune_hf.default_spec(**overrides)
    spec: dict[str, Any] = {
        "init": "gpt-tiny-adamw-s0", "task": "lm:rt", "optimizer": "muon", "method": "full",
        "lr": None, "steps": 200, "batch_size": 16, "block_size": 128, "seed": 0,
        "weight_decay": 0.0, "warmup": 10, "schedule": "cosine", "grad_clip": 1.0,
        "eval_every": 50, "eval_batches": 10, "lora_rank": 8, "lora_alpha": 16.0,
        "lora_variant": "lora", "scale": "match_adamw_rms",
    }
    unknown = set(overrides) - set(spec)
    if unknown:
        raise ConfigError(f"unknown finetune option(s) {sorted(unknown)}; valid: {sorted(spec)}")
    spec.update({k: v for k, v in overrides.items() if v is not None})
    if spec["optimizer"] not in ("adamw", "muon"):
        raise ConfigError(f"optimizer must be one of ('adamw', 'muon'), got {spec['optimizer']!r}")
    if spec["method"] not in METHODS:
        raise ConfigError(f"method must be one of {METHODS}, got {spec['method']!r}")
    if spec["lr"] is None:
        spec["lr"] = DEFAULT_LR[(spec["optimizer"], spec["method"])]
    if not spec["lr"] > 0:
        raise ConfigError(f"lr must be > 0, got {spec['lr']}")
    if not isinstance(spec["steps"], int) or spec["steps"] < 0:
        raise ConfigError(f"steps must be an integer >= 0, got {spec['steps']}")
    if not str(spec["task"]).startswith("lm:"):
        raise ConfigError(f"task {spec['task']!r} is not supported yet; use lm:<corpus> "
                          f"(e.g. lm:rt)")
    if spec["method"] == "full":  # LoRA settings do not change a full fine-tune
        for k in ("lora_rank", "lora_alpha", "lora_variant"):
            spec[k] = None
    return spec


def resolve_init(init: str) -> Path:
    """A pretrain output directory from a path or a checkpoint name in the cache."""
    from muonft.data import cache_dir

    if init.startswith("hf:"):
        raise ConfigError("hf: models are not supported by finetune yet; use a muonft pretrain "
                          "checkpoint")
    p = Path(init).expanduser()
    if not p.exists():
        p = cache_dir() / "checkpoints" / init
    if not (p / "config.json").exists() or not (p / "model.safetensors").exists():
        raise DataMissingError(f"no pretrained checkpoint at {init!r} (looked for config.json "
                               f"and model.safetensors); run `muonft pretrain` first")
    return p


def load_pretrained(path: Path):
    """(model, tokenizer, config dict) of a ``muonft pretrain`` output directory."""
    from muonft.data import get_tokenizer
    from muonft.models import build_gpt
    from muonft.train.checkpoint import load_weights

    try:
        cfg = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{path / 'config.json'} is corrupt") from None
    model = build_gpt(cfg["config"])
    model.load_state_dict(load_weights(path / "model.safetensors"), strict=True)
    tok = get_tokenizer(cfg["tokenizer"]["vocab_size"], corpus=cfg["tokenizer"]["corpus"])
    return model, tok, cfg


def _eval_loss(model, tokens, spec) -> float:
    model.eval()
    with torch.no_grad():
        v = lm_eval_fn(tokens, spec["block_size"], 32, spec["eval_batches"])(model)["val_loss"]
    model.train()
    return v


def finetune(spec: dict[str, Any], out: Path, *, threads: int | None = None,
             progress: bool = True, checkpoint_every: int = 50) -> dict[str, Any]:
    """Run (or resume, or return the finished) fine-tuning described by ``spec``."""
    from muonft.train.finetune_hf import finetune_hf, is_hf_spec

    if is_hf_spec(spec):
        return finetune_hf(spec, out, threads=threads, progress=progress,
                           checkpoint_every=checkpoint_every)
    from muonft.adapters import LoRASpec, apply_lora, merged_state_dict
    from muonft.data import LMBatcher, load_lm_splits
    from muonft.diagnostics import weight_diagnostics

    spec = default_spec(**spec)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create output directory {out}: {e.strerror}") from None
    res_path = out / "result.json"
    if res_path.exists():
        prev = json.loads(res_path.read_text())
        if prev.get("spec") != spec:
            diff = sorted(k for k in spec if prev.get("spec", {}).get(k) != spec[k])
            raise ConfigError(f"{out} holds a run with a different spec (differs in {diff}); "
                              f"use another --out or delete it")
        if prev.get("status") in ("done", "diverged"):
            prev["resumed"] = "already finished"
            return prev
    if threads:
        torch.set_num_threads(threads)
    init_dir = resolve_init(spec["init"])
    model, tok, cfg = load_pretrained(init_dir)
    target = load_lm_splits(spec["task"][3:], tok)
    pre = load_lm_splits(cfg.get("pretrain_corpus", "kjv"), tok)
    init_state = {n: p.detach().clone() for n, p in model.named_parameters()}
    zero_shot = _eval_loss(model, target.val, spec)
    pre_before = _eval_loss(model, pre.heldout, spec)

    torch.manual_seed(spec["seed"])
    if spec["method"] == "lora":
        model = apply_lora(model, LoRASpec(rank=spec["lora_rank"], alpha=spec["lora_alpha"],
                                           variant=spec["lora_variant"]))
    muon_opts = {"scale": spec["scale"]} if spec["optimizer"] == "muon" else {}
    opt = build_optimizer(model, spec["optimizer"], spec["lr"], spec["weight_decay"],
                          **muon_opts)
    watched = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rms_sum = {"sum": 0.0, "n": 0}
    prev_w = [p.detach().clone() for p in watched]

    def on_step(step: int, loss: float) -> None:
        sq = sum(float((p.detach() - q).square().sum()) for p, q in zip(watched, prev_w))
        rms_sum["sum"] += math.sqrt(sq / max(1, sum(p.numel() for p in watched)))
        rms_sum["n"] += 1
        for p, q in zip(watched, prev_w):
            q.copy_(p.detach())

    batcher = LMBatcher(target.train, spec["block_size"], spec["batch_size"], seed=spec["seed"])
    tcfg = TrainConfig(steps=spec["steps"], schedule=spec["schedule"], warmup=spec["warmup"],
                       grad_clip=spec["grad_clip"], eval_every=spec["eval_every"],
                       checkpoint_every=checkpoint_every, progress=progress,
                       description=f"finetune {spec['method']} {spec['optimizer']}")
    atomic_write_json(res_path, {"spec": spec, "status": "running"})
    result = train(model, opt, batcher.get, tcfg, ckpt_dir=out / "ckpt", on_step=on_step,
                   eval_fn=lm_eval_fn(target.val, spec["block_size"], 32, spec["eval_batches"]))
    final = merged_state_dict(model) if spec["method"] == "lora" else {
        n: p.detach() for n, p in model.named_parameters()}
    if spec["method"] == "lora":
        from muonft.adapters import merge_lora, unmerge_lora

        merge_lora(model)
    try:
        target_loss = _eval_loss(model, target.val, spec)
        test_loss = _eval_loss(model, target.heldout, spec)
        pre_after = _eval_loss(model, pre.heldout, spec)
    finally:
        if spec["method"] == "lora":
            unmerge_lora(model)
    now = {n: final[n] for n in init_state}
    metrics = {
        "target": target_loss, "target_name": "val_loss", "higher_is_better": False,
        "zero_shot": zero_shot, "relative_ppl": math.exp(target_loss - zero_shot),
        "test": test_loss, "forgetting": pre_after - pre_before,
        "pretrain_loss_before": pre_before, "pretrain_loss_after": pre_after,
        "update_rms": rms_sum["sum"] / max(1, rms_sum["n"]),
    }
    record = {
        "status": result["status"], "spec": spec, "metrics": metrics,
        "diagnostics": weight_diagnostics(now, init_state),
        "diagnostics_update": weight_diagnostics(now, init_state, update=True),
        "curves": result["curves"], "timings": result["timings"],
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
        "error": None,
    }
    atomic_write_json(res_path, record)
    return record
