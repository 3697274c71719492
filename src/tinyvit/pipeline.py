"""Many images through one model: classification and embeddings.

Decoding and preprocessing run ahead of the model on a pool of threads (Pillow releases the GIL
while it decodes and resizes), a bounded number of batches ahead, so a folder of any size holds
only a few batches of tensors; the model runs batch after batch on the calling thread; results
come out in input order as each batch finishes (:func:`predict_iter`, :func:`embed_iter`). A bad
image becomes a failed result (``errors="return"``) and never stops or reorders the rest. The
pipeline changes when things happen, not what is computed: every image gives the same numbers as
it would alone.

``fast=True`` is the fastest path the hardware allows: JPEGs are decoded at reduced scale first
(Pillow's draft mode), and — for models loaded by name — the weights are bfloat16 where the CPU
multiplies bfloat16 natively (AVX512-BF16 or AMX) or float16 on a CUDA GPU. It is not bit-exact;
``benchmarks/bench_pipeline.py`` reports by how much.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import json
import math
import os
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tinyvit.api import model_for, parse_device, resolve_preprocess
from tinyvit.errors import ImageError, TinyViTError
from tinyvit.fsutil import atomic_path
from tinyvit.model import VisionTransformer
from tinyvit.preprocessing import PreprocessSpec, check_path, describe_input, preprocess_one
from tinyvit.record import Weights

__all__ = [
    "Embedding",
    "Prediction",
    "class_names",
    "embed",
    "embed_iter",
    "expand_inputs",
    "fast_dtype",
    "image_files",
    "predict",
    "predict_iter",
    "write_embeddings",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model is running


# ---------------------------------------------------------------------------------------------
# Results


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

    def __str__(self) -> str:
        """``Greater Swiss Mountain dog (0.56)``, or the error; ``repr`` shows everything."""
        return f"{self.name} ({self.score:.2f})" if self.ok else f"{self.input}: error: {self.error}"

    def to_dict(self, *, scores: bool = True) -> dict[str, Any]:
        """mmpretrain's ``inference_model`` keys, plus ``topk``, ``input`` and ``error``. A failed
        item has ``None`` where there is no number (valid JSON: no NaN)."""
        return {
            "input": self.input,
            "pred_label": self.label if self.ok else None,
            "pred_score": self.score if self.ok else None,
            "pred_class": self.name if self.ok else None,
            **({"pred_scores": None if self.scores is None else self.scores.tolist()} if scores else {}),
            "topk": [{"label": i, "name": n, "score": p} for i, n, p in self.topk],
            "error": self.error,
        }


@dataclass(frozen=True)
class Embedding:
    """One image's class-token feature (``extract_feat``), or the error that prevented it."""

    input: str
    vector: torch.Tensor | None = field(default=None, repr=False)  # (D,) float32
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def class_names(model: VisionTransformer) -> list[str]:
    """The class names of the model's outputs: its record's, else ``"class <i>"``."""
    record = model.weights
    if record is not None and record.categories is not None:
        return list(record.categories)
    return [f"class {i}" for i in range(model.config.num_classes)]


# ---------------------------------------------------------------------------------------------
# Inputs


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (by extension, case-insensitive), recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def expand_inputs(images: Any) -> tuple[list[Any], bool]:
    """``images`` → (the items, whether a single image was given). A folder gives its image files
    (an empty folder is an error); a list or tuple is taken as it is."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("no images given (an empty list)")
        return list(images), False
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        files = image_files(Path(images))
        if not files:
            raise ImageError(
                f"{os.fspath(images)!r}: no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
        return list(files), False
    return [images], True


def check_inputs(items: Sequence[Any], errors: str) -> None:
    """Before any weights are fetched: with ``errors="raise"``, a missing path is an error now."""
    if errors == "raise":
        for item in items:
            if isinstance(item, (str, os.PathLike)):
                check_path(item)


def _label(image: Any) -> str:
    return describe_input(image).strip("'")


# ---------------------------------------------------------------------------------------------
# Hardware


def native_bf16_cpu() -> bool:
    """Whether this CPU multiplies bfloat16 natively (AVX512-BF16 or AMX), where bf16 weights
    beat fp32; elsewhere bf16 is emulated and slower than fp32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def fast_dtype(device: torch.device | str | None) -> torch.dtype | None:
    """The weights dtype of ``fast=True`` on ``device``: float16 on CUDA, bfloat16 on a CPU with
    native bfloat16, else None (float32: on other CPUs it is the fastest)."""
    d = parse_device(device) or torch.device("cpu")
    if d.type == "cuda":
        return torch.float16
    if d.type == "cpu" and native_bf16_cpu():
        return torch.bfloat16
    return None


