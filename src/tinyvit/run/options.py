"""Choices a user makes about how to run, as typed values (no torch here): the dtype names, and
the server's options. Parsed and checked once, where they enter (the CLI, the Python API)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tinyvit.core.errors import TinyViTError
from tinyvit.images.spec import PreprocessSpec

__all__ = ["DTYPE_NAMES", "ServeOptions", "canonical_dtype"]

# Every spelling tinyvit accepts for a weights dtype → its canonical (torch) name.
DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}  # fmt: skip


def canonical_dtype(name: str) -> str:
    """``"bf16"``, ``"torch.float16"``, ``"FP32"``… → ``"bfloat16"``, ``"float16"``, ``"float32"``."""
    key = name.lower().removeprefix("torch.") if isinstance(name, str) else None
    if key not in DTYPE_NAMES:
        raise TinyViTError(f"unknown dtype {name!r}; use one of {', '.join(DTYPE_NAMES)}")
    return DTYPE_NAMES[key]


HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe can bind
ACCELERATORS = ("auto", "cpu", "cuda", "mps")
DEVICE_TYPES = ("cpu", "cuda", "mps")  # what a served model may run on


@dataclass(frozen=True)
class ServeOptions:
    """How ``tinyvit serve`` runs: where it listens, how it batches, what it accepts.

    ``batch_timeout``: seconds a worker waits for a batch to fill before running what it has.
    ``accelerator``: ``"auto"`` (CUDA or MPS when torch can use them, else CPU), ``"cpu"``,
    ``"cuda"`` or ``"mps"``; ``devices``: how many (``"auto"``: all); ``workers_per_device``:
    inference processes per device, each with its own copy of the model. ``device``, instead of
    ``accelerator``: as ``predict`` takes it (``"cpu"``, ``"cuda"``, ``"cuda:1"`` for that GPU
    alone, ``"mps"``). ``dtype``: ``None`` (float32) or a dtype name. ``labels`` (a class-names
    file, or ``"imagenet-1k"``) and ``preprocess`` (a :class:`PreprocessSpec`): what a checkpoint
    does not say, or overrides, as for ``predict``. ``top_k``: results per image unless a request
    asks otherwise. ``timeout``: seconds a request may wait for its answer (then 504).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    max_body_bytes: int = 32 * 2**20
    workers_per_device: int = 1
    accelerator: str = "auto"
    devices: int | str = "auto"
    device: str | None = None
    dtype: str | None = None
    labels: str | None = None
    preprocess: PreprocessSpec | None = None
    top_k: int = 5
    timeout: float = 30.0
    log_level: str = "warning"

    def __post_init__(self) -> None:
        if self.host not in HOSTS:
            raise ValueError(
                f"ServeOptions.host must be one of {', '.join(HOSTS)} (what LitServe binds), got {self.host!r}"
            )
        if not isinstance(self.port, int) or not 1024 <= self.port <= 65535:
            raise ValueError(f"ServeOptions.port must be from 1024 to 65535 (LitServe's range), got {self.port!r}")
        for name in ("max_batch_size", "max_body_bytes", "workers_per_device", "top_k"):
            self._positive_int(name)
        if not self.timeout > 0 or not 0 <= self.batch_timeout < self.timeout:
            raise ValueError("ServeOptions: need timeout > 0 and 0 <= batch_timeout < timeout")
        if self.accelerator not in ACCELERATORS:
            raise ValueError(
                f"ServeOptions.accelerator must be one of {', '.join(ACCELERATORS)}, got {self.accelerator!r}"
            )
        if self.devices != "auto":
            self._positive_int("devices")
        self._check_device()
        if self.labels is not None:
            object.__setattr__(self, "labels", os.fspath(self.labels))
        if self.preprocess is not None and not isinstance(self.preprocess, PreprocessSpec):
            raise ValueError(f"ServeOptions.preprocess must be a PreprocessSpec, got {type(self.preprocess).__name__}")
        if self.dtype is not None:
            try:
                object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
            except TinyViTError as e:
                raise ValueError(f"ServeOptions.dtype: {e}") from None

    def _check_device(self) -> None:
        if self.device is None:
            return
        kind, _, index = str(self.device).partition(":")
        if kind not in DEVICE_TYPES or (index and not index.isdigit()):
            raise ValueError(f"ServeOptions.device must be {', '.join(DEVICE_TYPES)} or cuda:N, got {self.device!r}")
        if self.accelerator not in ("auto", kind):
            raise ValueError(f"ServeOptions: device {self.device!r} and accelerator {self.accelerator!r} disagree")
        if index and self.devices != "auto":
            raise ValueError(f"ServeOptions: device {self.device!r} names one device; leave devices out")

    def _positive_int(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ServeOptions.{name} must be an int >= 1, got {value!r}")
