"""Optimizer step time: muonft's Muon vs torch.optim.Muon vs torch.optim.AdamW, side by side.

Same parameters, same gradients, one process. Prints median step times (after warm-up), ratios
against torch.optim.Muon, the orthogonalization's achieved GFLOP/s next to a plain bf16 GEMM
measured in the same run, and optimizer-state bytes.

    python benchmarks/optimizer_step.py            # 8-layer d=512 matrix set, LoRA r=8 factors
    python benchmarks/optimizer_step.py --quick    # 2 layers, fewer repeats (under a minute)
    python benchmarks/optimizer_step.py --spectrum powerlaw   # heavy-tailed gradient spectra

On a CPU shared with other jobs, run it with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that
spin at a barrier while a sibling is descheduled made 2-thread NS5 ~3x slower than 1 thread
(measured). Passive waiting costs small, overhead-bound steps (LoRA factors, torch's per-matrix
loop) a wake-up per parallel region, so quote (b) from a run with the default policy.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
from collections.abc import Callable

import torch

from muonft.optim import Muon
from muonft.optim.muon import orthogonalize_batched


def layer_shapes(d: int, layers: int) -> list[tuple[int, int]]:
    """(out, in) of every matrix: q, k, v, o (d×d), MLP in (4d×d) and out (d×4d) per layer."""
    return [(d, d)] * 4 * layers + [(4 * d, d), (d, 4 * d)] * layers


def lora_shapes(d: int, layers: int, r: int) -> list[tuple[int, int]]:
    """LoRA factors A (r×in) and B (out×r) for every matrix of :func:`layer_shapes`."""
    out = []
    for m, n in layer_shapes(d, layers):
        out += [(r, n), (m, r)]
    return out


def _powerlaw(m: int, n: int, g: torch.Generator) -> torch.Tensor:
    """A matrix with random singular vectors and σ_k ∝ 1/k (heavy-tailed, like real
    gradients), scaled to a Gaussian matrix's Frobenius norm √(mn)."""
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(m, k, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, k, generator=g))
    s = 1.0 / torch.arange(1, k + 1, dtype=torch.float32)
    s *= math.sqrt(m * n) / s.norm()
    return (U * s) @ V.T


def make_params(shapes: list[tuple[int, int]], spectrum: str = "gaussian",
                seed: int = 0) -> tuple[list, list]:
    """Parameters (0.02·N(0,1)) and gradients: Gaussian, or power-law spectra."""
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=g) * 0.02 for s in shapes]
    if spectrum == "powerlaw":
        grads = [_powerlaw(*s, g) for s in shapes]
    else:
        grads = [torch.randn(*s, generator=g) for s in shapes]
    return params, grads


def time_steps(makers: dict[str, Callable[[list], torch.optim.Optimizer]], shapes,
               warmup: int, repeats: int, spectrum: str = "gaussian"
               ) -> tuple[dict[str, tuple[float, int]], dict[str, torch.optim.Optimizer]]:
    """Median seconds per step and state bytes of each optimizer, and the optimizers.

    Every optimizer gets its own copy of the same parameters and gradients; the timed steps
    alternate between optimizers round by round, so drift of the machine's speed hits all alike.
    """
    init, grads = make_params(shapes, spectrum)
    opts, params = {}, {}
    for name, make in makers.items():
        ps = [p.clone().requires_grad_() for p in init]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opts[name], params[name] = make(ps), ps
        for _ in range(warmup):
            opts[name].step()
    times: dict[str, list[float]] = {name: [] for name in makers}
    for _ in range(repeats):
        for name, opt in opts.items():
            t0 = time.perf_counter()
            opt.step()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, opt in opts.items():
        state_bytes = sum(t.numel() * t.element_size() for st in opt.state.values()
                          for t in st.values() if torch.is_tensor(t))
        out[name] = (statistics.median(times[name]), state_bytes)
    return out, opts


def ns_flops(shapes, steps: int = 5) -> float:
    """FLOPs of a quintic Newton–Schulz run: per step 4m²n + 2m³ on the wide (m ≤ n) side."""
    total = 0.0
    for a, b in shapes:
        m, n = min(a, b), max(a, b)
        total += steps * (4 * m * m * n + 2 * m**3)
    return total


