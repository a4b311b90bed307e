"""Low-rank Muon step time (``update_rank=r``) against the plain Muon step, same matrices.

Two matrix sets: the tiny GPT's (d=128, 4 layers: q, k, v, o 128×128, MLP 512×128 and
128×512) and a d=512 set (``--layers`` layers of the same six matrices). Both optimizers use
the defaults (``polar_express``, bf16, ``match_adamw_rms``); plus ``max_drift`` on top of
plain Muon, for its cost. Prints median and best step times over interleaved rounds and their
ratios to plain Muon (issue 10's target: ≤ 1.2× for r ≤ 32).

    python benchmarks/lowrank_step.py              # tiny GPT and d=512 (2 layers)
    python benchmarks/lowrank_step.py --layers 8 --repeats 15 --threads 1

On a CPU shared with other jobs compare the best-of figures (bursts of load only ever add
time) and prefer ``--threads 1``: two-thread parallel regions stall whenever one thread is
descheduled, which hits the many small batched calls of the low-rank path hardest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from muonft.optim import Muon
from optimizer_step import layer_shapes, make_params

RANKS = (4, 8, 16, 32)


def time_interleaved(makers, shapes, warmup: int, repeats: int):
    """{name: (median s, best s, state bytes)}: every optimizer steps its own copy of the same
    parameters and gradients; the timed steps alternate between optimizers round by round."""
    init, grads = make_params(shapes)
    opts = {}
    for name, make in makers.items():
        ps = [p.clone().requires_grad_() for p in init]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        opts[name] = make(ps)
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
        state = sum(t.numel() * t.element_size() for st in opt.state.values()
                    for t in st.values() if torch.is_tensor(t))
        out[name] = (statistics.median(times[name]), min(times[name]), state)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=2, help="layers of the d=512 set")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--ranks", type=int, nargs="+", default=list(RANKS))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads "
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), median and best "
          f"of {args.repeats} interleaved steps after 3 warm-up; load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    def make(**kw):
        return lambda ps: Muon(ps, lr=0.02, **kw)

    for title, shapes in [("tiny GPT (d=128, 4 layers)", layer_shapes(128, 4)),
                          (f"d=512 ({args.layers} layers)", layer_shapes(512, args.layers))]:
        makers = {"plain Muon": make()}
        makers |= {f"update_rank={r}": make(update_rank=r) for r in args.ranks}
        makers["max_drift=0.1"] = make(max_drift=0.1)
        res = time_interleaved(makers, shapes, warmup=3, repeats=args.repeats)
        med0, best0, _ = res["plain Muon"]
        print(f"\n{title}: {len(shapes)} matrices")
        print(f"  {'optimizer':<18}{'median ms':>10}{'vs plain':>10}{'best ms':>9}"
              f"{'vs plain':>10}{'state MB':>10}")
        for name, (med, best, state) in res.items():
            print(f"  {name:<18}{med * 1e3:>10.2f}{med / med0:>9.2f}x{best * 1e3:>9.2f}"
                  f"{best / best0:>9.2f}x{state / 2**20:>10.2f}")


if __name__ == "__main__":
    main()
