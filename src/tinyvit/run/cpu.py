"""The fastest GEMM path this CPU has, measured once and remembered.

A ViT spends nearly all its time in its linear layers. torch multiplies them on the CPU with MKL
(``default``: what ``F.linear`` runs, timm's kernels, bit for bit); torch also ships oneDNN, which
multiplies by a weight prepacked into its own layout (``onednn``, :mod:`tinyvit.models._linear`).
Which is faster is the CPU's business (MKL runs AVX2 kernels on AMD processors; oneDNN chooses by
instruction set), so it is measured, never guessed from a vendor name: ViT-shaped GEMMs
(197 and 1160 × 768 → 3072) through each path, in alternating rounds, the best of each (the CPU's
capability: on a shared machine, the slower rounds measure the neighbours). The figures are kept in
``$HF_HOME/tinyvit/cpu_gemm.json`` per CPU model, torch version, thread count and dtype, so a
machine pays for the measurement (0.3-0.6 s on 2 cores) once, at its first model load.

``TINYVIT_CPU_GEMM=default`` or ``=onednn`` forces a path (one that is not available falls back to
``default``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import platform
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import atomic_path
from tinyvit.models._linear import onednn_available, pack_linears, prepack

__all__ = [
    "GemmChoice", "apply_cpu_path", "available_paths", "cache_file", "cpu_summary", "gemm_choice", "isa_caps",
    "measure_paths",
]  # fmt: skip

log = logging.getLogger("tinyvit")

PATHS = ("default", "onednn")  # the first is the reference (timm's kernels)
LABELS = {"default": "torch F.linear", "onednn": "oneDNN prepacked"}
MARGIN = 1.05  # another path is chosen only when it is at least this much faster than the default
# M × K → N: ViT-B's first MLP layer on one image at 224 px and on a batch of 8 at 384 px (B/32);
# BLAS libraries pick other kernels (and threading) for few rows and for many
SHAPES = ((197, 768, 3072), (1160, 768, 3072))
ROUNDS = 2
ENV = "TINYVIT_CPU_GEMM"
CACHE_FORMAT = 1

_CHOICES: dict[str, GemmChoice] = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class GemmChoice:
    """The path chosen for one dtype on this CPU, and the GFLOP/s each path reached."""

    dtype: str
    path: str
    gflops: dict[str, float]
    how: str  # "measured", "cached", "forced" or "only path"

    def describe(self) -> str:
        """E.g. ``"float32 GEMM: oneDNN prepacked, 478 GFLOP/s measured; torch F.linear (MKL) 203"``."""
        others = "; ".join(f"{self.label(p)} {g:.0f}" for p, g in self.gflops.items() if p != self.path)
        mine = f", {self.gflops[self.path]:.0f} GFLOP/s" if self.path in self.gflops else ""
        return f"{self.dtype} GEMM: {self.label(self.path)}{mine} ({self.how})" + (f"; {others}" if others else "")

    def label(self, path: str) -> str:
        """A path's name as people know it: torch's fp32 ``F.linear`` is MKL's GEMM where torch has MKL."""
        mkl = path == "default" and self.dtype == "float32" and torch.backends.mkl.is_available()
        return LABELS[path] + (" (MKL)" if mkl else "")


def available_paths(dtype: torch.dtype = torch.float32) -> tuple[str, ...]:
    """The GEMM paths this torch has on the CPU for ``dtype``; ``default`` always."""
    return PATHS if onednn_available(dtype) else PATHS[:1]


def machine_key(dtype: torch.dtype) -> str:
    """What the measurement depends on: CPU model, torch version, threads, dtype, and the instruction
    sets the libraries were told to stop at (:func:`isa_caps`), if any."""
    caps = "".join(f" | {c}" for c in isa_caps())
    return f"{cpu_model()} | torch {torch.__version__} | {torch.get_num_threads()} threads | {_name(dtype)}{caps}"


# The variables with which MKL, oneDNN and torch's own kernels are told to use no instruction set
# above one (e.g. ``MKL_ENABLE_INSTRUCTIONS=AVX2``: MKL's kernels as it runs them on AMD processors)
ISA_VARIABLES = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")


