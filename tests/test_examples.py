"""The examples/ scripts run as users run them (tiny random BERT, offline) and train: the
loss falls. Each is a subprocess, so the scripts' own imports and argument parsing count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_tiny import save_tiny_bert

EXAMPLES = Path(__file__).parents[1] / "examples"


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("ex") / "bert")


@pytest.mark.parametrize(("script", "args"), [
    ("trainer_peft_lora.py", ["--steps", "40", "--lr", "0.1", "--adamw-lr", "0.1"]),
    ("trainer_full.py", ["--steps", "30", "--lr", "0.02", "--adamw-lr", "0.02"]),
    ("accelerate_loop.py", ["--steps", "30", "--lr", "0.02", "--adamw-lr", "0.02"]),
])
def test_example_trains(bert, tmp_path, script, args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, str(EXAMPLES / script), "--model", str(bert), *args],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["last_loss"] < 0.5 * result["first_loss"], result
