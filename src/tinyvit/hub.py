"""Weights by name: fetched from the Hugging Face Hub (or a URL), verified, cached.

Hub sources go through ``huggingface_hub.hf_hub_download``: its cache, ``HF_HOME``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and progress bar. URL sources (mmpretrain's ``.pth``) are
downloaded once, verified, converted to safetensors and kept under ``$HF_HOME/tinyvit``.

Verification: a file is hashed (SHA-256, in chunks) before it is first used and compared with the
manifest's pinned value, or — for an unpinned Hub file — with the Hub's LFS ETag, which is the
content's SHA-256. A mismatching file is deleted from the cache and never loaded. A small record
of each verified file (size, mtime) spares re-hashing it on every load.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path

from tinyvit.errors import WeightsError
from tinyvit.manifest import ModelEntry, WeightSource
from tinyvit.weights import sha256_file

__all__ = ["cache_dir", "fetch", "fetch_hf_hub", "verify"]

_SHA256 = re.compile(r"[0-9a-f]{64}")
URL_TIMEOUT = 60.0  # seconds without data before a URL download is abandoned


def cache_dir() -> Path:
    """tinyvit's own cache: converted URL downloads and verification records."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "tinyvit"


def offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


# ---------------------------------------------------------------------------------------------
# Verification


def _record_path(path: Path) -> Path:
    return cache_dir() / "verified" / (re.sub(r"[^A-Za-z0-9._-]", "_", str(path.resolve())) + ".json")


def verify(path: Path, expected: str, what: str, *, remove: list[Path]) -> None:
    """Check ``path``'s SHA-256 against ``expected``; on mismatch delete ``remove`` and raise."""
    real = path.resolve()
    stat = real.stat()
    stamp = {"sha256": expected, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    record = _record_path(path)
    try:
        if json.loads(record.read_text()) == stamp:
            return
    except (OSError, ValueError):
        pass  # no record yet (or an unreadable one): hash the file
    actual = sha256_file(real)
    if actual != expected:
        for p in remove:
            p.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        raise WeightsError(
            f"{what}: SHA-256 mismatch (expected {expected}, got {actual}); the file was removed from the "
            "cache and not loaded — load again to download it afresh"
        )
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(record, json.dumps(stamp).encode())
    except OSError as e:  # a read-only cache: the file is fine, it will just be hashed again next time
        warnings.warn(f"tinyvit: cannot record the verification of {path} ({e})", stacklevel=2)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------------------------
# Hub


def _hub_error(e: Exception, what: str) -> WeightsError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, LocalEntryNotFoundError) or offline():
        hint = "offline (HF_HUB_OFFLINE is set)" if offline() else "the Hub could not be reached"
        return WeightsError(
            f"{what}: {hint} and the file is not in the cache. Run `tinyvit download` for it while online, "
            "or convert a local copy with `tinyvit convert` and load that file's path"
        )
    if isinstance(e, RepositoryNotFoundError):
        return WeightsError(f"{what}: repository not found on the Hub (or it is private)")
    if isinstance(e, RevisionNotFoundError):
        return WeightsError(f"{what}: revision not found on the Hub")
    if isinstance(e, EntryNotFoundError):
        return WeightsError(f"{what}: file not found in the repository")
    return WeightsError(f"{what}: download failed ({type(e).__name__}: {e})")


def fetch_hf_hub(repo_id: str, filename: str, *, revision: str | None = None, sha256: str | None = None) -> Path:
    """A verified local copy of a Hub file (downloaded once, then read from the cache)."""
    from huggingface_hub import hf_hub_download

    what = f"hf://{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, library_name="tinyvit"))
    except Exception as e:  # huggingface_hub and its HTTP client raise many types; all become one clear error
        raise _hub_error(e, what) from e
    blob = path.resolve()
    # Unpinned: the Hub's ETag for an LFS file, which names the cached blob, is its SHA-256.
    expected = sha256 or (blob.name if _SHA256.fullmatch(blob.name) else None)
    if expected is not None:
        verify(path, expected, what, remove=[blob, path])
    return path