def isa_caps() -> list[str]:
    """``NAME=value`` for each of :data:`ISA_VARIABLES` set in the environment."""
    return [f"{v}={os.environ[v]}" for v in ISA_VARIABLES if os.environ.get(v)]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; elsewhere what ``platform`` says)."""
    info = Path("/proc/cpuinfo")
    lines = info.read_text(errors="replace").splitlines() if info.is_file() else []  # Linux; else platform's
    for line in lines:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cache_file() -> Path:
    """Where the measured figures are kept: ``$HF_HOME/tinyvit/cpu_gemm.json``."""
    from tinyvit.weights._hub import cache_dir

    return cache_dir() / "cpu_gemm.json"


def measure_paths(
    dtype: torch.dtype = torch.float32, paths: tuple[str, ...] | None = None,
    shapes: tuple[tuple[int, int, int], ...] | None = None, rounds: int | None = None,
) -> dict[str, float]:  # fmt: skip
    """GFLOP/s of each path over ``shapes`` (default :data:`SHAPES`): every GEMM in alternating
    rounds, the best time of each, the flops of all over the sum of those times."""
    paths, shapes, rounds = paths or available_paths(dtype), shapes or SHAPES, rounds or ROUNDS
    seconds, flops = dict.fromkeys(paths, 0.0), 0
    for m, k, n in shapes:
        for p, t in _best_times(dtype, paths, (m, k, n), rounds).items():
            seconds[p] += t
        flops += 2 * m * k * n
    return {p: float(f"{flops / t / 1e9:.4g}") for p, t in seconds.items()}


def _best_times(dtype: torch.dtype, paths: tuple[str, ...], shape: tuple[int, int, int], rounds: int) -> dict:
    m, k, n = shape
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=gen).to(dtype)
    w, b = (torch.randn(n, k, generator=gen) * 0.02).to(dtype), torch.zeros(n, dtype=dtype)
    calls = {p: _gemm(p, x, w, b) for p in paths}
    times: dict[str, list[float]] = {p: [] for p in calls}
    with torch.inference_mode():
        for call in calls.values():
            call()  # warm up: first-call dispatch and allocation
        for _ in range(rounds):
            for p, call in calls.items():
                start = time.perf_counter()
                call()
                times[p].append(time.perf_counter() - start)
    return {p: min(t) for p, t in times.items()}


def _gemm(path: str, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> Callable[[], torch.Tensor]:
    if path == "default":
        return lambda: F.linear(x, w, b)
    if path == "onednn":
        packed = prepack(w)
        return lambda: torch.ops.mkldnn._linear_pointwise(x, packed, b, "none", [], "")
    raise TinyViTError(f"unknown CPU GEMM path {path!r}; the paths are {', '.join(PATHS)}")


def gemm_choice(dtype: torch.dtype | str = torch.float32) -> GemmChoice:
    """The path for ``dtype`` GEMMs on this CPU: forced by ``$TINYVIT_CPU_GEMM``, else measured
    once per machine (kept in :func:`cache_file`) and the fastest by :data:`MARGIN`."""
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    paths = available_paths(dtype)
    if forced := os.environ.get(ENV):
        if forced not in PATHS:
            raise TinyViTError(f"{ENV}={forced!r}: use one of {', '.join(PATHS)}")
        return GemmChoice(_name(dtype), forced if forced in paths else "default", {}, "forced")
    if len(paths) == 1:
        return GemmChoice(_name(dtype), "default", {}, "only path")
    key = machine_key(dtype)
    with _LOCK:
        if key not in _CHOICES:
            _CHOICES[key] = _cached_or_measured(key, dtype, paths)
        return _CHOICES[key]


def _cached_or_measured(key: str, dtype: torch.dtype, paths: tuple[str, ...]) -> GemmChoice:
    entries = _read_cache()
    entry = entries.get(key)
    if isinstance(entry, dict) and set(entry) == {"dtype", "path", "gflops", "how"} and entry["path"] in paths \
            and isinstance(entry["gflops"], dict) and set(entry["gflops"]) == set(paths):  # fmt: skip
        return GemmChoice(**{**entry, "how": "cached"})
    gflops = measure_paths(dtype, paths)
    best = max(gflops, key=gflops.get)
    path = best if gflops[best] >= MARGIN * gflops["default"] else "default"
    choice = GemmChoice(_name(dtype), path, gflops, "measured")
    _write_cache(entries | {key: asdict(choice)})
    log.info("%s", choice.describe())
    return choice


def _read_cache() -> dict[str, dict]:
    file = cache_file()
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        log.warning("ignoring %s (%s); measuring again", file, e)
        return {}
    ok = isinstance(data, dict) and data.get("format") == CACHE_FORMAT and isinstance(data.get("choices"), dict)
    return data["choices"] if ok else {}


def _write_cache(entries: dict[str, dict]) -> None:
    file = cache_file()
    try:
        with atomic_path(file) as tmp:
            tmp.write_text(json.dumps({"format": CACHE_FORMAT, "choices": entries}, indent=1) + "\n")
    except OSError as e:  # a read-only cache: measured again by the next process, nothing else lost
        log.warning("could not write %s (%s)", file, e)


def apply_cpu_path(model: torch.nn.Module, exact: bool = False, after: int = 0) -> GemmChoice | None:
    """Put ``model`` on this CPU's fastest GEMM path (its linear layers prepacked in place) unless
    ``exact`` or it is not on the CPU; the choice made, or None when nothing was chosen. The
    choice is kept on the model as ``model.gemm``. With ``after``, the layers are packed when the
    model has run ``after`` forward passes (the runtime passes 1: packing costs about one copy of
    the weights, which a single image would not repay; a second batch does).

    Memory is not doubled: weights memory-mapped from a checkpoint (tinyvit loads safetensors so)
    are read once to be packed, then their pages are given back to the kernel one layer at a time,
    and the few tensors left in the file (norms, embeddings, the head) are copied out so that the
    mapping closes: the packed model holds what the mapped one did once its pages were read."""
    param = next(model.parameters(), None)
    if exact or param is None or param.device.type != "cpu" or param.dtype not in (torch.float32, torch.bfloat16):
        return None
    choice = gemm_choice(param.dtype)
    model.gemm = choice
    if choice.path == "onednn":
        _pack_later(model, after) if after else _pack(model)
    return choice


def _pack(model: torch.nn.Module) -> None:
    maps = _file_mappings()
    with torch.inference_mode(False):  # called from a forward pass in inference mode: normal tensors still
        pack_linears(model, release=lambda w: _drop_pages(w, maps))
        _copy_out_of_files(model, maps)


def _pack_later(model: torch.nn.Module, after: int) -> None:
    """Pack ``model`` as its forward pass number ``after + 1`` starts: a pre-hook on the block that
    holds its first linear layer (the parent of the module holding it), which every forward path
    (``forward``, ``extract_feat``, ``forward_trace``) calls before that layer, and which packing does
    not replace. The block, not the attention inside it: a block reads its parts (its LayerScale,
    which packing folds into the layer before it) before calling its attention."""
    names = dict(model.named_modules())
    linear = torch.nn.Linear
    holder_name = next((n for n, m in names.items() if m is not model and any(type(c) is linear for c in m.children())),
                       None)  # fmt: skip
    if holder_name is None:  # no linear layer below the top (where the head is): nothing worth packing
        return
    parent_name = holder_name.rpartition(".")[0]
    holder = names[parent_name] if parent_name else names[holder_name]
    lock, calls = threading.Lock(), [0]

    def hook(module: torch.nn.Module, args: tuple) -> None:
        with lock:
            calls[0] += 1
            if calls[0] == after + 1:
                handle.remove()
                _pack(model)

    handle = holder.register_forward_pre_hook(hook)


# ---------------------------------------------------------------------------------------------
# Memory-mapped weights (Linux): what /proc/self/maps says and madvise does


MADV_DONTNEED = 4
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _file_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's private read-only mappings of files (a safetensors file
    mapped by safetensors), from ``/proc/self/maps``; none elsewhere."""
    maps = Path("/proc/self/maps")
    if not maps.is_file():
        return []
    ranges = []
    for line in maps.read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[5].startswith("/") and parts[1] in ("r--p", "rw-p"):
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            ranges.append((lo, hi))
    return ranges


