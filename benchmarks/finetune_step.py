"""Fine-tuning step time on the tiny GPT: LoRA under Muon vs AdamW, and a diagnostics pass.

Loads a ``muonft pretrain`` checkpoint, attaches LoRA (r = 8, every attention and MLP linear)
and times whole training steps (forward, backward, clip, optimizer step) on the fine-tuning
corpus's batches, the finetune recipe's defaults (batch 16 × 128 tokens). The optimizers are
timed step by step in alternation (AdamW, Muon, Muon + exact_thin, in rotating order) so that
load changes on a shared CPU hit them alike; each round reports the median step of each, and
the ratio is taken per round.
Then times ``weight_diagnostics`` (weights and ΔW) and ``lora_diagnostics`` on the model.

    python benchmarks/finetune_step.py --init gpt-tiny-adamw-s0-250steps [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def _model(init: str, lora: bool):
    from muonft.adapters import LoRASpec, apply_lora
    from muonft.train.families.gpt import load_pretrained, resolve_init

    model, tok, _ = load_pretrained(resolve_init(init))
    if lora:
        torch.manual_seed(0)
        model = apply_lora(model, LoRASpec(rank=8, alpha=16.0))
    return model, tok


def make_step(init: str, optimizer: str, options: dict, batches):
    """A closure running one training step of a fresh LoRA model under ``optimizer``."""
    from muonft.train.loop import default_loss
    from muonft.train.pretrain import build_optimizer

    model, _ = _model(init, lora=True)
    opt = build_optimizer(model, optimizer, 1e-3, 0.0, **options)
    params = [p for p in model.parameters() if p.requires_grad]
    count = [0]

    def step() -> float:
        t0 = time.perf_counter()
        loss = default_loss(model, batches[count[0] % len(batches)])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        count[0] += 1
        return time.perf_counter() - t0

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", default="gpt-tiny-adamw-s0")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from muonft.data import LMBatcher, load_lm_splits

    _, tok = _model(a.init, lora=False)
    b = LMBatcher(load_lm_splits("rt", tok).train, 128, 16, seed=0)
    batches = [b.get(i) for i in range(4)]
    print(f"threads {a.threads}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '-')}, "
          f"load {os.getloadavg()[0]:.1f}")
    variants = {"adamw": ("adamw", {}), "muon": ("muon", {}),
                "muon_exact_thin": ("muon", {"orthogonalizer": "exact_thin"})}
    steps = {k: make_step(a.init, opt, kw, batches) for k, (opt, kw) in variants.items()}
    for f in steps.values():  # warm-up
        f(), f()
    # Steps of the three optimizers alternate (rotating order), so a load change on a shared
    # CPU hits them alike; per round the median step, and the ratio within each round.
    med: dict[str, list[float]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(a.rounds):
        ts: dict[str, list[float]] = {k: [] for k in variants}
        for i in range(a.steps):
            for k in names[i % 3:] + names[:i % 3]:
                ts[k].append(steps[k]())
        for k in variants:
            med[k].append(statistics.median(ts[k]))
        print(f"round {r}: " + "  ".join(f"{k} {1e3 * v[-1]:.1f} ms" for k, v in med.items()))
    for k in ("muon", "muon_exact_thin"):
        ratios = [m / w for m, w in zip(med[k], med["adamw"])]
        print(f"LoRA {k} / adamw step: median {statistics.median(ratios):.3f}x "
              f"(rounds {min(ratios):.3f}–{max(ratios):.3f})")

    from muonft.diagnostics import lora_diagnostics, weight_diagnostics

    model, _ = _model(a.init, lora=False)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    now = {n: p.detach() + 1e-3 * torch.randn_like(p) for n, p in init.items()}
    lora_model, _ = _model(a.init, lora=True)
    for name, fn in (("weight_diagnostics", lambda: weight_diagnostics(now, init)),
                     ("weight+update diagnostics", lambda: (
                         weight_diagnostics(now, init), weight_diagnostics(now, init,
                                                                           update=True))),
                     ("lora_diagnostics", lambda: lora_diagnostics(lora_model))):
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        print(f"{name}: median {statistics.median(ts):.3f} s (min {min(ts):.3f}, "
              f"max {max(ts):.3f})")
    print(f"({len(init)} tensors of the tiny GPT; LoRA r=8 on its 24 block linears)")


if __name__ == "__main__":
    main()