# ---------------------------------------------------------------------------------------------
# URL


def _download(url: str, folder: Path, what: str) -> tuple[Path, str]:
    """Download into a new file of this process's own in ``folder``; returns it and its SHA-256.
    On failure nothing is left behind."""
    from tqdm.auto import tqdm

    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(urllib.parse.urlparse(url).path).suffix  # the converter reads the file by its kind
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".download-", suffix=suffix)
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "tinyvit"})
        with os.fdopen(fd, "wb") as f, urllib.request.urlopen(request, timeout=URL_TIMEOUT) as r:
            total = int(r.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1], leave=False) as bar:
                while chunk := r.read(1 << 20):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
            if total is not None and f.tell() != total:
                raise WeightsError(f"{what}: connection closed after {f.tell()} of {total} bytes")
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, (urllib.error.URLError, OSError, ValueError)) and not isinstance(e, WeightsError):
            raise WeightsError(f"{what}: download failed ({e})") from e
        raise
    return Path(tmp), digest.hexdigest()


def converted_path(entry: ModelEntry, source: WeightSource, key: str | None = None) -> Path:
    """Where the converted copy of a source lives; ``key`` (its SHA-256 or known prefix) names it."""
    key = key or source.sha256 or source.sha256_prefix or re.sub(r"[^A-Za-z0-9._-]", "_", str(source.url))
    return cache_dir() / "converted" / entry.name / f"{source.tag}-{key}.safetensors"


def fetch_url(entry: ModelEntry, source: WeightSource) -> Path:
    """Download, verify and convert a URL source once; later calls read the converted file."""
    from tinyvit.conversion import convert

    what = f"{entry.name}:{source.tag} ({source.url})"
    dst = converted_path(entry, source)
    if dst.is_file():
        return dst
    if offline():
        raise WeightsError(
            f"{what}: offline (HF_HUB_OFFLINE is set) and not in the cache at {dst}. Run "
            f"`tinyvit download {entry.name}:{source.tag}` while online, or convert a local copy "
            f"with `tinyvit convert FILE {dst} --arch {entry.name}`"
        )
    # Each process downloads and converts into files of its own and renames the result into
    # place, so concurrent loads of the same model all succeed and leave one file.
    raw, actual = _download(str(source.url), dst.parent, what)
    try:
        expected = source.sha256 or source.sha256_prefix
        if expected is None or not actual.startswith(expected):
            raise WeightsError(f"{what}: SHA-256 mismatch (expected {expected}…, got {actual}); nothing was kept")
        convert(raw, dst, layout=source.layout, arch=entry.arch, preprocess=source.preprocess, source_sha256=actual)
    finally:
        raw.unlink(missing_ok=True)
    return dst


def fetch(entry: ModelEntry, source: WeightSource) -> Path:
    """A local, verified safetensors file for a manifest weight source."""
    if source.kind == "hub":
        if source.layout != "timm":
            return _fetch_hub_converted(entry, source)
        return fetch_hf_hub(str(source.repo_id), str(source.filename), revision=source.revision, sha256=source.sha256)
    return fetch_url(entry, source)


def _fetch_hub_converted(entry: ModelEntry, source: WeightSource) -> Path:
    """Hub files in another layout (e.g. HF's): converted once into tinyvit's cache."""
    from tinyvit.conversion import convert

    path = fetch_hf_hub(str(source.repo_id), str(source.filename), revision=source.revision, sha256=source.sha256)
    blob = path.resolve().name  # the verified content's SHA-256 for LFS files
    dst = converted_path(entry, source, key=blob)  # keyed by the blob, so a new upload converts anew
    if not dst.is_file():
        sha = blob if _SHA256.fullmatch(blob) else None
        convert(path, dst, layout=source.layout, arch=entry.arch, preprocess=source.preprocess, source_sha256=sha)
    return dst
