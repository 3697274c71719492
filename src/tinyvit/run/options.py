"""Choices a user makes, as typed values (no torch here): :class:`ModelOptions` — which model and
how to run it, the one bundle the Python API, evaluate, fit, serve, Ray and the CLI take — the
dtype names, and the server's options. Checked once, where they enter."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import TinyViTError
from tinyvit.images.spec import PreprocessSpec

__all__ = ["DEFAULT_MODEL", "DTYPE_NAMES", "ModelOptions", "ServeOptions", "canonical_dtype"]

DEFAULT_MODEL = "vit-base-p32-384"  # what predict, embed, fit and the CLI run when no model is named

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


@dataclass(frozen=True)
class ModelOptions:
    """Which model and how to run it — the options every entry point takes (as keyword arguments
    of :func:`tinyvit.predict` and the other public functions, as ``--device`` … on the command
    line, as a field of ``FitOptions`` and ``ServeOptions``, as the arguments of Ray's
    ``Classifier`` and ``Embedder``):

    * ``device``: ``"cpu"`` (the default), ``"cuda"``, ``"cuda:1"``, ``"mps"`` (a torch device too);
    * ``dtype``: the weights' dtype, ``"float32"`` (the default), ``"bf16"``, ``"float16"``… (a torch
      dtype too);
    * ``fast``: JPEGs decoded at reduced scale and, unless ``dtype`` says otherwise, the device's
      fast dtype (bfloat16 on CPUs that multiply it natively, float16 on CUDA); not bit-exact;
    * ``labels``: class names the checkpoint does not say, or that replace its own: a list, a file
      (one per line, or JSON), or ``"imagenet-1k"``;
    * ``preprocess``: a :class:`~tinyvit.images.spec.PreprocessSpec`, or a zoo ``name[:tag]`` to
      preprocess like, instead of what the checkpoint says;
    * ``arch``: what the checkpoint's tensors cannot show (the number of attention heads): a zoo or
      timm architecture name, ``"num_heads=6"`` / ``{"num_heads": 6}``, or a ``ViTConfig``;
    * ``classes``: zero-shot classification with a CLIP / SigLIP checkpoint's text tower: the class
      names (a list, or ``"imagenet"`` for ImageNet's 1,000 as open_clip names them);
      ``templates``: the prompts each class name goes into — one (``"a photo of a {}."``; default
      ``"This is a photo of {}."``, transformers' pipeline's), a list (their normalized embeddings
      averaged, open_clip's ``build_zero_shot_classifier``), or ``"openai"`` / ``"simple"``, open_clip's
      80 / 7 ImageNet templates. ``template=`` is taken for ``templates=``;
    * ``exact``: on the CPU, torch's reference GEMM kernels (timm's, bit for bit) instead of the
      fastest path this CPU has (:mod:`tinyvit.run.cpu`; within 1e-5 relative of float64 logits).

    ``labels``, ``preprocess`` and ``arch`` describe weights being loaded; a model already loaded
    refuses them.
    """

    device: str | None = None
    dtype: str | None = None
    fast: bool = False
    labels: str | tuple[str, ...] | None = None
    preprocess: PreprocessSpec | str | None = None
    arch: ViTConfig | str | tuple[tuple[str, Any], ...] | None = None
    exact: bool = False
    classes: str | tuple[str, ...] | None = None
    templates: str | tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.device is not None:
            object.__setattr__(self, "device", str(self.device))
        if self.dtype is not None:
            object.__setattr__(self, "dtype", canonical_dtype(str(self.dtype)))
        for name in ("fast", "exact"):
            if not isinstance(getattr(self, name), bool):
                raise TinyViTError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if isinstance(self.labels, Sequence) and not isinstance(self.labels, str):
            object.__setattr__(self, "labels", tuple(self.labels))
        elif isinstance(self.labels, os.PathLike):
            object.__setattr__(self, "labels", os.fspath(self.labels))
        if self.preprocess is not None and not isinstance(self.preprocess, (PreprocessSpec, str)):
            kind = type(self.preprocess).__name__
            raise TinyViTError(f"preprocess must be a PreprocessSpec or a zoo name to preprocess like, not {kind}")
        if isinstance(self.arch, dict):  # kept hashable: options key the models a process keeps loaded
            object.__setattr__(self, "arch", tuple(sorted(self.arch.items())))
        for name in ("classes", "templates"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                object.__setattr__(self, name, tuple(value))
                if not all(isinstance(v, str) and v.strip() for v in getattr(self, name)):
                    raise TinyViTError(f"{name}: every entry must be a non-empty string")
        if self.classes is not None and self.labels is not None:
            raise TinyViTError("classes= (zero-shot, through the text tower) and labels= (a classifier's names) "
                               "do not go together")  # fmt: skip
        prompts = (self.templates,) if isinstance(self.templates, str) else self.templates or ()
        if any("{}" not in t for t in prompts) and self.templates not in ("openai", "simple"):
            raise TinyViTError(f"templates {self.templates!r}: a template holds {{}} where the class name goes, or "
                               "is one of openai, simple")  # fmt: skip
        if self.templates is not None and self.classes is None:
            raise TinyViTError("templates= needs classes=: the templates make the classes' prompts")

    @classmethod
    def of(cls, options: ModelOptions | None = None, **given: Any) -> ModelOptions:
        """``options`` with the fields ``given`` as keyword arguments (None: not given) replaced;
        an unknown name is a ``TypeError`` that lists the known ones."""
        known = {f.name for f in fields(cls)}
        if "template" in given:  # the singular, as transformers' pipeline and the issue spell it
            given["templates"] = given.pop("template")
        if unknown := sorted(set(given) - known):
            raise TypeError(f"unknown model option(s) {', '.join(unknown)}; the options are {', '.join(sorted(known))}")
        changes = {k: v for k, v in given.items() if v is not None and not (k in ("fast", "exact") and v is False)}
        return replace(options or cls(), **changes)

    @property
    def arch_arg(self) -> ViTConfig | str | dict | None:
        """``arch`` as the loader takes it."""
        return dict(self.arch) if isinstance(self.arch, tuple) else self.arch

    @property
    def describes_weights(self) -> bool:
        """Whether it states something about weights being loaded (labels, preprocessing, arch)."""
        return self.labels is not None or self.preprocess is not None or self.arch is not None


HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe can bind
ACCELERATORS = ("auto", "cpu", "cuda", "mps")
DEVICE_TYPES = ("cpu", "cuda", "mps")  # what a served model may run on


@dataclass(frozen=True)
class ServeOptions:
    """How ``tinyvit serve`` runs: where it listens, how it batches, what it accepts.

    ``batch_timeout``: seconds a worker waits for a batch to fill before running what it has.
    ``accelerator``: ``"auto"`` (CUDA or MPS when torch can use them, else CPU), ``"cpu"``,
    ``"cuda"`` or ``"mps"``; ``devices``: how many (``"auto"``: all); ``workers_per_device``:
    inference processes per device, each with its own copy of the model. ``model``: the
    :class:`ModelOptions` every worker loads the model with, as ``predict`` takes them (its
    ``device``, instead of ``accelerator``: ``"cuda:1"`` for that GPU alone). ``top_k``: results per
    image unless a request asks otherwise. ``timeout``: seconds a request may wait for its answer
    (then 504).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    max_body_bytes: int = 32 * 2**20
    workers_per_device: int = 1
    accelerator: str = "auto"
    devices: int | str = "auto"
    model: ModelOptions = ModelOptions()
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
        if not isinstance(self.model, ModelOptions):
            raise ValueError(f"ServeOptions.model must be ModelOptions, got {type(self.model).__name__}")
        self._check_device()

    @property
    def device(self) -> str | None:
        return self.model.device

    def _check_device(self) -> None:
        if self.device is None:
            return
        kind, _, index = str(self.device).partition(":")
        if kind not in DEVICE_TYPES or (index and not index.isdigit()):
            raise ValueError(f"ServeOptions: device must be {', '.join(DEVICE_TYPES)} or cuda:N, got {self.device!r}")
        if self.accelerator not in ("auto", kind):
            raise ValueError(f"ServeOptions: device {self.device!r} and accelerator {self.accelerator!r} disagree")
        if index and self.devices != "auto":
            raise ValueError(f"ServeOptions: device {self.device!r} names one device; leave devices out")

    def _positive_int(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"ServeOptions.{name} must be an int >= 1, got {value!r}")