def default_workers(device: torch.device) -> int:
    """Decoding threads: one per core, at most 16. They decode only while the prefetch window has
    room, so when the model is the bottleneck they wait and take nothing from torch; when decoding
    is (12-megapixel photos), they share the cores with torch's threads, as timm's DataLoader
    workers do (measured on 2 cores: 1.13x the throughput of one thread on 12 MP JPEGs, 1.05x on
    ImageNet-size ones). On a GPU the cores have nothing else to do."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 16))


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None elsewhere (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    return getattr(ctypes.CDLL(None), "malloc_trim", None)


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS. Per-image buffers are allocated on several threads
    and freed on another; glibc keeps such freed pages, so without this a long run's peak memory
    creeps up batch after batch (measured: 2,000 ImageNet-size JPEGs peaked at 1.43x the memory of
    one image; with a trim per batch, 1.21-1.27x, at no measurable cost)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


# ---------------------------------------------------------------------------------------------
# The pipeline


@dataclass(frozen=True)
class _Batch:
    inputs: list[str]  # one per item of the batch
    errors: list[str | None]  # one per item
    x: torch.Tensor | None  # (n_ok, 3, H, W) for the items without an error, on the device


def _decode(image: Any, spec: PreprocessSpec, fast: bool) -> torch.Tensor | ImageError:
    try:
        return preprocess_one(image, spec, fast=fast)
    except ImageError as e:
        return e


def _batches(
    items: Sequence[Any],
    spec: PreprocessSpec,
    *,
    batch_size: int,
    fast: bool,
    errors: str,
    device: torch.device,
    dtype: torch.dtype,
    workers: int | None,
) -> Iterator[_Batch]:
    """Preprocessed batches in input order, decoded on a thread pool at most
    ``PREFETCH_BATCHES`` batches ahead of the consumer."""
    cuda = device.type == "cuda"
    pool = ThreadPoolExecutor(max_workers=workers or default_workers(device), thread_name_prefix="tinyvit-decode")
    window: collections.deque[Future] = collections.deque()
    it = iter(items)
    ahead = (PREFETCH_BATCHES + 1) * batch_size

    def fill() -> None:
        while len(window) < ahead:
            try:
                image = next(it)
            except StopIteration:
                return
            window.append(pool.submit(_decode, image, spec, fast))
            window[-1].label = _label(image)  # type: ignore[attr-defined]

    try:
        fill()
        while window:
            inputs, errs, tensors = [], [], []
            for _ in range(min(batch_size, len(window))):
                future = window.popleft()
                result = future.result()
                inputs.append(future.label)  # type: ignore[attr-defined]
                if isinstance(result, ImageError):
                    if errors == "raise":
                        raise result
                    errs.append(str(result))
                else:
                    errs.append(None)
                    tensors.append(result)
            fill()  # keep the pool busy while the model runs this batch
            x = None
            if tensors:
                x = torch.stack(tensors)
                if cuda:
                    x = x.pin_memory().to(device, dtype=dtype, non_blocking=True)
                else:
                    x = x.to(dtype=dtype)
            yield _Batch(inputs, errs, x)
            del tensors  # the per-image buffers, so that the trim can hand their pages back
            _release_free_memory()
    finally:
        for future in window:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)


@dataclass(frozen=True)
class _Options:
    """How to run the pipeline (the keyword arguments of predict_iter / embed_iter)."""

    batch_size: int = 8
    device: torch.device | str | None = None
    dtype: torch.dtype | str | None = None
    errors: str = "raise"
    fast: bool = False
    preprocess: PreprocessSpec | str | None = None
    workers: int | None = None
    progress: bool | str = False

    def __post_init__(self) -> None:
        if self.errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {self.errors!r}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


def _progress(total: int, show: bool | str, desc: str):
    """A progress bar on stderr (huggingface_hub's tqdm: HF_HUB_DISABLE_PROGRESS_BARS turns it
    off); ``show`` may be the bar's label."""
    if not show:
        return None
    from huggingface_hub.utils import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, desc=show if isinstance(show, str) else desc)


