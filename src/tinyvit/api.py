"""The public entry points: list the zoo, build a model, load weights, predict."""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from tinyvit.errors import ImageError, WeightsError
from tinyvit.manifest import ModelEntry, WeightSource, entries, entry, find_source
from tinyvit.model import VisionTransformer
from tinyvit.preprocessing import describe_input, preprocess_one, resolve_spec
from tinyvit.weights import WeightsInfo, load_file

__all__ = ["Prediction", "available_models", "download", "get_model", "list_models", "load", "predict"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


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
    from tinyvit.hub import fetch_hf_hub

    if spec.startswith("hf-hub:"):
        repo_id, _, revision = spec.removeprefix("hf-hub:").partition("@")
        file = fetch_hf_hub(repo_id, "model.safetensors", revision=revision or None)
        return load_file(file, device=device, dtype=dtype, info={"source": {"location": spec, "path": str(file)}})
    return load_source(*find_source(str(spec)), device=device, dtype=dtype)


def load_source(
    model_entry: ModelEntry,
    source: WeightSource,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """A model with the weights of one manifest source (fetched, verified and cached as needed)."""
    from tinyvit.hub import cache_dir, fetch

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
        note = ""
        if cache_dir() in file.resolve().parents:  # our own converted copy went bad: fetch it afresh next time
            file.unlink(missing_ok=True)
            note = "; the cached file was removed, load again to fetch it afresh"
        raise WeightsError(f"{model_entry.name}:{source.tag}: {e}{note}") from e


# ---------------------------------------------------------------------------------------------
# Prediction


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """(WordNet id, names) of the 1000 ImageNet-1k classes, in class-index order."""
    text = (resources.files("tinyvit") / "imagenet1k_classes.txt").read_text(encoding="utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines())  # type: ignore[misc]


def class_names(model: VisionTransformer) -> list[str]:
    """Class names for the model's outputs: ImageNet-1k's for 1000-class models whose labels are
    not stated otherwise, else ``"class <i>"``."""
    info = getattr(model, "info", None)
    labels = getattr(info, "labels", None)
    n = model.config.num_classes
    if labels == "imagenet-1k" or (labels is None and n == 1000):
        return [name for _, name in imagenet_classes()]
    return [f"class {i}" for i in range(n)]


@dataclass(frozen=True)
class Prediction:
    """One image's result. A failed item (``errors="return"``) has ``error`` set and label -1."""

    input: str  # what was predicted, for reports: a path or a short description
    label: int = -1
    name: str = ""
    score: float = math.nan
    topk: list[tuple[int, str, float]] = field(default_factory=list)
    scores: torch.Tensor | None = field(default=None, repr=False)  # (num_classes,) probabilities
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """mmpretrain's ``inference_model`` keys, plus ``topk``, ``input`` and ``error``."""
        return {
            "input": self.input,
            "pred_label": self.label,
            "pred_score": self.score,
            "pred_class": self.name,
            "pred_scores": None if self.scores is None else self.scores.tolist(),
            "topk": [{"label": i, "name": n, "score": p} for i, n, p in self.topk],
            "error": self.error,
        }


_MODELS: dict[tuple, VisionTransformer] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(spec: str | os.PathLike, device=None, dtype=None) -> VisionTransformer:
    """A loaded model, shared within the process per (spec, device, dtype)."""
    key = (os.fspath(spec), str(device), str(dtype))
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load(spec, device=device, dtype=dtype)
        return _MODELS[key]


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (by extension, case-insensitive), recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and not p.is_dir())


def predict(
    images: Any,
    model: str | os.PathLike | VisionTransformer = "vit-base-p32-384",
    *,
    top_k: int = 5,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    errors: str = "raise",
    fast: bool = False,
    progress: bool | None = None,
) -> Prediction | list[Prediction]:
    """Classify images: one input gives one :class:`Prediction`; a list, or a folder path, a list.

    ``images``: a path, bytes, binary file, PIL image, H×W×3 uint8 array or 3×H×W uint8 tensor; a
    list of those; or a folder (its image files, recursively, sorted). ``model``: a zoo name,
    ``"name:tag"``, a weights file, or a loaded model (loaded models are cached per process).
    ``errors="raise"`` stops at the first bad image with :class:`tinyvit.ImageError`;
    ``errors="return"`` returns a failed :class:`Prediction` for it and goes on with the rest.
    ``progress``: a progress bar on stderr (default: for more than one batch).
    """
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    if top_k < 1 or batch_size < 1:
        raise ValueError("top_k and batch_size must be >= 1")
    single = not isinstance(images, (list, tuple))
    if single and isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        items: Sequence[Any] = image_files(Path(images))
        single = False
    else:
        items = [images] if single else images

    net = model if isinstance(model, torch.nn.Module) else cached_model(model, device, dtype)
    spec = resolve_spec(net)
    names = class_names(net)
    param = next(net.parameters())
    k = min(top_k, len(names))
    show = progress if progress is not None else len(items) > batch_size
    bar = None
    if show:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), unit="img", file=sys.stderr, desc="predict")

    results: list[Prediction] = []
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        tensors, slots = [], []
        for image in batch:
            try:
                tensors.append(preprocess_one(image, spec, fast=fast))
                slots.append(len(results))
                results.append(Prediction(input=describe_input(image).strip("'")))
            except ImageError as e:
                if errors == "raise":
                    raise
                results.append(Prediction(input=describe_input(image).strip("'"), error=str(e)))
        if tensors:
            x = torch.stack(tensors).to(device=param.device, dtype=param.dtype)
            with torch.inference_mode():
                probs = net(x).float().softmax(dim=-1)
            top_p, top_i = probs.topk(k, dim=-1)
            for slot, p, tp, ti in zip(slots, probs, top_p.tolist(), top_i.tolist(), strict=True):
                topk = [(i, names[i], s) for i, s in zip(ti, tp, strict=True)]
                results[slot] = Prediction(results[slot].input, ti[0], names[ti[0]], tp[0], topk, p)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return results[0] if single else results
