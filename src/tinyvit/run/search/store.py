"""An index's files on disk: SQLite for what is known of each photo, a flat array for the vectors.

An index is a folder (``photos.tvi/``) that holds ``index.sqlite`` (WAL; one row per photo: path,
size, modification time, SHA-256 of the content, and its row in the vectors file; and ``meta``: the
model's identity, the vectors' width and dtype, which vectors file is current and how many of its
rows are committed) and ``vectors-<generation>.bin`` (unit-length embeddings, row after row, read
through a memory map).

What makes it crash-safe: vectors are only ever appended past the committed rows, written and
fsync'd before the SQLite transaction that points rows at them and moves the committed count. A
process killed at any moment leaves either the old transaction or the new one; rows written past the
committed count are ignored, and the next update overwrites them. A compaction writes a whole new
generation file and switches to it in one transaction; the old file goes only after the commit.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tinyvit.core.errors import TinyViTError

__all__ = ["FORMAT", "FileRow", "Store", "VECTOR_DTYPES"]

FORMAT = "tinyvit-index/1"
DB_NAME = "index.sqlite"
VECTOR_DTYPES = ("float32", "float16")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    row INTEGER NOT NULL UNIQUE
);
"""


@dataclass(frozen=True)
class FileRow:
    """What the index knows of one photo."""

    path: str
    size: int
    mtime_ns: int
    sha256: str
    row: int