def _in_files(t: torch.Tensor, maps: list[tuple[int, int]]) -> tuple[int, int] | None:
    if t.is_mkldnn or t.device.type != "cpu" or not t.numel():
        return None
    start = t.data_ptr()
    end = start + t.numel() * t.element_size()
    return (start, end) if any(lo <= start and end <= hi for lo, hi in maps) else None


def _drop_pages(t: torch.Tensor, maps: list[tuple[int, int]]) -> None:
    """Give back the resident pages of a memory-mapped tensor no longer used (whole pages inside it
    only: the kernel reads them from the file again if they are ever touched)."""
    if (span := _in_files(t, maps)) is None or not hasattr(ctypes, "CDLL"):
        return
    lo, hi = -(-span[0] // PAGE) * PAGE, span[1] // PAGE * PAGE
    if hi > lo and ctypes.CDLL(None, use_errno=True).madvise(ctypes.c_void_p(lo), ctypes.c_size_t(hi - lo),
                                                               MADV_DONTNEED) != 0:  # fmt: skip
        log.debug("madvise failed (errno %d): pages kept", ctypes.get_errno())


def _copy_out_of_files(model: torch.nn.Module, maps: list[tuple[int, int]]) -> None:
    """Copy the model's tensors that still live in a file mapping into memory of their own."""
    with torch.no_grad():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if _in_files(p, maps) or p.is_inference():  # a model built in inference mode: normal tensors now
                    setattr(module, name, torch.nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
            for name, b in list(module.named_buffers(recurse=False)):
                if b is not None and _in_files(b, maps):
                    setattr(module, name, b.clone())


def cpu_summary(dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16)) -> dict:
    """What ``tinyvit models --cpu`` prints: the CPU, torch, the paths, and the choice per dtype."""
    choices = [gemm_choice(d) for d in dtypes]
    return {
        "cpu": f"{cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads"
        + "".join(f"; {c}" for c in isa_caps()),
        "paths": list(available_paths()),
        "choices": [asdict(c) for c in choices],
        "describe": [c.describe() for c in choices],
        "cache": str(cache_file()),
    }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
