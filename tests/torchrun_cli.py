"""Run the ``muonft`` CLI in a fresh process, or under ``torchrun`` on N CPU ranks (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], nproc: int, env: dict[str, str],
            timeout: int = 240) -> subprocess.CompletedProcess:
    """``python -m muonft ARGS`` (``nproc`` 1) or the same under ``torch.distributed.run``
    with ``nproc`` processes; ``env`` is added to this process's environment with one OpenMP
    thread per process. Asserts a zero exit code (showing the end of stderr otherwise)."""
    run_env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    if nproc == 1:
        cmd = [sys.executable, "-m", "muonft", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-port", str(free_port()), "-m", "muonft", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=run_env)
    assert r.returncode == 0, r.stderr[-3000:]
    return r