def _stream(
    images: Any,
    model: str | os.PathLike | VisionTransformer,
    opts: _Options,
    desc: str,
    make_forward: Callable[[VisionTransformer], Callable[[torch.Tensor], list]],
) -> Iterator[tuple[str, Any, str | None]]:
    """(input label, output or None, error or None) per image, in input order, batch by batch.
    ``make_forward(model)`` gives the function from a batch of tensors to one output per row."""
    items, _ = expand_inputs(images)  # the inputs first: before any weights are fetched
    check_inputs(items, opts.errors)
    dtype = opts.dtype
    if opts.fast and dtype is None and not isinstance(model, torch.nn.Module):
        dtype = fast_dtype(opts.device)
    net = model_for(model, opts.device, dtype)
    spec = resolve_preprocess(opts.preprocess if opts.preprocess is not None else net)
    forward = make_forward(net)
    param = next(net.parameters())
    bar = _progress(len(items), opts.progress, desc)
    try:
        for batch in _batches(
            items, spec, batch_size=opts.batch_size, fast=opts.fast, errors=opts.errors,
            device=param.device, dtype=param.dtype, workers=opts.workers,
        ):  # fmt: skip
            outputs = iter(forward(batch.x) if batch.x is not None else ())
            for label, err in zip(batch.inputs, batch.errors, strict=True):
                yield label, (next(outputs) if err is None else None), err
            if bar is not None:
                bar.update(len(batch.inputs))
    finally:
        if bar is not None:
            bar.close()


def _classifier(top_k: int) -> Callable[[VisionTransformer], Callable[[torch.Tensor], list]]:
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")

    def make(model: VisionTransformer) -> Callable[[torch.Tensor], list]:
        names = class_names(model)
        k = min(top_k, len(names))

        def forward(x: torch.Tensor) -> list[Prediction]:
            with torch.inference_mode():
                probs = model(x).float().softmax(dim=-1).cpu()
            top_p, top_i = probs.topk(k, dim=-1)
            return [
                Prediction("", ti[0], names[ti[0]], tp[0], [(i, names[i], s) for i, s in zip(ti, tp, strict=True)], p)
                for p, tp, ti in zip(probs, top_p.tolist(), top_i.tolist(), strict=True)
            ]

        return forward

    return make


def _embedder(normalize: bool) -> Callable[[VisionTransformer], Callable[[torch.Tensor], list]]:
    def make(model: VisionTransformer) -> Callable[[torch.Tensor], list]:
        def forward(x: torch.Tensor) -> list[torch.Tensor]:
            with torch.inference_mode():
                feats = model.extract_feat(x).float()
                if normalize:
                    feats = torch.nn.functional.normalize(feats, dim=-1)
            return list(feats.cpu())

        return forward

    return make


