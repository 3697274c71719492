"""Loading: weights by name, path or Hub repository → a model with its record; building a bare
architecture; resolving a preprocessing. (Running many images through a model: pipeline.py.)"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from tinyvit.conversion import read_weights
from tinyvit.errors import OfflineError, TinyViTError, WeightsError
from tinyvit.files import build_model, read_tensors, save
from tinyvit.hub import cache_dir, download_url, fetch_hf_hub, offline
from tinyvit.manifest import resolve
from tinyvit.model import VisionTransformer
from tinyvit.preprocessing import ImageInput, PreprocessSpec
from tinyvit.preprocessing import preprocess as preprocess_images
from tinyvit.record import Source, Weights, parse_labels

__all__ = ["cached_model", "download", "get_model", "load", "model_for", "preprocess", "resolve_preprocess"]

_SHA256_CHARS = set("0123456789abcdef")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}  # fmt: skip

LabelsArg = str | os.PathLike | Sequence[str] | None


# ---------------------------------------------------------------------------------------------
# Device and dtype


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bf16"``, ``"float16"``, ``"fp32"``… → a torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and not dtype.is_floating_point:
            raise TinyViTError(f"dtype {dtype} is not a floating-point type")
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise TinyViTError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")


def parse_device(device: torch.device | str | None) -> torch.device | None:
    """A device that exists here, or a :class:`TinyViTError` that says why not."""
    if device is None:
        return None
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise TinyViTError(f"invalid device {device!r} ({e})") from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise TinyViTError(f"device {str(device)!r} is not available: {why}")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise TinyViTError(f"device {str(device)!r} is not available: {torch.cuda.device_count()} CUDA GPU(s)")
    elif d.type == "mps" and not torch.backends.mps.is_available():
        raise TinyViTError(f"device {str(device)!r} is not available on this machine")
    elif d.type not in ("cpu", "cuda", "mps", "xpu", "meta"):
        raise TinyViTError(f"device {str(device)!r} is not supported")
    return d


# ---------------------------------------------------------------------------------------------
# Loading


def _preprocess_arg(preprocess: PreprocessSpec | str | None) -> PreprocessSpec | None:
    """An explicit spec, or ``"name[:tag]"``: preprocess like those zoo weights."""
    if preprocess is None or isinstance(preprocess, PreprocessSpec):
        return preprocess
    return resolve(preprocess).preprocess


def weights_file(record: Weights) -> Path:
    """A local, verified tinyvit/timm-layout safetensors file for zoo weights: fetched (and
    converted once into tinyvit's cache where the published file is in another layout)."""
    src = record.source
    if src.kind == "hub":
        path = fetch_hf_hub(str(src.repo_id), str(src.filename), revision=src.revision, sha256=src.sha256)
        assert path is not None
        if src.layout == "timm":
            return path
        blob = path.resolve().name  # the verified content's SHA-256 for LFS files: a new upload converts anew
        dst = _converted_path(record, blob)
        if not dst.is_file():
            sha = blob if len(blob) == 64 and set(blob) <= _SHA256_CHARS else None
            _convert_into_cache(path, dst, record, sha)
        return dst
    dst = _converted_path(record, src.sha256 or src.sha256_prefix or "")
    if dst.is_file():
        return dst
    what = f"{record.spec} ({src.url})"
    if offline():
        raise OfflineError(f"{what}: offline (HF_HUB_OFFLINE is set), and the converted file is not in the cache")
    # Each process downloads and converts into files of its own and renames the result into
    # place, so concurrent loads of the same model all succeed and leave one file.
    raw, actual = download_url(str(src.url), dst.parent, what)
    try:
        expected = src.sha256 or src.sha256_prefix
        if expected is None or not actual.startswith(expected):
            raise WeightsError(f"{what}: SHA-256 mismatch (expected {expected}…, got {actual}); nothing was kept")
        _convert_into_cache(raw, dst, record, actual)
    finally:
        raw.unlink(missing_ok=True)
    return dst


def _converted_path(record: Weights, key: str) -> Path:
    return cache_dir() / "converted" / str(record.name) / f"{record.tag}-{key}.safetensors"


def _convert_into_cache(raw: Path, dst: Path, record: Weights, sha256: str | None) -> None:
    """Rename a zoo file's tensors to timm's; the manifest's record (with the file's SHA-256) goes
    into the header."""
    state, _ = read_weights(raw, layout=record.source.layout, arch=record.config)
    save(dst, state, replace(record, source=replace(record.source, sha256=record.source.sha256 or sha256)))


def download(spec: str) -> Path:
    """Fetch (and verify, and convert where needed) weights into the cache, for offline use:
    a zoo ``name[:tag]`` or an ``hf-hub:owner/repo[@revision]``. Returns the local file."""
    if spec.startswith("hf-hub:"):
        return _fetch_hub_repo(spec)
    record = resolve(spec)
    try:
        return weights_file(record)
    except WeightsError as e:
        raise type(e)(f"{record.spec}: {e}") from e


def _fetch_hub_repo(spec: str) -> Path:
    """``hf-hub:owner/repo[@revision]`` → the local snapshot folder holding its ``model.safetensors``
    and, where the repository has them, ``config.json`` and ``preprocessor_config.json``."""
    repo_id, _, revision = spec.removeprefix("hf-hub:").partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise WeightsError(f"{spec!r}: expected hf-hub:owner/repo[@revision]")
    weights = fetch_hf_hub(repo_id, "model.safetensors", revision=revision or None)
    assert weights is not None
    for name in ("config.json", "preprocessor_config.json"):
        fetch_hf_hub(repo_id, name, revision=revision or None, optional=True)
    return weights.parent


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
    ``save_pretrained`` folder), or ``"hf-hub:owner/repo[@revision]"`` — a timm- or HF-layout ViT
    repository on the Hub. ``labels`` (a list, a file with one name per line or JSON, or
    ``"imagenet-1k"``) and ``preprocess`` (a :class:`PreprocessSpec`, or a zoo ``name[:tag]`` to
    preprocess like) state what a checkpoint does not say, or override it. ``dtype`` takes
    torch dtypes or ``"fp32"``, ``"bf16"``, ``"float16"``…
    """
    device, dtype = parse_device(device), parse_dtype(dtype)
    pre = _preprocess_arg(preprocess)
    if isinstance(spec, os.PathLike) or (isinstance(spec, str) and not spec.startswith("hf-hub:") and _is_path(spec)):
        state, record = read_weights(spec, labels=labels, preprocess=pre)
        return build_model(record, state, what=repr(os.fspath(spec)), device=device, dtype=dtype)
    if not isinstance(spec, str):
        raise TypeError(f"load() takes a name, a path or 'hf-hub:owner/repo', not {type(spec).__name__}")
    if spec.startswith("hf-hub:"):
        folder = _fetch_hub_repo(spec)
        state, record = read_weights(folder, labels=labels, preprocess=pre)
        repo_id, _, _ = spec.removeprefix("hf-hub:").partition("@")
        blob = (folder / "model.safetensors").resolve().name
        source = replace(
            record.source, kind="hub", repo_id=repo_id, filename="model.safetensors", revision=folder.name,
            sha256=record.source.sha256 or (blob if len(blob) == 64 else None), path=str(folder / "model.safetensors"),
        )  # fmt: skip
        return build_model(replace(record, source=source), state, what=spec, device=device, dtype=dtype)
    record = resolve(spec).with_overrides(categories=None if labels is None else parse_labels(labels), preprocess=pre)
    return load_weights(record, device=device, dtype=dtype)


def _is_path(spec: str) -> bool:
    return Path(spec).exists() or spec.endswith((".safetensors", ".pth", ".pt", ".bin", ".npz")) or os.sep in spec


def load_weights(
    record: Weights, *, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> VisionTransformer:
    """A model with the zoo weights ``record`` names (fetched, verified and cached as needed)."""
    try:
        file = weights_file(record)
    except OfflineError as e:
        raise OfflineError(
            f"{record.spec}: {e}. Fetch it once where the Hub can be reached (`tinyvit download {record.spec}`), "
            "or load a local copy by its path"
        ) from e
    record = replace(record, source=replace(record.source, path=str(file)))
    try:
        return build_model(record, read_tensors(file), what=repr(str(file)), device=device, dtype=dtype)
    except WeightsError as e:
        note = ""
        if cache_dir() in file.resolve().parents:  # our own converted copy went bad: fetch it afresh next time
            file.unlink(missing_ok=True)
            note = "; the cached file was removed, load again to fetch it afresh"
        raise WeightsError(f"{record.spec}: {e}{note}") from e


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
    record = resolve(name)
    record = replace(record, source=Source(kind="init", layout="timm"), metrics=None, tag=None, note=None)
    model = VisionTransformer(record.config, record).init_weights()
    return model.to(device=parse_device(device), dtype=parse_dtype(dtype)).eval()


# ---------------------------------------------------------------------------------------------
# Preprocessing


def resolve_preprocess(spec: str | PreprocessSpec | torch.nn.Module | Weights) -> PreprocessSpec:
    """A zoo name or ``"name:tag"`` (its weights' preprocessing), a spec, a record, or a loaded
    model (its record's preprocessing)."""
    if isinstance(spec, PreprocessSpec):
        return spec
    if isinstance(spec, str):
        return resolve(spec).preprocess  # type: ignore[return-value]
    record = spec if isinstance(spec, Weights) else getattr(spec, "weights", None)
    if isinstance(record, Weights) and record.preprocess is not None:
        return record.preprocess
    if isinstance(record, Weights):
        raise TinyViTError(
            f"{record.spec}: the checkpoint does not say how its images were preprocessed; pass preprocess= "
            "a PreprocessSpec or a zoo name to preprocess like (CLI: --preprocess-like NAME[:TAG], or --crop and "
            "friends)"
        )
    raise TinyViTError(
        f"cannot tell the preprocessing from a {type(spec).__name__}: pass a zoo name or a PreprocessSpec"
    )


def preprocess(
    images: ImageInput | Sequence[ImageInput],
    spec: str | PreprocessSpec | torch.nn.Module | Weights,
    *,
    fast: bool = False,
) -> torch.Tensor:
    """Images → the tensors the weights were evaluated with.

    One image gives (3, H, W) float32; a list or tuple gives (B, 3, H, W). ``spec`` is a zoo name,
    ``"name:tag"``, a :class:`PreprocessSpec`, a :class:`Weights` record or a loaded model.
    ``fast=True`` decodes JPEGs at a reduced scale first (Pillow's draft mode): much faster on big
    photos, no longer bit-exact (the benchmark reports by how much).
    """
    return preprocess_images(images, resolve_preprocess(spec), fast=fast)


# ---------------------------------------------------------------------------------------------
# Models shared within a process


_MODELS: dict[tuple, VisionTransformer] = {}
_MODELS_LOCK = threading.Lock()


def cached_model(
    spec: str | os.PathLike,
    device: torch.device | str | None = None,
    dtype: torch.dtype | str | None = None,
    *,
    labels: LabelsArg = None,
    preprocess: PreprocessSpec | str | None = None,
) -> VisionTransformer:
    """A loaded model, shared within the process per (spec, device, dtype, labels, preprocess)."""
    labels_key = tuple(labels) if isinstance(labels, (list, tuple)) else labels
    key = (os.fspath(spec), str(device), str(parse_dtype(dtype)), labels_key, preprocess)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load(spec, device=device, dtype=dtype, labels=labels, preprocess=preprocess)
        return _MODELS[key]


def model_for(
    model: str | os.PathLike | VisionTransformer, device: torch.device | str | None, dtype: torch.dtype | str | None
) -> VisionTransformer:
    """The model to run: loaded (and cached) from a spec, or a loaded one, which is used as it is —
    a ``device`` or ``dtype`` it does not have is refused rather than silently ignored."""
    if not isinstance(model, torch.nn.Module):
        return cached_model(model, device, dtype)
    param = next(model.parameters())
    want_device, want_dtype = parse_device(device), parse_dtype(dtype)
    if want_device is not None and (
        want_device.type != param.device.type or (want_device.index is not None and want_device != param.device)
    ):
        raise TinyViTError(
            f"the model is on {param.device}, not {want_device}: move it first (model.to({str(want_device)!r})) "
            "or pass the model by name"
        )
    if want_dtype is not None and want_dtype != param.dtype:
        raise TinyViTError(
            f"the model's weights are {param.dtype}, not {want_dtype}: convert them first (model.to({want_dtype})) "
            "or pass the model by name"
        )
    return model
