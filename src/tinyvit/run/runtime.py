"""Runtime choices: which device, which dtype (and the one rule for ``fast``), and the models a
process keeps loaded (a small LRU cache), so that asking for the same model twice loads it once.

What users type (``"cuda:1"``, ``"bf16"``) is parsed here into torch values, with one-line errors
when a device is not there.
"""

from __future__ import annotations

import collections
import os
import threading
from dataclasses import replace

import torch

from tinyvit.core.errors import TinyViTError
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.cpu import apply_cpu_path
from tinyvit.run.options import ModelOptions, canonical_dtype
from tinyvit.weights._builder import load_model, resolve_preprocess
from tinyvit.weights.specs import ModelSpec, PathSpec, parse_spec

__all__ = [
    "MODEL_CACHE_SIZE",
    "cached_model",
    "clear_model_cache",
    "fast_dtype",
    "model_for",
    "native_bf16_cpu",
    "parse_device",
    "parse_dtype",
]

MODEL_CACHE_SIZE = 4  # models kept loaded per process, least recently used dropped first


def parse_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """``torch.bfloat16``, ``"bf16"``, ``"float16"``, ``"fp32"``… → a torch dtype (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        if dtype is not None and not dtype.is_floating_point:
            raise TinyViTError(f"dtype {dtype} is not a floating-point type")
        return dtype
    return getattr(torch, canonical_dtype(dtype))


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


# ---------------------------------------------------------------------------------------------
# Models shared within a process


_MODELS: collections.OrderedDict[tuple, VisionTransformer] = collections.OrderedDict()
_MODELS_LOCK = threading.Lock()


def cached_model(spec: str | os.PathLike | ModelSpec, options: ModelOptions | None = None) -> VisionTransformer:
    """A loaded model, shared within the process per (spec, options); at most
    :data:`MODEL_CACHE_SIZE` are kept. A local file is known by its size and modification time
    too: written again (``convert``, ``fit``), it is loaded again.

    On the CPU, the model's linear layers run on this CPU's fastest GEMM path (:mod:`tinyvit.run.cpu`:
    measured once per machine, the weights prepacked in place); with ``exact``, on torch's reference
    kernels, bit-identical to timm."""
    o = options or ModelOptions()
    parsed, device, dtype = parse_spec(spec), parse_device(o.device), parse_dtype(o.dtype)
    preprocess = None if o.preprocess is None else resolve_preprocess(o.preprocess)
    key = (parsed, str(device), str(dtype), o.labels, preprocess, o.arch, o.exact, _stamp(parsed))
    with _MODELS_LOCK:
        model = _MODELS.get(key)
        if model is None:
            model = load_model(parsed, device=device, dtype=dtype, labels=o.labels, preprocess=preprocess,
                               arch=o.arch_arg)  # fmt: skip
            apply_cpu_path(model, exact=o.exact, after=1)  # packed from the second forward pass on
            _MODELS[key] = model
            while len(_MODELS) > MODEL_CACHE_SIZE:
                _MODELS.popitem(last=False)
        _MODELS.move_to_end(key)
        return model


def _stamp(spec: ModelSpec) -> tuple[int, int] | None:
    """(size, mtime) of a local checkpoint file; None for anything else."""
    if isinstance(spec, PathSpec) and spec.path.is_file():
        st = spec.path.stat()
        return st.st_size, st.st_mtime_ns
    return None


def clear_model_cache() -> None:
    """Forget the models :func:`cached_model` keeps (they are freed once nothing else holds them)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def model_for(
    model: str | os.PathLike | ModelSpec | VisionTransformer, options: ModelOptions | None = None
) -> VisionTransformer:
    """The model to run. A spec is loaded (and cached) as ``options`` say; with ``fast`` and no
    dtype, in the fast dtype of the device (:func:`fast_dtype`). A loaded model is used as it is: a
    ``device`` or ``dtype`` it does not have is refused rather than silently ignored, as are
    ``labels``, ``preprocess`` and ``arch`` (which describe weights being loaded)."""
    o = options or ModelOptions()
    if not isinstance(model, torch.nn.Module):
        if o.fast and o.dtype is None:
            fast = fast_dtype(o.device)
            o = replace(o, dtype=None if fast is None else str(fast))
        return cached_model(model, o)
    if o.describes_weights:
        raise TinyViTError("labels=, preprocess= and arch= apply to a model given by name or path, not a loaded model")
    param = next(model.parameters())
    want_device, want_dtype = parse_device(o.device), parse_dtype(o.dtype)
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
