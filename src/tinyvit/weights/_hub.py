"""Fetching weights: zoo files, Hub repositories, checkpoints at URLs — downloaded and verified,
nothing else (converting them is ``convert.py``'s). No torch here: ``tinyvit models`` asks
:func:`is_cached` without it.

:func:`fetch` turns a parsed spec (``specs.py``) into a local file or folder as published, with
its content's identity (``Fetched.key``); :func:`converted_path` is where conversion keeps what it
made of a key; :func:`is_cached` says whether loading zoo weights would need the network.

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
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tinyvit.core.errors import OfflineError, WeightsError
from tinyvit.core.fsutil import sha256_file, write_bytes_atomic
from tinyvit.weights.record import OPEN_CLIP_FILES, Weights
from tinyvit.weights.specs import HubSpec, ModelSpec, PathSpec, UrlSpec, ZooSpec

__all__ = [
    "Fetched", "cache_dir", "converted_path", "fetch", "fetch_hf_hub", "fetch_text", "is_cached", "offline", "verify",
]  # fmt: skip

_SHA256 = re.compile(r"[0-9a-f]{64}")
URL_TIMEOUT = 60.0  # seconds without data before a URL download is abandoned


def cache_dir() -> Path:
    """tinyvit's own cache: converted URL downloads and verification records."""
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "tinyvit"


CONVERSION_FORMAT = 2  # changes when conversion writes something else: older converted files are not used


def converted_path(key: str, arch: Any, layout: str) -> Path:
    """Where conversion keeps its tinyvit file of the checkpoint ``key`` (``Fetched.key``), read as
    ``layout`` with the stated architecture ``arch`` (JSON-able, or None)."""
    ident = json.dumps([CONVERSION_FORMAT, key, layout, arch], sort_keys=True, default=str)
    digest = hashlib.sha256(ident.encode()).hexdigest()[:32]
    kind, _, rest = key.partition(":")
    if kind == "zoo":  # zoo:name:tag:sha → converted/name/tag-<digest>: a person can tell what it is
        name, tag = rest.split(":")[:2]
        return cache_dir() / "converted" / name / f"{tag}-{digest}.safetensors"
    return cache_dir() / "converted" / kind / f"{digest}.safetensors"


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


PROBE_TIMEOUT = 5.0  # seconds to open a connection to the Hub before calling it unreachable
_unreachable: dict[str, str] = {}  # endpoint → why it could not be reached (asked once per process)


