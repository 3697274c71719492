"""The public functions: what ``import tinyvit`` offers (``tinyvit.load``, ``tinyvit.predict``, …).

Each is a thin adapter: the model options (``device``, ``dtype``, ``fast``, ``labels``,
``preprocess``, ``arch``: :class:`~tinyvit.run.options.ModelOptions`, passed as keyword arguments
or as ``options=``) are checked once, specs parsed by ``weights/specs.py``, weights loaded by
``weights/_builder.py`` (through ``run/runtime.py``'s per-process cache) and images run by
``run/runner.py``. Nothing below this layer imports it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tinyvit.images.decode import ImageInput
from tinyvit.images.inputs import check_paths, expand_inputs
from tinyvit.images.spec import PreprocessSpec
from tinyvit.images.transforms import preprocess as preprocess_images
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import DEFAULT_MODEL, ModelOptions
from tinyvit.run.runner import Embedding, Prediction, check_run_options
from tinyvit.run.runtime import parse_device, parse_dtype
from tinyvit.run.session import runner_for
from tinyvit.weights._builder import bare_model, load_model, resolve_preprocess
from tinyvit.weights._builder import download as fetch_download
from tinyvit.weights.record import Weights
from tinyvit.weights.specs import parse_spec

__all__ = [
    "download", "embed", "embed_iter", "embed_text", "get_model", "load", "predict", "predict_iter", "preprocess",
]  # fmt: skip

ModelArg = str | os.PathLike | VisionTransformer


def load(spec: str | os.PathLike, *, options: ModelOptions | None = None, **model_options: Any) -> VisionTransformer:
    """A model with weights, in eval mode; ``model.weights`` is their record.

    ``spec`` is a zoo name or alias (its default weights), ``"name:tag"``, a local checkpoint
    (a tinyvit or timm ``.safetensors``, a timm / mmpretrain ``.pth``, a JAX ``.npz``, an HF
    ``save_pretrained`` folder), ``"hf-hub:owner/repo[@revision]"`` — a timm- or HF-layout ViT
    repository on the Hub — or an http(s) URL of a checkpoint file. ``model_options`` (or
    ``options``): ``device``, ``dtype`` (torch dtypes or ``"fp32"``, ``"bf16"``, ``"float16"``…),
    ``labels``, ``preprocess`` and ``arch``, as :class:`~tinyvit.run.options.ModelOptions` says.
    """
    o = ModelOptions.of(options, **model_options)
    pre = None if o.preprocess is None else resolve_preprocess(o.preprocess)
    return load_model(parse_spec(spec), device=parse_device(o.device), dtype=parse_dtype(o.dtype), labels=o.labels,
                      preprocess=pre, arch=o.arch_arg)  # fmt: skip


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


def _stream(
    images: Any, model: ModelArg, o: ModelOptions, *, task: str, top_k: int = 5, normalize: bool = False,
    batch_size: int, workers: int | None, errors: str, progress: bool | str,
) -> Iterator[Any]:
    """The items first (checked before any weights are fetched), then the model (and, for
    ``o.classes``, its text side), then the runner."""
    check_run_options(batch_size=batch_size, errors=errors, top_k=top_k)
    items, _ = expand_inputs(images)
    if errors == "raise":
        check_paths(items)
    runner = runner_for(model, o, task=task, top_k=top_k, normalize=normalize, progress=bool(progress))
    yield from runner.stream(items, batch_size=batch_size, workers=workers, errors=errors, progress=progress)


def predict_iter(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    top_k: int = 5,
    batch_size: int = 8,
    errors: str = "raise",
    workers: int | None = None,
    progress: bool | str = False,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> Iterator[Prediction]:
    """Classify images, yielding one :class:`Prediction` per image, in input order, as each batch
    finishes. Arguments as :func:`predict`; ``workers``: decoding threads (default: one per core,
    at most 16)."""
    o = ModelOptions.of(options, **model_options)
    return _stream(images, model, o, task="classify", top_k=top_k, batch_size=batch_size, workers=workers,
                   errors=errors, progress=progress)  # fmt: skip


def predict(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    top_k: int = 5,
    batch_size: int = 8,
    errors: str = "raise",
    workers: int | None = None,
    progress: bool | None = None,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> Prediction | list[Prediction]:
    """Classify images: one input gives one :class:`Prediction`; a list, or a folder path, a list.

    ``images``: a path, bytes, binary file, PIL image, array or tensor; a list of those; or a
    folder (its image files, recursively, sorted). ``model``: a zoo name or alias, ``"name:tag"``,
    a checkpoint, ``"hf-hub:owner/repo"``, or a loaded model (models loaded by name are cached per
    process). ``errors="raise"`` stops at the first bad image with :class:`tinyvit.ImageError`;
    ``errors="return"`` returns a failed :class:`Prediction` for it and goes on with the rest.
    ``progress``: a progress bar on stderr (default: for more than one batch). The model options
    (``device``, ``dtype``, ``fast``, ``labels``, ``preprocess``, ``arch``, ``classes``,
    ``templates``) as keyword arguments or ``options=``: see
    :class:`~tinyvit.run.options.ModelOptions`; ``preprocess`` applies to this call (a loaded
    model's too). With ``classes`` (a CLIP / SigLIP checkpoint with its text tower), the image is
    classified into them zero-shot, scored as the home library scores: CLIP a softmax over the
    classes, SigLIP independent sigmoids (which do not sum to 1).
    """
    items, single = expand_inputs(images)
    show = progress if progress is not None else len(items) > batch_size
    results = list(
        predict_iter(
            images if single else items, model, top_k=top_k, batch_size=batch_size, errors=errors, workers=workers,
            progress=show, options=ModelOptions.of(options, **model_options),
        )
    )  # fmt: skip
    return results[0] if single else results


def embed_iter(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    normalize: bool = False,
    batch_size: int = 8,
    errors: str = "raise",
    workers: int | None = None,
    progress: bool | str = False,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> Iterator[Embedding]:
    """The image embedding of each image (an embedding model's output; a classifier's feature
    before its head), float32 (D,), in input order, as each batch finishes; ``normalize=True``
    scales each to unit L2 norm. Other arguments as :func:`predict`."""
    o = ModelOptions.of(options, **model_options)
    return _stream(images, model, o, task="embed", normalize=normalize, batch_size=batch_size, workers=workers,
                   errors=errors, progress=progress)  # fmt: skip


def embed(
    images: Any,
    model: ModelArg = DEFAULT_MODEL,
    *,
    normalize: bool = False,
    batch_size: int = 8,
    workers: int | None = None,
    progress: bool | None = None,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> torch.Tensor:
    """Images → their image embeddings: (D,) for one image, (N, D) float32 for a list or a
    folder. A bad image raises :class:`tinyvit.ImageError` (:func:`embed_iter` with
    ``errors="return"`` goes on instead, and ``tinyvit embed -o`` writes a file)."""
    items, single = expand_inputs(images)
    show = progress if progress is not None else len(items) > batch_size
    rows = [
        e.vector
        for e in embed_iter(
            images if single else items, model, normalize=normalize, batch_size=batch_size, errors="raise",
            workers=workers, progress=show, options=ModelOptions.of(options, **model_options),
        )
    ]  # fmt: skip
    return rows[0] if single else torch.stack(rows)  # type: ignore[arg-type]


def embed_text(
    texts: str | Sequence[str],
    model: ModelArg,
    *,
    normalize: bool = False,
    batch_size: int = 256,
    progress: bool | None = None,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> torch.Tensor:
    """Texts → their text embeddings through a CLIP / SigLIP checkpoint's text tower: (E,) for one
    string, (N, E) float32 for a list — open_clip's ``encode_text``, transformers'
    ``get_text_features`` (with the padding its pipeline uses), tokenized as that library does.
    ``model``: a checkpoint with both towers (an open_clip folder or repository, a transformers
    ``CLIPModel`` / ``SiglipModel``), or an image tower loaded from one; ``normalize=True``: unit L2
    norm, as for images. A model without a text tower is refused in one line. ``progress``: a bar
    on stderr (default: for more than one batch). Needs the ``tinyvit[text]`` extra."""
    from tinyvit.run.zeroshot import text_encoder_for  # the text side: imported when text is asked for

    single = isinstance(texts, str)
    items = [texts] if single else list(texts)
    encoder = text_encoder_for(model, ModelOptions.of(options, **model_options))
    show = progress if progress is not None else len(items) > batch_size
    bar = None
    if show and sys.stderr.isatty():
        from huggingface_hub.utils import tqdm

        bar = tqdm(total=len(items), unit="text", desc="embed_text", file=sys.stderr)
    try:
        out = encoder(items, normalize=normalize, batch_size=batch_size, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    return out[0] if single else out