def gemm_gflops(d: int, repeats: int) -> float:
    """Best throughput of plain bf16 batched GEMMs shaped like NS5's work (d×d·d×d, d×d·d×4d)."""
    best = 0.0
    for n in (d, 4 * d):
        a = torch.randn(16, d, d, dtype=torch.bfloat16)
        b = torch.randn(16, d, n, dtype=torch.bfloat16)
        torch.bmm(a, b)
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.bmm(a, b)
            ts.append(time.perf_counter() - t0)
        best = max(best, 2 * 16 * d * d * n / statistics.median(ts) / 1e9)
    return best


def ortho_gflops(shapes, repeats: int, spectrum: str = "gaussian") -> float:
    _, grads = make_params(shapes, spectrum)
    orthogonalize_batched(grads, "ns5", 5, torch.bfloat16)
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        orthogonalize_batched(grads, "ns5", 5, torch.bfloat16)
        ts.append(time.perf_counter() - t0)
    return ns_flops(shapes) / statistics.median(ts) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 layers, fewer repeats")
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--spectrum", choices=("gaussian", "powerlaw"), default="gaussian",
                    help="gradients: i.i.d. Gaussian, or σ_k ∝ 1/k (heavy-tailed, like real ones)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers or (2 if args.quick else 8)
    repeats = args.repeats or (5 if args.quick else 7)
    warmup = 2

    def ours(orth: str) -> Callable:
        return lambda ps: Muon(ps, lr=0.02, orthogonalizer=orth, scale="match_adamw_rms")

    def torch_muon(ps):
        return torch.optim.Muon(ps, lr=0.02, weight_decay=0.0, adjust_lr_fn="match_rms_adamw")

    def adamw(ps):
        return torch.optim.AdamW(ps, lr=1e-3, foreach=True)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), d={args.d}, "
          f"{layers} layers, {args.spectrum} gradients, median of {repeats} steps after {warmup} "
          f"warm-up; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    for title, shapes, candidates in [
        (f"(a) full matrices ({len(layer_shapes(args.d, layers))} matrices)",
         layer_shapes(args.d, layers),
         [("muonft ns5", ours("ns5")), ("muonft polar_express", ours("polar_express")),
          ("muonft auto", ours("auto"))]),
        (f"(b) LoRA r={args.rank} factors ({len(lora_shapes(args.d, layers, args.rank))} "
         f"matrices)", lora_shapes(args.d, layers, args.rank),
         [("muonft exact_thin", ours("exact_thin")), ("muonft ns5", ours("ns5")),
          ("muonft auto", ours("auto"))]),
    ]:
        print(f"\n{title}")
        makers = dict(candidates) | {"torch.optim.Muon": torch_muon, "torch.optim.AdamW": adamw}
        res, opts = time_steps(makers, shapes, warmup, repeats, args.spectrum)
        t_ref, t_adam = res["torch.optim.Muon"][0], res["torch.optim.AdamW"][0]
        s_adam = res["torch.optim.AdamW"][1]
        print(f"  {'optimizer':<24}{'step ms':>10}{'vs torch Muon':>15}{'vs AdamW':>10}"
              f"{'state MB':>10}")
        rows = [(name, t, s) for name, (t, s) in res.items()]
        for name, t, s in rows:
            print(f"  {name:<24}{t * 1e3:>10.1f}{t_ref / t:>14.2f}x{t / t_adam:>9.2f}x"
                  f"{s / 2**20:>10.2f}")
        print(f"  Muon-group state / AdamW state: {rows[0][2] / s_adam:.2f}")
        for key, c in opts["muonft auto"].auto_choices.items():
            print(f"  auto {key}: {c['method']} ({c['steps']} steps), mean |σ-1| over the real "
                  f"input and decaying-spectrum probes {c['error']:.3f} vs NS5 "
                  f"{c['ns5_error']:.3f}")
        if shapes and min(shapes[0]) > 64:
            o, p = ortho_gflops(shapes, repeats, args.spectrum), gemm_gflops(args.d, repeats)
            print(f"  NS5 orthogonalization: {o:.0f} GFLOP/s; plain bf16 GEMM: {p:.0f} GFLOP/s "
                  f"({o / p:.0%} of GEMM)")


if __name__ == "__main__":
    main()
