"""Embedding files, written row by row as the features are computed (``tinyvit embed -o``; with
``--patches``, each row an image's patch features on its grid)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import atomic_path
from tinyvit.run.runner import Embedding
from tinyvit.weights.record import Weights

__all__ = ["EmbeddingSummary", "write_embeddings"]


@dataclass(frozen=True)
class EmbeddingSummary:
    path: Path
    written: int  # rows with a feature
    failed: dict[int, str]  # row → why the image failed (its row is NaN)


def write_embeddings(
    embeddings: Iterable[Embedding],
    dst: str | os.PathLike,
    *,
    inputs: Sequence[str],
    dim: int | tuple[int, ...],
    record: Weights | None,
    normalized: bool,
    key: str = "embeddings",
    metadata: dict[str, object] | None = None,
) -> EmbeddingSummary:
    """Write embeddings to ``dst`` (``.safetensors`` or ``.npy``) as they come, one row at a time
    into a memory-mapped file, so a large folder never holds all features in memory; ``dst``
    appears only when complete (an interrupted run leaves nothing).

    ``.safetensors``: ``embeddings`` (N, D) float32 and ``valid`` (N,) uint8 (0 for an image that
    failed; its row is NaN); the header's metadata holds ``tinyvit.inputs`` (a JSON list, row
    order), ``tinyvit.weights`` (the model's record), ``tinyvit.errors`` (row → error) and
    ``tinyvit.normalized``. ``.npy``: the (N, D) array, the same information in ``<dst>.json``.
    ``dim`` may be a row's shape (patch features: (h, w, D), written under ``key``); ``metadata``:
    more ``tinyvit.*`` entries, JSON-encoded (e.g. ``grid``).
    """
    dst = Path(dst)
    if dst.suffix not in (".safetensors", ".npy"):
        raise TinyViTError(f"{str(dst)!r}: embeddings are written to a .safetensors or .npy file")
    if dst.is_dir():
        raise TinyViTError(f"{str(dst)!r} is a folder; give the output file's path")
    n = len(inputs)
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        rows_file = tmp if dst.suffix == ".npy" else tmp.with_name(tmp.name + ".rows.npy")
        try:
            row_shape = (dim,) if isinstance(dim, int) else tuple(dim)
            rows = np.lib.format.open_memmap(rows_file, mode="w+", dtype=np.float32, shape=(n, *row_shape))
            failed = _fill_rows(rows, embeddings)
            meta = {
                "tinyvit.inputs": json.dumps(list(inputs), ensure_ascii=False),
                "tinyvit.weights": "null" if record is None else record.to_json(),
                "tinyvit.errors": json.dumps({str(k): v for k, v in failed.items()}, ensure_ascii=False),
                "tinyvit.normalized": json.dumps(normalized),
                **{f"tinyvit.{k}": json.dumps(v) for k, v in (metadata or {}).items()},
            }
            if dst.suffix == ".npy":
                del rows
                sidecar = {k.removeprefix("tinyvit."): json.loads(v) for k, v in meta.items()}
                with atomic_path(dst.with_name(dst.name + ".json")) as side:
                    side.write_text(json.dumps(sidecar, ensure_ascii=False, indent=1))
            else:
                valid = np.ones(n, dtype=np.uint8)
                valid[list(failed)] = 0
                _write_safetensors(tmp, rows, valid, meta, key)
                del rows
        finally:
            if rows_file != tmp:
                rows_file.unlink(missing_ok=True)
    return EmbeddingSummary(dst, n - len(failed), failed)


def _fill_rows(rows: np.ndarray, embeddings: Iterable[Embedding]) -> dict[int, str]:
    """One embedding per row, in order (a failed one: a row of NaN); returns row → error."""
    n = rows.shape[0]
    failed: dict[int, str] = {}
    count = 0
    for count, e in enumerate(embeddings, start=1):
        if count > n:
            raise TinyViTError(f"more embeddings than the {n} inputs")
        if e.ok:
            rows[count - 1] = e.vector.numpy()  # type: ignore[union-attr]
        else:
            rows[count - 1] = np.nan
            failed[count - 1] = e.error_line()
    if count != n:
        raise TinyViTError(f"{count} embeddings for {n} inputs")
    rows.flush()
    return failed


def _write_safetensors(
    path: Path, rows: np.ndarray, valid: np.ndarray, metadata: dict[str, str], key: str = "embeddings"
) -> None:
    """The safetensors format (an 8-byte little-endian header size, a JSON header, the raw bytes),
    copying the memory-mapped rows in chunks rather than building the file in memory."""
    n, dim = rows.shape[0], int(np.prod(rows.shape[1:]))
    size = n * dim * 4
    header = {
        "__metadata__": metadata,
        key: {"dtype": "F32", "shape": list(rows.shape), "data_offsets": [0, size]},
        "valid": {"dtype": "U8", "shape": [n], "data_offsets": [size, size + n]},
    }
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    chunk = max(1, (16 << 20) // max(dim * 4, 1))  # rows per 16 MB
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for start in range(0, n, chunk):
            f.write(np.ascontiguousarray(rows[start : start + chunk], dtype="<f4").tobytes())
        f.write(valid.tobytes())
