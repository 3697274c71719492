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
    temporary file is not created here: the writer creates it, and it is given the usual
    permissions (``0o666`` less the umask: ``-rw-r--r--`` under umask 022) before it takes the
    name, whatever the writer chose (safetensors writes ``-rw-------``).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.parent / f".{dst.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}{suffix}"
    try:
        yield tmp
        if tmp.is_file():
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    """The process's umask: read where the system shows it (Linux), else set and set back."""
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.is_file() else ():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc (macOS, Windows)
    os.umask(mask)
    return mask


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()
