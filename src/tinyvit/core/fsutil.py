"""File helpers shared by every layer: atomic writes and SHA-256 of files (no torch)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "sha256_file", "write_bytes_atomic"]


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; when the block succeeds it is renamed onto ``dst``,
    when it fails it is deleted. Readers see the old file or the whole new one, never a part.

    ``suffix`` ends the temporary name, for writers that choose the format by the extension. The
    temporary file is not created here: the writer creates it, with the usual permissions.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