def _unreachable_reason() -> str | None:
    """Why the Hub endpoint cannot be reached (connection refused, no such host, no answer), or
    None when it can, or cannot be asked directly (through a proxy). One TCP connection, once per
    process: huggingface_hub retries an unreachable Hub for ~25 s, printing a line per retry,
    before its cache is looked at; a Hub that is not there at all is known in milliseconds."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if endpoint not in _unreachable:
        if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY")):
            _unreachable[endpoint] = ""
        else:
            url = urllib.parse.urlparse(endpoint)
            port = url.port or (443 if url.scheme == "https" else 80)
            try:
                socket.create_connection((url.hostname or "", port), timeout=PROBE_TIMEOUT).close()
                _unreachable[endpoint] = ""
            except OSError as e:
                _unreachable[endpoint] = getattr(e, "strerror", None) or type(e).__name__
    return _unreachable[endpoint] or None


def _hub_error(e: Exception, what: str) -> WeightsError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(e, LocalEntryNotFoundError) or offline():
        from huggingface_hub import constants

        reason = _unreachable_reason()
        hint = (
            "offline (HF_HUB_OFFLINE is set)"
            if offline()
            else f"the Hub ({constants.ENDPOINT}) could not be reached" + (f" ({reason})" if reason else "")
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
    cache_only = not offline() and _unreachable_reason() is not None
    try:
        path = Path(
            hf_hub_download(repo_id, filename, revision=revision, library_name="tinyvit", local_files_only=cache_only)
        )
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
        if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
            reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
            raise OfflineError(f"{what}: the server could not be reached ({reason})") from e  # no answer at all
        if isinstance(e, (urllib.error.URLError, OSError, ValueError)) and not isinstance(e, WeightsError):
            raise WeightsError(f"{what}: download failed ({e})") from e
        raise
    return Path(tmp), digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Specs → local files


@dataclass(frozen=True)
class Fetched:
    """A spec's checkpoint on this machine, as published (conversion is ``convert.py``'s).

    ``path``: a file, or a folder (a Hub snapshot, with its side files). ``origin``: the fields of
    the record's :class:`~tinyvit.weights.record.Source` (where it came from). ``key``: the content's
    identity for a checkpoint that is not a local file (the zoo's, a Hub file's SHA-256, a URL),
    which conversion caches by. ``record``: the zoo's record, for zoo weights. ``temporary``: a
    download the caller removes once it is converted."""

    path: Path
    origin: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    record: Weights | None = None
    temporary: bool = False


def fetch(spec: ModelSpec) -> Fetched:
    """The local file or folder holding ``spec``'s checkpoint: downloaded (once; later calls read
    huggingface_hub's cache) and verified. URL downloads are temporary files: their converted copy
    is what is kept."""
    if isinstance(spec, ZooSpec):
        return _zoo_file(spec.record)
    if isinstance(spec, HubSpec):
        weights = _hub_snapshot(spec)
        blob = weights.resolve().name
        sha = blob if _SHA256.fullmatch(blob) else None
        origin = {
            "kind": "hub", "repo_id": spec.repo_id, "filename": weights.name, "revision": weights.parent.name,
            "sha256": sha, "path": str(weights),
        }  # fmt: skip
        key = f"hub:{sha or weights.resolve()}:{_side_files_digest(weights.parent)}"
        return Fetched(weights.parent, origin, key=key)
    if isinstance(spec, UrlSpec):
        name = Path(urllib.parse.urlparse(spec.url).path).name or "checkpoint"
        raw, actual = _download_checked(spec.url, cache_dir() / "downloads", repr(spec.url), spec.sha256_prefix)
        origin = {"kind": "url", "url": spec.url, "sha256": actual, "filename": name}
        return Fetched(raw, origin, key=spec.content_key, temporary=True)
    if isinstance(spec, PathSpec):
        return Fetched(spec.path)
    raise TypeError(f"not a model spec: {spec!r}")


def _side_files_digest(folder: Path) -> str:
    """What the side files of a snapshot hold (they make the record), as a short digest."""
    h = hashlib.sha256()
    for name in SIDE_FILES:
        if (folder / name).is_file():
            h.update(name.encode() + b"\0" + (folder / name).read_bytes())
    return h.hexdigest()[:16]


def is_cached(record: Weights) -> bool:
    """Whether zoo weights are on this machine already (loading them needs no network): the Hub
    file in huggingface_hub's cache, or a URL checkpoint's converted copy in tinyvit's."""
    s = record.source
    if s.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(s.repo_id, s.filename, revision=s.revision), str)
    return converted_path(str(ZooSpec(record).content_key), record.config.to_dict(), s.layout).is_file()


def _zoo_file(record: Weights) -> Fetched:
    """Zoo weights as published, verified: a Hub file (huggingface_hub's cache), or a URL's file
    downloaded into a temporary file whose SHA-256 must match the manifest's."""
    src = record.source
    if src.kind == "hub":
        path = fetch_hf_hub(str(src.repo_id), str(src.filename), revision=src.revision, sha256=src.sha256)
        assert path is not None
        blob = path.resolve().name  # the verified content's SHA-256 for LFS files: a new upload converts anew
        sha = src.sha256 or (blob if _SHA256.fullmatch(blob) else None)
        found = replace(record, source=replace(src, sha256=sha, path=str(path)))
        return Fetched(path, key=f"zoo:{record.spec}:{sha or path.resolve()}", record=found)
    what = f"{record.spec} ({src.url})"
    if not (src.sha256 or src.sha256_prefix):
        raise WeightsError(f"{what}: the manifest pins no SHA-256 for it; an unverified download is not used")
    # Each process downloads into a file of its own; conversion renames its result into place, so
    # concurrent loads of the same model all succeed and leave one file.
    raw, actual = _download_checked(str(src.url), cache_dir() / "downloads", what, src.sha256 or src.sha256_prefix)
    found = replace(record, source=replace(src, sha256=src.sha256 or actual, path=None))
    return Fetched(raw, key=ZooSpec(record).content_key, record=found, temporary=True)


