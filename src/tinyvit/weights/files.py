"""Checkpoint files: reading every format a checkpoint comes in, and writing tinyvit's own.

:func:`read_checkpoint` reads a safetensors / ``.pth`` / ``.bin`` / ``.npz`` file, or a folder
holding one (an HF ``save_pretrained`` folder, a Hub snapshot, sharded safetensors), with what is
published beside it (``config.json``, ``preprocessor_config.json``) and what the file says about
itself (a tinyvit header's record, a training checkpoint's class names) — as read, under the
file's own names: making sense of them is ``conversion.py``'s job. :func:`save` writes a tinyvit
file: safetensors in timm's layout whose header carries the weights record (``tinyvit.weights``).
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import WeightsError
from tinyvit.core.fsutil import atomic_path
from tinyvit.images.spec import PreprocessSpec
from tinyvit.weights.record import NAMED_LABEL_SETS, Source, Weights

__all__ = [
    "META_RECORD", "WEIGHTS_FILES", "Checkpoint", "read_checkpoint", "read_header", "read_record", "read_tensors",
    "save", "weights_file_of",
]  # fmt: skip

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
# Checkpoints of every format


@dataclass
class Checkpoint:
    """Tensors read from a source, plus what the source says about itself."""

    tensors: dict[str, torch.Tensor]
    path: Path
    record: Weights | None = None  # a tinyvit file's header
    hf_config: dict | None = None  # transformers' config.json
    hf_preprocessor: dict | None = None  # transformers' preprocessor_config.json
    timm_config: dict | None = None  # timm's Hub config.json (architecture, pretrained_cfg, label_names)
    open_clip_config: dict | None = None  # open_clip's open_clip_config.json (model_cfg, preprocess_cfg)
    classes: tuple[str, ...] | None = None  # an mmpretrain checkpoint's meta.dataset_meta.classes


# what a file that is not a checkpoint most often is, by its first bytes
_NOT_CHECKPOINTS = (
    (b"\xff\xd8\xff", "a JPEG image"), (b"\x89PNG", "a PNG image"), (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"), (b"%PDF", "a PDF document"),
    (b"\x1f\x8b", "a gzip archive"), (b"\x08", "an ONNX model"),
)  # fmt: skip


def _what_else(path: Path) -> str | None:
    """What a file given as a checkpoint is instead (an image, a document, text), from its first
    bytes; None when it may be a checkpoint (a zip or pickle, safetensors, npz)."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as e:
        raise WeightsError(f"{str(path)!r}: cannot read it ({e.strerror or e})") from e
    if not head:
        return "an empty file"
    if head.startswith((b"PK\x03\x04", b"\x80")) or (len(head) > 8 and head[8:9] == b"{"):
        return None  # torch's zip or legacy pickle, npz; safetensors (8-byte header length, then JSON)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "a WebP image"
    if head[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftypavif"):
        return "a HEIF / AVIF image"
    for magic, what in _NOT_CHECKPOINTS:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the end of what was read is fine
        if e.start < len(head) - 3:
            return None
        text = head[: e.start].decode("utf-8")
    if text.lstrip().lower().startswith(("<!doctype html", "<html")):
        return "an HTML page"
    return "a text file" if all(c.isprintable() or c in "\r\n\t" for c in text) else None


def _torch_load(path: Path) -> tuple[dict, tuple[str, ...] | None]:
    """A .pth / .bin state dict, unwrapped, and the class names its training meta records."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{str(path)!r}: refused to unpickle it with weights_only=True (it holds objects other "
            f"than tensors and plain containers, which could run code): {e}"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightsError(f"{str(path)!r}: not a readable PyTorch checkpoint ({e})") from e
    classes = _meta_classes(obj.get("meta") if isinstance(obj, dict) else None)
    # Training checkpoints wrap the weights: mmpretrain {'meta', 'state_dict'}, others {'model'}.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{str(path)!r}: holds no state dict (got {type(obj).__name__})")
    if all(str(k).startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{str(path)!r}: entries that are not tensors: {', '.join(map(str, not_tensors[:5]))}")
    return obj, classes


def _meta_classes(meta: Any) -> tuple[str, ...] | None:
    """mmpretrain 1.x: meta['dataset_meta']['classes']; mmcls 0.x: meta['CLASSES']."""
    if not isinstance(meta, dict):
        return None
    dataset_meta = meta.get("dataset_meta")
    classes = dataset_meta.get("classes") if isinstance(dataset_meta, dict) else meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str) for c in classes):
        return tuple(classes)
    return None


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{str(path)!r}: unreadable JSON ({e})") from e
    return data if isinstance(data, dict) else None


def _read_configs(ckpt: Checkpoint, folder: Path) -> None:
    """The configs published beside the weights (a Hub repository's or save_pretrained's files)."""
    config = _read_json(folder / "config.json")
    if config is not None and "model_type" in config:
        ckpt.hf_config = config
    elif config is not None and ("architecture" in config or "pretrained_cfg" in config):
        ckpt.timm_config = config
    ckpt.hf_preprocessor = _read_json(folder / "preprocessor_config.json")
    if ckpt.hf_preprocessor is None:  # transformers 5.x saves a processor as one file, its image part nested
        processor = _read_json(folder / "processor_config.json") or {}
        nested = processor.get("image_processor")
        ckpt.hf_preprocessor = nested if isinstance(nested, dict) else None
    ckpt.open_clip_config = _read_json(folder / "open_clip_config.json")


# the weights file of a folder, in order of preference: safetensors, then the pickled ones
WEIGHTS_FILES = ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin")


def weights_file_of(path: Path) -> Path | None:
    """The weights file a checkpoint path names: the file itself, or a folder's first of
    :data:`WEIGHTS_FILES` (None: a folder without one, such as a sharded checkpoint's)."""
    if path.is_file():
        return path
    return next((path / n for n in WEIGHTS_FILES if (path / n).is_file()), None)


def read_checkpoint(src: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint: a safetensors / .pth / .bin / .npz file, or a folder holding one (an HF
    ``save_pretrained`` folder, a timm Hub snapshot), with the configs published beside it."""
    path = Path(src)
    if not path.exists():
        raise WeightsError(f"{str(path)!r}: no such file or folder")
    if path.is_dir():
        if (weights := weights_file_of(path)) is not None:
            ckpt = read_checkpoint(weights)
            ckpt.path = path
            return ckpt
        if (path / "model.safetensors.index.json").is_file():
            index = json.loads((path / "model.safetensors.index.json").read_text(encoding="utf-8"))
            tensors: dict = {}
            for shard in sorted(set(index["weight_map"].values())):
                tensors.update(read_tensors(path / shard))
            ckpt = Checkpoint(tensors, path)
            _read_configs(ckpt, path)
            return ckpt
        raise WeightsError(f"{str(path)!r}: folder holds no weights file ({', '.join(WEIGHTS_FILES)})")
    other = _what_else(path)
    if other is not None:
        raise WeightsError(f"{str(path)!r}: not a checkpoint (it is {other})")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}
        except (OSError, ValueError, EOFError) as e:
            raise WeightsError(f"{str(path)!r}: not a readable .npz file ({e})") from e
        return Checkpoint(arrays, path)
    if path.suffix == ".safetensors":
        ckpt = Checkpoint(read_tensors(path), path, record=read_record(path, read_header(path)))
    else:
        tensors, classes = _torch_load(path)
        ckpt = Checkpoint(tensors, path, classes=classes)
    if ckpt.record is None:
        _read_configs(ckpt, path.parent)
    return ckpt


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

