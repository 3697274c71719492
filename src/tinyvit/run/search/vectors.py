"""The torch side of photo search: the photo file read once, the model's identity, the
exact scores, near-duplicate groups, words through the text tower. Imported by ``run/search/index.py``
only when vectors are computed, so that an update with nothing to do never imports torch."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from tinyvit.core.errors import ImageError, TinyViTError
from tinyvit.images.inputs import check_path
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import ModelOptions
from tinyvit.run.runner import Runner
from tinyvit.weights._builder import weights_sha256

__all__ = ["WIDEN_ROWS", "Photo", "exact_scores", "model_identity", "near_duplicate_groups", "text_vectors"]

WIDEN_ROWS = 16384  # float16 vectors widened to float32 at a time by the exact search


class Photo:
    """A photo file to embed and hash, read once: a binary file object as the runner decodes any
    (``read()``, ``name``), whose ``read`` keeps the SHA-256 of the bytes it returns. The decoding
    thread reads it; the hash is of exactly the bytes that were decoded, and the file is not read a
    second time to hash it."""

    __slots__ = ("name", "sha256")

    def __init__(self, path: str):
        self.name = path
        self.sha256: str | None = None  # set once read

    def read(self) -> bytes:
        """The file's bytes (their SHA-256 kept); an unreadable file is the ImageError a path gives."""
        path = check_path(self.name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(repr(self.name), f"cannot read the file ({e.strerror or e})") from e
        self.sha256 = hashlib.sha256(data).hexdigest()
        return data


def model_identity(model: VisionTransformer, runner: Runner, load: str | None, fast: bool) -> dict[str, Any]:
    """What names the embeddings an index holds: how to load the model again, its weights' SHA-256
    (of the tensors, for a model without a file), its preprocessing, the embedding width."""
    record = model.weights
    sha = weights_sha256(record) if record is not None else None
    if sha is None:
        sha = "tensors:" + _tensors_sha256(model)
    return {"load": load, "name": record.spec if record is not None else None, "sha256": sha,
            "preprocess": runner.spec.to_dict(), "fast": fast, "dim": runner.embedding_dim}  # fmt: skip


def _tensors_sha256(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def exact_scores(vectors: np.ndarray, q: torch.Tensor) -> torch.Tensor:
    """``vectors @ q`` in float32: one matrix–vector product for float32 vectors; float16 rows are
    widened ``WIDEN_ROWS`` at a time into one reused buffer (torch's half ``mv`` would be as fast,
    but it rounds the scores themselves to float16: ties that are not ties). Measured on 2 shared,
    busy cores at 1 M × 512: 1.9 s with 1,024-row blocks, 1.0 s with 16,384, 0.9 s with 65,536
    (unloaded, 1,024 did best: 0.19 s) — float32 vectors take one ``mv``: 0.08 s unloaded."""
    t = torch.from_numpy(vectors) if vectors.flags.writeable else torch.from_numpy(np.array(vectors))
    if t.dtype == torch.float32:
        return torch.mv(t, q)
    n = t.shape[0]
    out = torch.empty(n, dtype=torch.float32)
    buf = torch.empty(min(n, WIDEN_ROWS), t.shape[1], dtype=torch.float32)
    for start in range(0, n, WIDEN_ROWS):
        block = t[start : start + WIDEN_ROWS]
        m = block.shape[0]
        buf[:m].copy_(block)
        torch.mv(buf[:m], q, out=out[start : start + m])
    return out


def near_duplicate_groups(vectors: np.ndarray, paths: list[str], threshold: float) -> list[list[tuple[str, float]]]:
    """Connected components of the graph "cosine >= threshold" (union–find over blocks of V Vᵀ)."""
    v = torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))
    parent = list(range(len(paths)))
    best = [-2.0] * len(paths)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(paths), 1024):
        sims = v[start : start + 1024] @ v.T
        for a, b in (sims >= threshold).nonzero().tolist():
            i = start + a
            if b != i:
                best[i] = max(best[i], float(sims[a, b]))
                parent[find(i)] = find(b)
    groups: dict[int, list[tuple[str, float]]] = {}
    for i, p in enumerate(paths):
        if best[i] > -2.0:
            groups.setdefault(find(i), []).append((p, best[i]))
    return sorted((sorted(g) for g in groups.values()), key=lambda g: g[0][0])


def text_vectors(texts: list[str], model: Any, options: ModelOptions) -> list[torch.Tensor]:
    """Words → unit embeddings through the text tower of ``model``'s checkpoint (what
    ``tinyvit.embed_text`` gives); a model without one is refused in one line."""
    try:
        from tinyvit.run.zeroshot import text_encoder_for
    except ImportError:
        raise TinyViTError(
            f"word queries ({texts[0]!r}) need text towers (tinyvit.embed_text), which this tinyvit lacks; "
            "query with an image path or URL"
        ) from None
    encoder = text_encoder_for(model, replace(options, preprocess=None))
    return list(encoder(texts, normalize=True, batch_size=64, progress=None))
