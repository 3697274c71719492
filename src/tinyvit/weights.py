"""tinyvit weight files: safetensors in timm's layout whose metadata header carries the
architecture (and, when known, the preprocessing), and the one place models are built from them."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tinyvit.errors import WeightsError
from tinyvit.model import VisionTransformer, ViTConfig
from tinyvit.preprocessing import PreprocessSpec

__all__ = ["WeightsInfo", "build_model", "check_state_dict", "load_file", "meta_model", "read_metadata", "sha256_file"]

META_CONFIG = "tinyvit.config"
META_PREPROCESS = "tinyvit.preprocess"
META_SOURCE = "tinyvit.source"
META_LABELS = "tinyvit.labels"


@dataclass(frozen=True)
class WeightsInfo:
    """What a loaded model knows about its weights; attached to the model as ``model.info``."""

    config: ViTConfig
    preprocess: PreprocessSpec | None = None
    name: str | None = None  # zoo name, when loaded by name
    tag: str | None = None
    labels: str | None = None  # e.g. "imagenet-1k"
    source: dict = field(default_factory=dict)  # where the tensors came from


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def meta_model(config: ViTConfig) -> VisionTransformer:
    """The architecture on the meta device: shapes only, nothing allocated or initialised."""
    with torch.device("meta"):
        return VisionTransformer(config)


def check_state_dict(
    config: ViTConfig, state: dict[str, torch.Tensor], what: str, model: VisionTransformer | None = None
) -> None:
    """Raise WeightsError listing missing / unexpected keys and shape mismatches."""
    expected = {k: tuple(v.shape) for k, v in (model or meta_model(config)).state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        return

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
        return f"\n  {title}: {shown}"

    msg = f"{what} does not match the architecture {config}:"
    if missing:
        msg += listing("missing keys", missing)
    if unexpected:
        msg += listing("unexpected keys", unexpected)
    if mismatched:
        msg += listing("shape mismatches", mismatched)
    raise WeightsError(msg)


def build_model(
    config: ViTConfig,
    state: dict[str, torch.Tensor],
    *,
    what: str,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """The model in eval mode with ``state`` as its parameters.

    Built on the meta device (no random initialisation), then the tensors are assigned, not
    copied: safetensors tensors stay memory-mapped unless a device or dtype change needs a copy.
    """
    model = meta_model(config)
    check_state_dict(config, state, what, model)
    dtype = dtype or torch.float32
    for name, t in state.items():
        if not t.is_floating_point():
            raise WeightsError(f"{what}: tensor {name} has non-float dtype {t.dtype}")
    state = {k: v.to(device=device, dtype=dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()


def read_metadata(path: Path) -> dict[str, str]:
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


def config_from_metadata(meta: dict[str, str], what: str) -> ViTConfig | None:
    if META_CONFIG not in meta:
        return None
    try:
        return ViTConfig.from_dict(json.loads(meta[META_CONFIG]))
    except (ValueError, TypeError) as e:
        raise WeightsError(f"{what}: invalid {META_CONFIG} metadata ({e})") from e


def load_file(
    path: str | os.PathLike,
    *,
    config: ViTConfig | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    info: dict | None = None,
) -> VisionTransformer:
    """A model from a safetensors file in timm's layout.

    The architecture comes from ``config`` or else from the file's tinyvit metadata (written by
    :func:`tinyvit.convert`); files in other layouts must be converted first.
    """
    path = Path(path)
    what = repr(str(path))
    meta = read_metadata(path)
    file_config = config_from_metadata(meta, what)
    config = config or file_config
    if config is None:
        raise WeightsError(
            f"{what} carries no tinyvit architecture metadata: convert it first "
            f"(tinyvit convert {path} out.safetensors --arch NAME) or load it by model name"
        )
    spec = None
    if META_PREPROCESS in meta:
        try:
            spec = PreprocessSpec.from_dict(json.loads(meta[META_PREPROCESS]))
        except (ValueError, TypeError, KeyError) as e:
            raise WeightsError(f"{what}: invalid {META_PREPROCESS} metadata ({e})") from e
    source = json.loads(meta[META_SOURCE]) if META_SOURCE in meta else {}
    model = build_model(config, read_tensors(path), what=what, device=device, dtype=dtype)
    fields = {
        "config": config,
        "preprocess": spec,
        "labels": meta.get(META_LABELS),
        "source": {**source, "path": str(path)},
    }
    model.info = WeightsInfo(**{**fields, **(info or {})})
    return model


def grid_side(num_tokens: int) -> int | None:
    """Side of the square patch grid of a position embedding with a class slot, or None."""
    side = math.isqrt(max(num_tokens - 1, 0))
    return side if side * side == num_tokens - 1 and side > 0 else None