def fetch_text(record: Weights) -> Fetched:
    """The file holding zoo weights' text tower (``record.text``: the whole open_clip model's
    repository), verified, in its snapshot folder beside the repository's ``open_clip_config.json``
    and tokenizer files where it has them. Its ``key`` names the content (class sets are cached by it)."""
    text = record.text
    if text is None:
        raise WeightsError(f"{record.spec}: the zoo has no text tower for these weights")
    names = (text.filename,) if text.filename else OPEN_CLIP_FILES  # open_clip's own order
    found, offline_error = _first_file(text.repo_id, names, text.revision, text.sha256)
    if found is None:
        what = f"{record.spec} (text tower, hf://{text.repo_id})"
        if offline_error is not None:
            raise OfflineError(f"{what}: {offline_error}") from offline_error
        raise WeightsError(f"{what}: the repository holds neither {' nor '.join(names)}")
    _side_files(text.repo_id, ("open_clip_config.json", *TOKENIZER_FILES), text.revision)
    blob = found.resolve().name
    sha = text.sha256 or (blob if _SHA256.fullmatch(blob) else None)
    origin = {"kind": "hub", "repo_id": text.repo_id, "filename": found.name, "sha256": sha, "path": str(found)}
    return Fetched(found, origin, key=f"zoo-text:{record.spec}:{sha or found.resolve()}")


def _download_checked(url: str, folder: Path, what: str, expected: str | None) -> tuple[Path, str]:
    """A URL's file in ``folder`` and its SHA-256, which must start with ``expected`` (when given)."""
    if offline():
        raise OfflineError(f"{what}: offline (HF_HUB_OFFLINE is set), and the converted file is not in the cache")
    raw, actual = download_url(url, folder, what)
    if expected is not None and not actual.startswith(expected):
        raw.unlink(missing_ok=True)
        raise WeightsError(f"{what}: SHA-256 mismatch (expected {expected}…, got {actual}); nothing was kept")
    return raw, actual


# What a Hub repository of a ViT holds beside its weights: timm's or transformers' config, the
# processor's config, open_clip's config
SIDE_FILES = ("config.json", "preprocessor_config.json", "processor_config.json", "open_clip_config.json")
# A CLIP / SigLIP repository's tokenizer (text.tokenize reads whichever it has)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "spiece.model")  # fmt: skip


def _hub_snapshot(spec: HubSpec) -> Path:
    """The weights file of a Hub repository (the first it has of ``files.WEIGHTS_FILES``:
    safetensors before pickled ``.bin``, timm / transformers before open_clip), in its local
    snapshot folder beside whichever of :data:`SIDE_FILES` the repository has."""
    from tinyvit.weights.files import WEIGHTS_FILES

    weights, offline_error = _first_file(spec.repo_id, WEIGHTS_FILES, spec.revision)
    if weights is None:
        weights = _hub_shards(spec)
    if weights is None:
        raise offline_error or WeightsError(
            f"{spec}: the repository holds none of {', '.join(WEIGHTS_FILES)}, {SHARD_INDEX}"
        )
    _side_files(spec.repo_id, SIDE_FILES + TOKENIZER_FILES, spec.revision)
    return weights


def _first_file(
    repo_id: str, names: tuple[str, ...], revision: str | None, sha256: str | None = None
) -> tuple[Path | None, OfflineError | None]:
    """The first of ``names`` the repository has, verified (None if it has none), and the first
    offline error met on the way: offline, the first file the cache has wins."""
    offline_error = None
    for name in names:
        try:
            found = fetch_hf_hub(repo_id, name, revision=revision, sha256=sha256, optional=True)
        except OfflineError as e:
            offline_error = offline_error or e
            continue
        if found is not None:
            return found, offline_error
    return None, offline_error


def _side_files(repo_id: str, names: tuple[str, ...], revision: str | None) -> None:
    """Whichever of ``names`` the repository has, into its snapshot folder beside the weights."""
    for name in names:
        try:
            fetch_hf_hub(repo_id, name, revision=revision, optional=True)
        except OfflineError:
            pass  # offline: a side file the first (online) load did not find is not there


SHARD_INDEX = "model.safetensors.index.json"  # a checkpoint saved in shards: which shard holds each tensor


def _hub_shards(spec: HubSpec) -> Path | None:
    """A sharded checkpoint: its index, fetched with every shard it names (None if there is none)."""
    try:
        index = fetch_hf_hub(spec.repo_id, SHARD_INDEX, revision=spec.revision, optional=True)
    except OfflineError:
        return None
    if index is None:
        return None
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{spec}: unreadable {SHARD_INDEX} ({e})") from e
    for shard in shards:
        if "/" in shard or "\\" in shard or not shard.endswith(".safetensors"):
            raise WeightsError(f"{spec}: {SHARD_INDEX} names {shard!r}, not a safetensors file beside it")
        fetch_hf_hub(spec.repo_id, shard, revision=spec.revision)
    return index
