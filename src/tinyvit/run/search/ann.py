"""Approximate search past one size, with faiss-cpu (the ``tinyvit[search]`` extra): an inverted
file over the index's vectors (``IndexIVFScalarQuantizer``, float16 codes: the size of the vectors
themselves), kept beside them as ``ann-<vectors file>.faiss``.

Below ``ANN_MIN_ROWS`` the exact product is fast enough (benchmarks/bench_search.py: a few ms at
100 k vectors on 2 cores) and is always used; past it, and only where faiss is installed, an update
builds or extends the ANN file and a search asks it for candidates, then scores them exactly from the
vectors (the scores shown are the exact cosines). ``exact=True`` bypasses it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from tinyvit.core.fsutil import atomic_path
from tinyvit.run.search.store import Store

__all__ = ["ANN_MIN_ROWS", "NPROBE", "available", "candidates", "refresh"]

ANN_MIN_ROWS = 250_000  # exact search stays under ~25 ms below this on 2 cores (float32 vectors)
NPROBE = 32  # lists searched per query: recall@10 >= 0.98 at 1 M in benchmarks/bench_search.py
OVERFETCH = 4  # candidates per hit asked of the ANN index, rescored exactly (and dead rows dropped)


def available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _path(store: Store) -> Path:
    return store.root / f"ann-{Path(store.meta['vectors']).stem}.faiss"


def refresh(store: Store) -> Path | None:
    """Build, or extend with the rows committed since, the ANN file of a large index (faiss
    installed); remove stale ones. Returns the file, or None where exact search is used."""
    import faiss

    current = _path(store)
    for stale in store.root.glob("ann-*.faiss"):
        if stale != current:
            stale.unlink(missing_ok=True)
    vectors = store.vectors()
    if vectors.shape[0] < ANN_MIN_ROWS:
        current.unlink(missing_ok=True)
        return None
    index = faiss.read_index(str(current)) if current.exists() else None
    if index is None or index.ntotal > vectors.shape[0]:
        index = _trained(vectors)
    for start in range(index.ntotal, vectors.shape[0], 65536):
        index.add(np.asarray(vectors[start : start + 65536], dtype=np.float32))
    with atomic_path(current, suffix=".faiss") as tmp:
        faiss.write_index(index, str(tmp))
    return current


def _trained(vectors: np.ndarray):
    import faiss

    n, dim = vectors.shape
    lists = int(4 * math.sqrt(n))
    sample = np.random.default_rng(0).choice(n, min(n, 64 * lists), replace=False)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_fp16,
                                          faiss.METRIC_INNER_PRODUCT)  # fmt: skip
    index.train(np.asarray(vectors[np.sort(sample)], dtype=np.float32))
    return index


_OPEN: dict[tuple[str, float], object] = {}  # path and modification time → the faiss index, kept loaded


def candidates(store: Store, q: np.ndarray, k: int) -> np.ndarray | None:
    """Row numbers of up to ``OVERFETCH * k`` likely neighbours of ``q``, or None where there is no
    fresh ANN file (exact search then)."""
    import faiss

    path = _path(store)
    if not path.exists():
        return None
    key = (str(path), os.stat(path).st_mtime)
    index = _OPEN.get(key)
    if index is None:
        _OPEN.clear()
        index = _OPEN[key] = faiss.read_index(str(path))
    if index.ntotal != store.meta["rows"]:
        return None
    index.nprobe = NPROBE
    _, rows = index.search(np.asarray(q, dtype=np.float32)[None], OVERFETCH * k)
    return rows[0][rows[0] >= 0]
