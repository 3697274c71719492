"""The public entry points: list the zoo, build a model, load weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tinyvit.errors import WeightsError
from tinyvit.manifest import entries, entry, find_source
from tinyvit.model import VisionTransformer
from tinyvit.weights import WeightsInfo, load_file

__all__ = ["available_models", "get_model", "load"]


def available_models() -> list[str]:
    """Names of the zoo's models, as :func:`load` and :func:`get_model` take them."""
    return list(entries())


def get_model(
    name: str,
    pretrained: bool = False,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """A zoo architecture in eval mode: randomly initialised, or with its default weights
    (``pretrained=True``, the same as :func:`load`)."""
    if pretrained:
        return load(name, device=device, dtype=dtype)
    e = entry(name)
    model = VisionTransformer(e.arch).init_weights().to(device=device, dtype=dtype).eval()
    model.info = WeightsInfo(config=e.arch, preprocess=e.sources[0].preprocess, name=name, labels=e.labels)
    return model


def load(
    spec: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """A model with weights, in eval mode, with ``model.info`` describing them.

    ``spec`` is a zoo name (its default weights), ``"name:tag"``, or the path of a safetensors
    file written by :func:`tinyvit.convert`.
    """
    path = Path(spec)
    if isinstance(spec, os.PathLike) or path.suffix == ".safetensors" or path.exists():
        return load_file(path, device=device, dtype=dtype)
    model_entry, source = find_source(str(spec))
    from tinyvit.hub import fetch

    file = fetch(model_entry, source)
    info = {
        "name": model_entry.name,
        "tag": source.tag,
        "preprocess": source.preprocess,
        "labels": model_entry.labels,
        "source": {"location": source.location, "sha256": source.sha256, "path": str(file)},
    }
    try:
        return load_file(file, config=model_entry.arch, device=device, dtype=dtype, info=info)
    except WeightsError as e:
        raise WeightsError(f"{model_entry.name}:{source.tag}: {e}") from e
