"""Fetching and verifying files: from the Hugging Face Hub, or from a URL. Nothing else.

Hub files go through ``huggingface_hub.hf_hub_download``: its cache, ``HF_HOME``,
``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and progress bar. URL files (mmpretrain's ``.pth``) are
downloaded with a progress bar from huggingface_hub's own tqdm (``HF_HUB_DISABLE_PROGRESS_BARS``
turns both off) into a temporary file whose SHA-256 is computed on the way.

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

from tinyvit.errors import OfflineError, WeightsError
from tinyvit.fsutil import sha256_file, write_bytes_atomic

__all__ = ["cache_dir", "download_url", "fetch_hf_hub", "offline", "verify"]

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
        write_bytes_atomic(record, json.dumps(stamp).encode())
    except OSError as e:  # a read-only cache: the file is fine, it will just be hashed again next time
        warnings.warn(f"tinyvit: cannot record the verification of {path} ({e})", stacklevel=2)


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
        from huggingface_hub import constants

        hint = (
            "offline (HF_HUB_OFFLINE is set)" if offline() else f"the Hub ({constants.ENDPOINT}) could not be reached"
        )
        return OfflineError(f"{what}: {hint}, and the file is not in the cache")
    if isinstance(e, RepositoryNotFoundError):
        return WeightsError(f"{what}: repository not found on the Hub (or it is private)")
    if isinstance(e, RevisionNotFoundError):
        return WeightsError(f"{what}: revision not found on the Hub")
    if isinstance(e, EntryNotFoundError):
        return WeightsError(f"{what}: file not found in the repository")
    return WeightsError(f"{what}: download failed ({type(e).__name__}: {e})")


def fetch_hf_hub(
    repo_id: str, filename: str, *, revision: str | None = None, sha256: str | None = None, optional: bool = False
) -> Path | None:
    """A verified local copy of a Hub file (downloaded once, then read from the cache).
    ``optional``: None when the repository has no such file, instead of an error."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    what = f"hf://{repo_id}/{filename}" + (f"@{revision}" if revision else "")
    try:
        path = Path(hf_hub_download(repo_id, filename, revision=revision, library_name="tinyvit"))
    except EntryNotFoundError as e:
        if optional and not isinstance(e, LocalEntryNotFoundError):
            return None
        raise _hub_error(e, what) from e
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


def download_url(url: str, folder: Path, what: str) -> tuple[Path, str]:
    """Download into a new file of this process's own in ``folder``; returns it and its SHA-256.
    On failure nothing is left behind. The caller removes the file when done with it."""
    from huggingface_hub.utils import tqdm

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
