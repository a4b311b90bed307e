"""Low-rank Muon step time (``update_rank=r``) against the plain Muon step, same matrices.

Two matrix sets: the tiny GPT's (d=128, 4 layers: q, k, v, o 128×128, MLP 512×128 and
128×512) and a d=512 set (``--layers`` layers of the same six matrices). Both optimizers use
the defaults (``polar_express``, bf16, ``match_adamw_rms``); plus ``max_drift`` on top of
plain Muon, for its cost. Prints median step times and the ratio to plain Muon (issue 10's
target: ≤ 1.2× for r ≤ 32).

    python benchmarks/lowrank_step.py              # tiny GPT and d=512 (2 layers)
    python benchmarks/lowrank_step.py --layers 8 --repeats 15
"""

from __future__ import annotations

import argparse
import os

import torch

from muonft.optim import Muon
from optimizer_step import layer_shapes, time_steps

RANKS = (4, 8, 16, 32)


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
          f"(OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'default')}), median of "
          f"{args.repeats} steps after 3 warm-up; load average {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} CPUs")

    def make(**kw):
        return lambda ps: Muon(ps, lr=0.02, **kw)

    for title, shapes in [("tiny GPT (d=128, 4 layers)", layer_shapes(128, 4)),
                          (f"d=512 ({args.layers} layers)", layer_shapes(512, args.layers))]:
        makers = {"plain Muon": make()}
        makers |= {f"update_rank={r}": make(update_rank=r) for r in args.ranks}
        makers["max_drift=0.1"] = make(max_drift=0.1)
        res, _ = time_steps(makers, shapes, warmup=3, repeats=args.repeats)
        base = res["plain Muon"][0]
        print(f"\n{title}: {len(shapes)} matrices")
        print(f"  {'optimizer':<18}{'step ms':>9}{'vs plain':>10}{'state MB':>10}")
        for name, (t, state) in res.items():
            print(f"  {name:<18}{t * 1e3:>9.2f}{t / base:>9.2f}x{state / 2**20:>10.2f}")


if __name__ == "__main__":
    main()
