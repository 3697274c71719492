"""The public entry points: list the zoo, build a model, load weights."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tinyvit.errors import WeightsError
from tinyvit.manifest import entries, entry, find_source
from tinyvit.model import VisionTransformer
from tinyvit.weights import WeightsInfo, load_file

__all__ = ["available_models", "download", "get_model", "list_models", "load"]


def available_models() -> list[str]:
    """Names of the zoo's models, as :func:`load` and :func:`get_model` take them."""
    return list(entries())


def list_models(*, tags: bool = False) -> list[str]:
    """The zoo's model names; with ``tags=True`` every weight as ``"name:tag"``, defaults first."""
    if not tags:
        return available_models()
    return [f"{name}:{s.tag}" for name, e in entries().items() for s in e.sources]


def download(spec: str) -> Path:
    """Fetch (and verify, and convert where needed) a zoo weight into the cache, for offline use.
    Returns the local safetensors file."""
    from tinyvit.hub import fetch

    model_entry, source = find_source(spec)
    return fetch(model_entry, source)


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

    ``spec`` is a zoo name (its default weights), ``"name:tag"``, the path of a safetensors file
    written by :func:`tinyvit.convert`, or ``"hf-hub:owner/repo[@revision]"`` — a Hub repository
    whose ``model.safetensors`` carries tinyvit's metadata (a converted file, uploaded).
    """
    path = Path(spec)
    if isinstance(spec, os.PathLike) or path.suffix == ".safetensors" or path.exists():
        return load_file(path, device=device, dtype=dtype)
    from tinyvit.hub import fetch, fetch_hf_hub

    if spec.startswith("hf-hub:"):
        repo_id, _, revision = spec.removeprefix("hf-hub:").partition("@")
        file = fetch_hf_hub(repo_id, "model.safetensors", revision=revision or None)
        return load_file(file, device=device, dtype=dtype, info={"source": {"location": spec, "path": str(file)}})
    model_entry, source = find_source(str(spec))

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
