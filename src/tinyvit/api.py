"""The public functions: what ``import tinyvit`` offers (``tinyvit.load``, ``tinyvit.predict``, …).

Each is a thin adapter: specs are parsed by ``specs.py``, devices and dtypes by ``runtime.py``,
weights loaded by ``loading.py`` and images run by ``runner.py``. Nothing inside the package
imports this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tinyvit.images.decode import ImageInput
from tinyvit.images.inputs import check_paths, expand_inputs
from tinyvit.images.spec import PreprocessSpec
from tinyvit.images.transforms import preprocess as preprocess_images
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.runner import Embedding, Prediction, Runner, check_run_options
from tinyvit.run.runtime import model_for, parse_device, parse_dtype
from tinyvit.weights._builder import LabelsArg, bare_model, load_model, resolve_preprocess
from tinyvit.weights._hub import download as fetch_download
from tinyvit.weights.record import Weights
from tinyvit.weights.specs import parse_spec

__all__ = ["download", "embed", "embed_iter", "get_model", "load", "predict", "predict_iter", "preprocess"]

DEFAULT_MODEL = "vit-base-p32-384"
ModelArg = str | os.PathLike | VisionTransformer


def load(
    spec: str | os.PathLike,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    labels: LabelsArg = None,
    preprocess: PreprocessSpec | str | None = None,
) -> VisionTransformer:
    """A model with weights, in eval mode; ``model.weights`` is their record.

    ``spec`` is a zoo name or alias (its default weights), ``"name:tag"``, a local checkpoint
    (a tinyvit or timm ``.safetensors``, a timm / mmpretrain ``.pth``, a JAX ``.npz``, an HF
    ``save_pretrained`` folder), ``"hf-hub:owner/repo[@revision]"`` — a timm- or HF-layout ViT
    repository on the Hub — or an http(s) URL of a checkpoint file. ``labels`` (a list, a file with
    one name per line or JSON, or ``"imagenet-1k"``) and ``preprocess`` (a :class:`PreprocessSpec`,
    or a zoo ``name[:tag]`` to preprocess like) state what a checkpoint does not say, or override
    it. ``dtype`` takes torch dtypes or ``"fp32"``, ``"bf16"``, ``"float16"``…
    """
    device_, dtype_ = parse_device(device), parse_dtype(dtype)
    pre = None if preprocess is None else resolve_preprocess(preprocess)
    return load_model(parse_spec(spec), device=device_, dtype=dtype_, labels=labels, preprocess=pre)


def get_model(
    name: str,
    pretrained: bool = False,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
) -> VisionTransformer:
    """A zoo architecture in eval mode: randomly initialised (its record says so), or with its
    default weights (``pretrained=True``, the same as :func:`load`)."""
    if pretrained:
        return load(name, device=device, dtype=dtype)
    return bare_model(name).to(device=parse_device(device), dtype=parse_dtype(dtype))


def download(spec: str) -> Path:
    """Fetch (and verify, and convert where needed) weights into the cache, for offline use:
    a zoo ``name[:tag]``, an ``hf-hub:owner/repo[@revision]`` or a URL. Returns the local file."""
    return fetch_download(parse_spec(spec))


def preprocess(
    images: ImageInput | Sequence[ImageInput],
    spec: str | os.PathLike | PreprocessSpec | torch.nn.Module | Weights,
    *,
    fast: bool = False,
) -> torch.Tensor:
    """Images → the tensors the weights were evaluated with.

    One image gives (3, H, W) float32; a list or tuple gives (B, 3, H, W). ``spec`` is anything
    :func:`load` takes (a zoo name or ``"name:tag"``, a checkpoint file or folder,
    ``hf-hub:owner/repo``), a :class:`PreprocessSpec`, a :class:`Weights` record or a loaded model.
    ``fast=True`` decodes JPEGs at a reduced scale first (Pillow's draft mode): much faster on big
    photos, no longer bit-exact (the benchmark reports by how much).
    """
    return preprocess_images(images, resolve_preprocess(spec), fast=fast)


# ---------------------------------------------------------------------------------------------
# Many images: adapters over the runner


def _stream(images: Any, model: ModelArg, runner_args: dict, run: dict, load: dict) -> Iterator[Any]:
    """The items first (checked before any weights are fetched), then the model, then the runner."""
    check_run_options(batch_size=run["batch_size"], errors=run["errors"], top_k=runner_args.get("top_k", 1))
    items, _ = expand_inputs(images)
    if run["errors"] == "raise":
        check_paths(items)
    net = model_for(model, **load, fast=runner_args["fast"])
    yield from Runner(net, **runner_args).stream(items, **run)


def predict_iter(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    top_k: int = 5,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    errors: str = "raise",
    fast: bool = False,
    preprocess: PreprocessSpec | str | None = None,
    workers: int | None = None,
    progress: bool | str = False,
) -> Iterator[Prediction]:
    """Classify images, yielding one :class:`Prediction` per image, in input order, as each batch
    finishes. Arguments as :func:`predict`; ``workers``: decoding threads (default: one per core,
    at most 16)."""
    runner_args = {"task": "classify", "top_k": top_k, "preprocess": preprocess, "fast": fast}
    run = {"batch_size": batch_size, "workers": workers, "errors": errors, "progress": progress}
    return _stream(images, model, runner_args, run, {"device": device, "dtype": dtype})


def predict(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    top_k: int = 5,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    errors: str = "raise",
    fast: bool = False,
    preprocess: PreprocessSpec | str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> Prediction | list[Prediction]:
    """Classify images: one input gives one :class:`Prediction`; a list, or a folder path, a list.

    ``images``: a path, bytes, binary file, PIL image, array or tensor; a list of those; or a
    folder (its image files, recursively, sorted). ``model``: a zoo name or alias, ``"name:tag"``,
    a checkpoint, ``"hf-hub:owner/repo"``, or a loaded model (models loaded by name are cached per
    process). ``errors="raise"`` stops at the first bad image with :class:`tinyvit.ImageError`;
    ``errors="return"`` returns a failed :class:`Prediction` for it and goes on with the rest.
    ``fast=True``: JPEGs decoded at reduced scale and, for models given by name, the fastest
    weights dtype of the device (bfloat16 on CPUs that multiply it natively, float16 on CUDA); not
    bit-exact. ``preprocess``: a :class:`PreprocessSpec` or zoo ``name[:tag]`` that overrides the
    weights'. ``progress``: a progress bar on stderr (default: for more than one batch).
    """
    items, single = expand_inputs(images)
    show = progress if progress is not None else len(items) > batch_size
    results = list(
        predict_iter(
            images if single else items, model, top_k=top_k, batch_size=batch_size, device=device, dtype=dtype,
            errors=errors, fast=fast, preprocess=preprocess, workers=workers, progress=show,
        )
    )  # fmt: skip
    return results[0] if single else results


def embed_iter(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    normalize: bool = False,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    errors: str = "raise",
    fast: bool = False,
    preprocess: PreprocessSpec | str | None = None,
    workers: int | None = None,
    progress: bool | str = False,
) -> Iterator[Embedding]:
    """The class-token feature (``model.extract_feat``, float32 (D,)) of each image, in input
    order, as each batch finishes; ``normalize=True`` scales each to unit L2 norm."""
    runner_args = {"task": "embed", "normalize": normalize, "preprocess": preprocess, "fast": fast}
    run = {"batch_size": batch_size, "workers": workers, "errors": errors, "progress": progress}
    return _stream(images, model, runner_args, run, {"device": device, "dtype": dtype})


def embed(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    normalize: bool = False,
    batch_size: int = 8,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    fast: bool = False,
    preprocess: PreprocessSpec | str | None = None,
    workers: int | None = None,
    progress: bool | None = None,
) -> torch.Tensor:
    """Images → their class-token features: (D,) for one image, (N, D) float32 for a list or a
    folder. A bad image raises :class:`tinyvit.ImageError` (:func:`embed_iter` with
    ``errors="return"`` goes on instead, and ``tinyvit embed -o`` writes a file)."""
    items, single = expand_inputs(images)
    show = progress if progress is not None else len(items) > batch_size
    rows = [
        e.vector
        for e in embed_iter(
            images if single else items, model, normalize=normalize, batch_size=batch_size, device=device,
            dtype=dtype, errors="raise", fast=fast, preprocess=preprocess, workers=workers, progress=show,
        )
    ]  # fmt: skip
    return rows[0] if single else torch.stack(rows)  # type: ignore[arg-type]
