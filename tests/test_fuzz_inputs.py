"""Hostile input fuzzing of the validation front door (issue 19): random and hostile values for
every `muonft finetune` option and for sweep YAML files. Every case must end with exit 2, one
line on stderr, no traceback, and nothing written. A bounded number of examples runs in the
suite; MUONFT_FUZZ_EXAMPLES (e.g. 500, with -m slow) runs more."""

from __future__ import annotations

import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from muonft.cli import main

EXAMPLES = int(os.environ.get("MUONFT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

HOSTILE_NUMBERS = st.sampled_from(["nan", "inf", "-inf", "1e308", "-1", "0", "-0.0", "1e-320",
                                   "99999999999999999999999", "3.5", "0x10", "", " ", "1_000"])
HOSTILE_TEXT = st.sampled_from(["", " ", "../../etc", "hf:", "lm:", "glue:", "a" * 300, "\x00",
                                "$(touch /tmp/pwned)", "é", "lm:file:/nonexistent", "{}", "-1"])
INT_OPTIONS = ("--steps", "--seed", "--rank", "--diag-every", "--block-size", "--batch-size",
               "--eval-batches", "--update-rank", "--checkpoint-every", "--threads",
               "--keep-checkpoints")
FLOAT_OPTIONS = ("--lr", "--alpha", "--dropout", "--weight-decay", "--max-drift", "--epochs")
TEXT_OPTIONS = ("--task", "--optimizer", "--method", "--variant", "--orthogonalizer",
                "--scale", "--lora-muon")


def _value(draw, option: str) -> str:
    if option in TEXT_OPTIONS:
        return draw(st.one_of(HOSTILE_TEXT, st.text(min_size=0, max_size=12)))
    if option in INT_OPTIONS:
        return draw(st.one_of(HOSTILE_NUMBERS, st.integers(-10**30, 10**30).map(str)))
    return draw(st.one_of(HOSTILE_NUMBERS, st.floats(allow_nan=True).map(repr)))


@st.composite
def finetune_args(draw) -> list[str]:
    options = draw(st.lists(st.sampled_from(INT_OPTIONS + FLOAT_OPTIONS + TEXT_OPTIONS),
                            min_size=1, max_size=4, unique=True))
    args = []
    for o in options:
        args += [o, _value(draw, o)]
    return args


def _one_line_exit_2(code, capsys) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@FUZZ
@given(args=finetune_args())
def test_hostile_finetune_options(args, tmp_path_factory, capsys):
    """The init does not exist, so no case may train: each is refused (bad value first, else
    the unknown init) with one line and exit 2, and --out is never created."""
    root = tmp_path_factory.mktemp("fz")
    out = root / "out"
    code = main(["finetune", "--init", str(root / "no-such-ckpt"), "--quiet",
                 "--out", str(out), *args])
    _one_line_exit_2(code, capsys)
    assert not out.exists()


def _sweep_doc(draw) -> dict:
    base = draw(st.dictionaries(
        st.sampled_from(["kind", "task", "lr", "steps", "seed", "init", "lora", "muon",
                         "batch_size", "nope", "grad_clip", "weight_decay"]),
        st.one_of(st.booleans(), st.integers(-5, 10**25), st.floats(allow_nan=True),
                  st.text(max_size=6), st.none(), st.just({"rank": -1}),
                  st.just({"scale": "huge"})), max_size=5))
    grid = draw(st.sampled_from([{}, {"lr": []}, {"seed": [1]}, {"nope.x": [1]},
                                 {"lr": {"sgd": [0.1]}}, {"lr": [0.1] * 5, "steps": list(range(
                                     1, 500)), "lora.rank": list(range(1, 500))}]))
    return {"name": draw(st.sampled_from(["s", "", "../x", "ok.name"])),
            "base": {"kind": "synthetic", "task": "synthetic", **base},
            "grid": grid, "seeds": draw(st.sampled_from([[0], [], [0, 0], [-1], [True]]))}


@st.composite
def bad_sweeps(draw) -> str:
    doc = _sweep_doc(draw)
    mangle = draw(st.sampled_from(["none", "tag", "list", "binary"]))
    text = yaml.safe_dump(doc)
    if mangle == "tag":
        return "!!python/object/apply:os.system ['touch /tmp/pwned']\n" + text
    if mangle == "list":
        return "- 1\n- 2\n"
    if mangle == "binary":
        return "\x80\x81 not utf-8"
    return text


def _is_valid(text: str) -> bool:
    from muonft.errors import MuonftError
    from muonft.experiments.sweep_spec import parse_sweep_spec

    try:
        parse_sweep_spec(yaml.safe_load(text))
        return True
    except (MuonftError, yaml.YAMLError, ValueError, TypeError):
        return False


@FUZZ
@given(text=bad_sweeps())
def test_hostile_sweep_specs(text, tmp_path_factory, capsys):
    root = tmp_path_factory.mktemp("fzs")
    path = root / "sweep.yaml"
    path.write_bytes(text.encode("utf-8", "surrogateescape") if text.isascii() or
                     "\x80" not in text else text.encode("latin-1"))
    if "\x80" not in text and _is_valid(text):
        return  # hypothesis drew a valid sweep: not this test's subject
    out = root / "project"
    code = main(["sweep", str(path), "--out", str(out), "--workers", "0", "--quiet"])
    _one_line_exit_2(code, capsys)
    assert not out.exists()
    assert not os.path.exists("/tmp/pwned")


@pytest.mark.slow
def test_fuzz_budget_of_the_nightly_run():
    """The slow run is the same tests with MUONFT_FUZZ_EXAMPLES=500 (the issue's target);
    this marker documents the command."""
    assert EXAMPLES >= 1


@pytest.fixture(scope="module")
def tiny_gpt(tmp_path_factory):
    import numpy as np

    from ft_data import pretrain_tiny_gpt, write_lm_corpora

    root = tmp_path_factory.mktemp("fz_gpt")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MUONFT_CACHE", str(root / "cache"))
        pre, task = write_lm_corpora(root, np.random.default_rng(0))
        yield pretrain_tiny_gpt(root, pre, steps=2, eval_batches=1), task


@settings(max_examples=max(10, EXAMPLES // 2), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(args=finetune_args())
def test_hostile_options_on_a_real_checkpoint(args, tiny_gpt, tmp_path_factory, capsys,
                                              monkeypatch):
    """With a real checkpoint a case either runs (exit 0, a finished result.json) or is
    refused (exit 2, one line, nothing written): never a traceback, never a half-made dir."""
    import json

    ckpt, task = tiny_gpt
    monkeypatch.setenv("MUONFT_CACHE", str(ckpt.parent / "cache"))
    args = [a for i, a in enumerate(args) if not (args[i - 1] if i else "").startswith(
        ("--steps", "--epochs"))]
    args = [a for a in args if a not in ("--steps", "--epochs")]
    if "--task" not in args:
        args += ["--task", task]
    out = tmp_path_factory.mktemp("fzr") / "out"
    code = main(["finetune", "--init", str(ckpt), "--steps", "1", "--block-size", "16",
                 "--batch-size", "2", "--eval-batches", "1", "--quiet", "--out", str(out),
                 *args])
    if code == 0:
        assert json.loads((out / "result.json").read_text())["status"] in ("done", "diverged")
        capsys.readouterr()
    else:
        _one_line_exit_2(code, capsys)
        assert not out.exists()
