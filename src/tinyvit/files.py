"""tinyvit weight files: safetensors in timm's layout whose header carries the weights record
(``tinyvit.weights``: :meth:`Weights.to_json`). Reading and writing the format, nothing else."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import torch

from tinyvit.config import ViTConfig
from tinyvit.errors import WeightsError
from tinyvit.fsutil import atomic_path
from tinyvit.preprocessing import PreprocessSpec
from tinyvit.record import NAMED_LABEL_SETS, Source, Weights

__all__ = ["META_RECORD", "read_header", "read_record", "read_tensors", "save"]

META_RECORD = "tinyvit.weights"
# the header keys of files written by tinyvit 0.1, still read
_LEGACY_CONFIG, _LEGACY_PREPROCESS, _LEGACY_SOURCE, _LEGACY_LABELS = (
    "tinyvit.config", "tinyvit.preprocess", "tinyvit.source", "tinyvit.labels",
)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Reading


def read_header(path: Path) -> dict[str, str]:
    """The safetensors header's metadata (string → string)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return f.metadata() or {}
    except FileNotFoundError:
        raise WeightsError(f"{str(path)!r}: no such file") from None
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{str(path)!r}: not a readable safetensors file ({e})") from e


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, memory-mapped (nothing is read until used)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as e:
        raise WeightsError(f"{str(path)!r}: cannot read the tensors ({e})") from e


def read_record(path: Path, header: dict[str, str]) -> Weights | None:
    """The weights record a tinyvit file's header carries (None for other safetensors files).
    The source's ``path`` is set to ``path``."""
    what = repr(str(path))
    try:
        if META_RECORD in header:
            record = Weights.from_json(header[META_RECORD])
        elif _LEGACY_CONFIG in header:
            record = _legacy_record(header)
        else:
            return None
    except (ValueError, TypeError, KeyError) as e:
        raise WeightsError(f"{what}: invalid tinyvit metadata in the header ({e})") from e
    return replace(record, source=replace(record.source, path=str(path)))


def _legacy_record(header: dict[str, str]) -> Weights:
    config = ViTConfig.from_dict(json.loads(header[_LEGACY_CONFIG]))
    pre = header.get(_LEGACY_PREPROCESS)
    labels = header.get(_LEGACY_LABELS)
    source = json.loads(header.get(_LEGACY_SOURCE, "{}"))
    return Weights(
        config=config,
        preprocess=None if pre is None else PreprocessSpec.from_dict(json.loads(pre)),
        categories=NAMED_LABEL_SETS[labels]().names if labels in NAMED_LABEL_SETS else None,
        source=Source(kind="file", layout=source.get("layout", "timm"), sha256=source.get("sha256")),
    )


# ---------------------------------------------------------------------------------------------
# Writing


def _owned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and owning exactly its storage, as safetensors requires."""
    t = t.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def save(dst: str | os.PathLike, state: dict[str, torch.Tensor], record: Weights) -> Path:
    """Write a tinyvit safetensors file atomically (nothing half-written is ever visible)."""
    from safetensors.torch import save_file

    dst = Path(dst)
    record = replace(record, source=replace(record.source, path=None))  # where it was read from: not portable
    with atomic_path(dst) as tmp:
        save_file(
            {k: _owned(v) for k, v in state.items()}, str(tmp), metadata={"format": "pt", META_RECORD: record.to_json()}
        )
    return dst