class Store:
    """One index folder, open. ``Store.create`` makes a new one (in a temporary folder renamed into
    place: never half-made); ``Store.open`` opens an existing one (one line when it is not one)."""

    def __init__(self, root: Path, db: sqlite3.Connection):
        self.root = root
        self.db = db
        self.meta: dict[str, Any] = {k: json.loads(v) for k, v in db.execute("SELECT key, value FROM meta")}
        if self.meta.get("format") != FORMAT:
            raise TinyViTError(f"{str(root)!r} is not a tinyvit index (its format is {self.meta.get('format')!r})")
        self.dim: int = self.meta["dim"]
        self.dtype = np.dtype(self.meta["dtype"])

    # -- opening

    @classmethod
    def open(cls, root: str | os.PathLike) -> Store:
        root = Path(root)
        if not (root / DB_NAME).is_file():
            why = "no such index" if not root.exists() else "not a tinyvit index (no index.sqlite in it)"
            raise TinyViTError(f"{str(root)!r}: {why}; make one with `tinyvit index PHOTOS -o {root}`")
        return cls(root, _connect(root / DB_NAME))

    @classmethod
    def create(cls, root: str | os.PathLike, identity: dict[str, Any], dim: int, dtype: str = "float32") -> Store:
        """A new, empty index at ``root`` (which must not exist)."""
        if dtype not in VECTOR_DTYPES:
            raise ValueError(f"the vectors' dtype must be one of {VECTOR_DTYPES}, got {dtype!r}")
        root = Path(root)
        if root.exists():
            raise TinyViTError(f"{str(root)!r} exists and is not a tinyvit index")
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
        db = _connect(tmp / DB_NAME)
        meta = {"format": FORMAT, "identity": identity, "dim": dim, "dtype": dtype, "vectors": "vectors-0.bin",
                "rows": 0}  # fmt: skip
        (tmp / "vectors-0.bin").touch()
        with db:
            db.executemany("INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()])
        db.close()
        tmp.chmod(0o755)
        tmp.rename(root)
        return cls.open(root)

    def close(self) -> None:
        self.db.close()

    # -- reading

    @property
    def identity(self) -> dict[str, Any]:
        return self.meta["identity"]

    @property
    def vectors_path(self) -> Path:
        return self.root / self.meta["vectors"]

    def files(self) -> dict[str, FileRow]:
        return {r[0]: FileRow(*r) for r in self.db.execute("SELECT path, size, mtime_ns, sha256, row FROM files")}

    def live(self) -> tuple[list[str], np.ndarray]:
        """(paths, their rows in the vectors file), in row order."""
        pairs = self.db.execute("SELECT path, row FROM files ORDER BY row").fetchall()
        return [p for p, _ in pairs], np.fromiter((r for _, r in pairs), dtype=np.int64, count=len(pairs))

    def vectors(self) -> np.ndarray:
        """The committed rows of the vectors file, memory-mapped: (rows, dim)."""
        rows = self.meta["rows"]
        if rows == 0:
            return np.zeros((0, self.dim), self.dtype)
        # copy-on-write: pages are shared with the file and never written back; writable, so torch takes it as is
        return np.memmap(self.vectors_path, dtype=self.dtype, mode="c", shape=(rows, self.dim))

    # -- writing: each call one transaction

    def commit_rows(self, rows: Iterable[tuple[str, int, int, str]], vectors: np.ndarray) -> None:
        """Append ``vectors`` (one per row of ``rows``: path, size, mtime_ns, sha256) past the committed
        rows, fsync them, then point the paths at them and move the committed count, in one transaction."""
        rows = list(rows)
        start = self.meta["rows"]
        _append(self.vectors_path, start * self.dim * self.dtype.itemsize, vectors.astype(self.dtype, copy=False))
        with self.db:
            self.db.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?) ON CONFLICT(path) DO UPDATE SET size=excluded.size, "
                "mtime_ns=excluded.mtime_ns, sha256=excluded.sha256, row=excluded.row",
                [(*r, start + i) for i, r in enumerate(rows)],
            )
            self._set("rows", start + len(rows))

    def touch(self, rows: Iterable[tuple[str, int, int]]) -> None:
        """New sizes / modification times for files whose content did not change."""
        with self.db:
            self.db.executemany("UPDATE files SET size=?, mtime_ns=? WHERE path=?", [(s, m, p) for p, s, m in rows])

    def remove(self, paths: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM files WHERE path=?", [(p,) for p in paths])

    def dead_rows(self) -> int:
        return self.meta["rows"] - self.db.execute("SELECT COUNT(*) FROM files").fetchone()[0]

    def compact(self) -> None:
        """Rewrite the live rows into a new generation file, switched to in one transaction."""
        paths, rows = self.live()
        generation = int(self.meta["vectors"].split("-")[1].split(".")[0]) + 1
        name = f"vectors-{generation}.bin"
        old = self.vectors_path
        kept = np.ascontiguousarray(self.vectors()[rows]) if len(rows) else np.zeros((0, self.dim), self.dtype)
        _append(self.root / name, 0, kept)
        with self.db:
            self.db.execute("UPDATE files SET row = -1 - row")  # out of the way of the UNIQUE constraint
            self.db.executemany("UPDATE files SET row=? WHERE path=?", [(i, p) for i, p in enumerate(paths)])
            self._set("vectors", name)
            self._set("rows", len(paths))
        old.unlink(missing_ok=True)

    def remove_strays(self) -> None:
        """Vectors files no transaction points at (a compaction killed before its commit)."""
        for f in self.root.glob("vectors-*.bin"):
            if f.name != self.meta["vectors"]:
                f.unlink(missing_ok=True)

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One writer at a time: a second update of the same index fails at once, in one line."""
        try:
            import fcntl
        except ImportError:  # Windows: SQLite's own locking still keeps each transaction whole
            yield
            return
        with open(self.root / "lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TinyViTError(f"{str(self.root)!r} is being updated by another process") from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _set(self, key: str, value: Any) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))
        self.meta[key] = value


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level="DEFERRED", check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript(SCHEMA)
    return db


def _append(path: Path, offset: int, vectors: np.ndarray) -> None:
    """Write ``vectors`` at byte ``offset`` of ``path`` (what lay there and past it is dropped: rows of
    a killed update that were never committed), then fsync."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, offset)
        os.lseek(fd, offset, os.SEEK_SET)
        view = memoryview(np.ascontiguousarray(vectors)).cast("B")
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