def predict_iter(
    images: Any,
    model: str | os.PathLike | VisionTransformer = "vit-base-p32-384",
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
    opts = _Options(batch_size, device, dtype, errors, fast, preprocess, workers, progress)
    for label, r, err in _stream(images, model, opts, "predict", _classifier(top_k)):
        yield Prediction(label, error=err) if err is not None else replace(r, input=label)


def predict(
    images: Any,
    model: str | os.PathLike | VisionTransformer = "vit-base-p32-384",
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
    ``fast=True``: see the module docstring. ``preprocess``: a :class:`PreprocessSpec` or zoo
    ``name[:tag]`` that overrides the weights'. ``progress``: a progress bar on stderr (default:
    for more than one batch).
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
    model: str | os.PathLike | VisionTransformer = "vit-base-p32-384",
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
    opts = _Options(batch_size, device, dtype, errors, fast, preprocess, workers, progress)
    for label, vector, err in _stream(images, model, opts, "embed", _embedder(normalize)):
        yield Embedding(label, vector, err)


def embed(
    images: Any,
    model: str | os.PathLike | VisionTransformer = "vit-base-p32-384",
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
    ``errors="return"`` goes on instead, and :func:`write_embeddings` writes a file)."""
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


# ---------------------------------------------------------------------------------------------
# Embedding files, written as they are computed


@dataclass(frozen=True)
class EmbeddingSummary:
    path: Path
    written: int  # rows with a feature
    failed: dict[int, str]  # row → why the image failed (its row is NaN)


def write_embeddings(
    embeddings: Iterable[Embedding],
    dst: str | os.PathLike,
    *,
    inputs: Sequence[str],
    dim: int,
    record: Weights | None,
    normalized: bool,
) -> EmbeddingSummary:
    """Write embeddings to ``dst`` (``.safetensors`` or ``.npy``) as they come, one row at a time
    into a memory-mapped file, so a large folder never holds all features in memory; ``dst``
    appears only when complete (an interrupted run leaves nothing).

    ``.safetensors``: ``embeddings`` (N, D) float32 and ``valid`` (N,) uint8 (0 for an image that
    failed; its row is NaN); the header's metadata holds ``tinyvit.inputs`` (a JSON list, row
    order), ``tinyvit.weights`` (the model's record), ``tinyvit.errors`` (row → error) and
    ``tinyvit.normalized``. ``.npy``: the (N, D) array, the same information in ``<dst>.json``.
    """
    dst = Path(dst)
    if dst.suffix not in (".safetensors", ".npy"):
        raise TinyViTError(f"{str(dst)!r}: embeddings are written to a .safetensors or .npy file")
    if dst.is_dir():
        raise TinyViTError(f"{str(dst)!r} is a folder; give the output file's path")
    n = len(inputs)
    failed: dict[int, str] = {}
    with atomic_path(dst, suffix=dst.suffix) as tmp:
        rows_file = tmp if dst.suffix == ".npy" else tmp.with_name(tmp.name + ".rows.npy")
        try:
            rows = np.lib.format.open_memmap(rows_file, mode="w+", dtype=np.float32, shape=(n, dim))
            count = 0
            for count, e in enumerate(embeddings, start=1):
                if count > n:
                    raise TinyViTError(f"more embeddings than the {n} inputs")
                if e.ok:
                    rows[count - 1] = e.vector.numpy()  # type: ignore[union-attr]
                else:
                    rows[count - 1] = np.nan
                    failed[count - 1] = str(e.error)
            if count != n:
                raise TinyViTError(f"{count} embeddings for {n} inputs")
            rows.flush()
            meta = {
                "tinyvit.inputs": json.dumps(list(inputs), ensure_ascii=False),
                "tinyvit.weights": "null" if record is None else record.to_json(),
                "tinyvit.errors": json.dumps({str(k): v for k, v in failed.items()}, ensure_ascii=False),
                "tinyvit.normalized": json.dumps(normalized),
            }
            if dst.suffix == ".npy":
                del rows
                sidecar = {k.removeprefix("tinyvit."): json.loads(v) for k, v in meta.items()}
                with atomic_path(dst.with_name(dst.name + ".json")) as side:
                    side.write_text(json.dumps(sidecar, ensure_ascii=False, indent=1))
            else:
                valid = np.ones(n, dtype=np.uint8)
                valid[list(failed)] = 0
                _write_safetensors(tmp, rows, valid, meta)
                del rows
        finally:
            if rows_file != tmp:
                rows_file.unlink(missing_ok=True)
    return EmbeddingSummary(dst, n - len(failed), failed)


def _write_safetensors(path: Path, rows: np.ndarray, valid: np.ndarray, metadata: dict[str, str]) -> None:
    """The safetensors format (an 8-byte little-endian header size, a JSON header, the raw bytes),
    copying the memory-mapped rows in chunks rather than building the file in memory."""
    n, dim = rows.shape
    size = n * dim * 4
    header = {
        "__metadata__": metadata,
        "embeddings": {"dtype": "F32", "shape": [n, dim], "data_offsets": [0, size]},
        "valid": {"dtype": "U8", "shape": [n], "data_offsets": [size, size + n]},
    }
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    chunk = max(1, (16 << 20) // max(dim * 4, 1))  # rows per 16 MB
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for start in range(0, n, chunk):
            f.write(np.ascontiguousarray(rows[start : start + chunk], dtype="<f4").tobytes())
        f.write(valid.tobytes())
