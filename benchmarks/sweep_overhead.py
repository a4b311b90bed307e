"""Sweep overhead: time the executor on synthetic runs of a fixed length (no training).

overhead = (worker time per run outside the runner — claim, result write, pipe transfer — plus
the executor's store/aggregation time) ÷ (that plus the time inside runners). Start-up of the
worker processes and the tail with fewer runs than workers are reported apart (idle).

    python benchmarks/sweep_overhead.py [--run-s 1.0] [--runs 40] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile

from muonft.experiments.sweep import run_sweep
from muonft.experiments.sweep_spec import parse_sweep_spec


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run-s", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--adaptive", action="store_true")
    a = ap.parse_args()
    n_lr = max(1, a.runs // 4)
    spec = parse_sweep_spec({
        "name": "overhead", "base": {"kind": "synthetic", "task": f"synthetic:sleep={a.run_s}"},
        "grid": {"optimizer": ["adamw", "muon"], "lr": [10 ** (-4 + 0.25 * i)
                                                        for i in range(n_lr)]},
        "seeds": [0, 1], "adaptive": {"enabled": a.adaptive}})
    with tempfile.TemporaryDirectory() as d:
        s = run_sweep(spec, d, workers=a.workers, threads=1, progress=False, quiet=True)
    print(s.line())
    print(f"wall {s.wall_s:.2f}s  in runners {s.runner_s:.2f}s  worker busy {s.busy_s:.2f}s  "
          f"executor store/aggregate {s.main_store_s:.2f}s  idle (start-up, tail) "
          f"{s.idle_s:.2f}s  overhead {100 * s.overhead:.2f}%  "
          f"runner time / (workers × wall) {100 * s.runner_s / (s.workers * s.wall_s):.1f}%")


if __name__ == "__main__":
    main()
