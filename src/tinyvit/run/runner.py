"""Images through a model: the one runner behind predict, embed, eval, explain, serve and Ray.

A :class:`Runner` does decode → batch → forward → scores → top-k → class names (or features),
and gives one :class:`ItemError` for every image that could not be run, so callers never score or
classify errors themselves. :meth:`Runner.stream` runs many images: decoding and preprocessing run
ahead of the model on a pool of threads (Pillow releases the GIL while it decodes and resizes), a
bounded number of batches ahead, so a folder of any size holds only a few batches of tensors; the
model runs batch after batch on the calling thread; results come out in input order as each batch
finishes. A bad image never stops or reorders the rest. The runner changes when things happen, not
what is computed: every image gives the same numbers as it would alone.

With ``fast=True`` JPEGs are decoded at reduced scale first (Pillow's draft mode); the fast weights
dtype is ``runtime.fast_dtype``'s rule, applied when the model is loaded.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from tinyvit.core.errors import ImageError, TinyViTError
from tinyvit.images.inputs import describe_input
from tinyvit.images.spec import PreprocessSpec
from tinyvit.images.transforms import preprocess_one
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.dense import patch_tokens
from tinyvit.weights._builder import resolve_preprocess

__all__ = [
    "TASKS", "Embedding", "ItemError", "Prediction", "Runner", "ZeroShotHead", "check_run_options", "class_names",
    "model_output",
]  # fmt: skip

logger = logging.getLogger("tinyvit")

TASKS = ("classify", "embed", "patches")
PREFETCH_BATCHES = 2  # batches decoded ahead of the one the model is running


# ---------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class ItemError:
    """One image that could not be run: the runner's one per-image error. ``input`` names the
    image (a quoted path, ``<1234 bytes>``, …); ``internal`` is True when it was not the image's
    fault but an error in tinyvit (a server answers 500, not 400)."""

    input: str
    reason: str
    internal: bool = False
    cause: BaseException | None = field(default=None, repr=False, compare=False)

    def __str__(self) -> str:
        return f"{self.input}: {self.reason}"

    def exception(self) -> BaseException:
        """What ``errors="raise"`` raises: the original error of an internal failure, else an
        :class:`ImageError` naming the input."""
        if self.internal and self.cause is not None:
            return self.cause
        return ImageError(self.input, self.reason)


@dataclass(frozen=True)
class Prediction:
    """One image's result. A failed item (``errors="return"``) has ``error`` set and label -1."""

    input: str  # what was predicted, for reports: a path or a short description
    label: int = -1
    name: str = ""
    score: float = math.nan
    topk: list[tuple[int, str, float]] = field(default_factory=list)
    scores: torch.Tensor | None = field(default=None, repr=False)  # (num_classes,) probabilities
    error: str | None = None  # why it failed (the input is named by ``input``)

    @property
    def ok(self) -> bool:
        return self.error is None

    def __str__(self) -> str:
        """``Greater Swiss Mountain dog (0.56)``, or the error; ``repr`` shows everything."""
        return f"{self.name} ({self.score:.2f})" if self.ok else f"{self.input}: error: {self.error}"

    def error_line(self) -> str:
        """A failed item's one-line report, its input quoted: ``'photos/a.jpg': not an image``."""
        return f"{self.input!r}: {self.error}"

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
    """One image's class-token feature (``extract_feat``), or its patch features (task
    ``"patches"``), or the error that prevented it."""

    input: str
    vector: torch.Tensor | None = field(default=None, repr=False)  # (D,) float32; patches: (h, w, D)
    error: str | None = None  # why it failed (the input is named by ``input``)

    @property
    def ok(self) -> bool:
        return self.error is None

    error_line = Prediction.error_line


Result = Prediction | Embedding


@dataclass(frozen=True)
class ZeroShotHead:
    """Classes named in words, for a CLIP / SigLIP image tower: each class's text embedding (the
    unit mean of its prompts' unit embeddings, open_clip's ``build_zero_shot_classifier``). Scores
    as the home library computes them: ``logits = scale * cos(image, class) (+ bias)``; with a
    bias (SigLIP) independent sigmoids, which do not sum to 1; else (CLIP) a softmax over the
    classes."""

    names: tuple[str, ...]
    weight: torch.Tensor = field(repr=False)  # (C, E) float32, unit rows
    scale: float  # exp(logit_scale)
    bias: float | None = None

    def scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Image embeddings (B, E) → class scores (B, C)."""
        e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
        logits = self.scale * e @ self.weight.to(e.device).T
        if self.bias is not None:
            return (logits + self.bias).sigmoid()
        return logits.softmax(dim=-1)


def class_names(model: VisionTransformer) -> list[str]:
    """The class names of the model's outputs: its record's, else ``"class <i>"``."""
    record = model.weights
    if record is not None and record.categories is not None:
        return list(record.categories)
    return [f"class {i}" for i in range(model.config.num_classes)]


def model_output(model: VisionTransformer) -> str:
    """What the model gives: its record's ``output``; without a record, classes when it has a head."""
    if model.weights is not None:
        return model.weights.output
    return "classes" if model.config.num_classes else "embedding"


def check_run_options(*, batch_size: int = 1, errors: str = "raise", top_k: int = 1) -> None:
    """Refuse bad run options before anything is loaded."""
    if errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")


# ---------------------------------------------------------------------------------------------
# The runner


class Runner:
    """One model and how to run it: ``task`` ``"classify"`` (top ``top_k`` class names and scores)
    or ``"embed"`` (image embeddings, unit L2 norm with ``normalize``) or ``"patches"`` (the final
    patch tokens on their grid, :func:`tinyvit.patch_features`'s); ``preprocess`` overrides the
    model's record (a spec, or a zoo ``name[:tag]``); ``fast`` decodes JPEGs at reduced scale;
    ``head``: classes named in words, scored on the image embedding (zero-shot)."""

    def __init__(
        self,
        model: VisionTransformer,
        *,
        task: str = "classify",
        top_k: int = 5,
        normalize: bool = False,
        preprocess: PreprocessSpec | str | None = None,
        fast: bool = False,
        head: ZeroShotHead | None = None,
    ):
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        check_run_options(top_k=top_k)
        self.output = model_output(model)
        self.head = head
        if task == "classify" and self.output == "embedding" and head is None:
            spec = model.weights.spec if model.weights is not None else "this model"
            raise TinyViTError(
                f"{spec} gives image embeddings, not classes: use tinyvit.embed, `tinyvit embed` or a served /embed "
                "(a CLIP or SigLIP checkpoint with its text tower classifies into classes named in words: "
                "classes= / --classes)"
            )
        self.model = model
        self.task = task
        self.top_k = top_k
        self.normalize = normalize
        self.fast = fast
        self.spec = resolve_preprocess(preprocess if preprocess is not None else model)
        self.names = (list(head.names) if head is not None else class_names(model)) if task == "classify" else []
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype

    # -- one image

    @property
    def embedding_dim(self) -> int:
        """The size of an image embedding: an embedding model's output, else the feature before the head."""
        c = self.model.config
        return c.num_classes if self.output == "embedding" and c.num_classes else c.embed_dim

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """(h, w, D) of one image's patch features: the preprocessing's square side in patches (a
        remainder dropped, or padded to a whole patch where the weights' size rule pads)."""
        p, pad = self.model.patch_embed.patch_size, self.model.patch_embed.pad
        side = -(-self.spec.crop // p) if pad else self.spec.crop // p
        return side, side, self.model.config.embed_dim

    def decode(self, image: Any, name: str | None = None) -> torch.Tensor | ItemError:
        """An image → its (3, H, W) float32 tensor, or the :class:`ItemError` saying why not.
        ``name``: how errors name the image (default: its path, or a short description)."""
        try:
            return preprocess_one(image, self.spec, fast=self.fast)
        except ImageError as e:
            return ItemError(name or e.input, e.reason, cause=e)
        except Exception as e:  # a bug, not a bad image: this image fails, the others go on
            logger.exception("tinyvit: preprocessing %s failed", name or describe_input(image))
            return ItemError(name or describe_input(image), f"preprocessing failed: {type(e).__name__}", True, e)

    # -- one batch

    def forward(self, x: torch.Tensor, *, top_k: int | None = None, head: ZeroShotHead | None = None) -> list[Result]:
        """A batch of preprocessed images (B, 3, H, W) → one result per row (``input`` unset).
        ``top_k`` overrides the runner's for this batch; ``head``, its classes (a server's request)."""
        x = self._to_device(x)
        head = head or self.head
        with torch.inference_mode():
            if self.task == "patches":
                return [Embedding("", v) for v in patch_tokens(self.model, x).float().cpu()]
            if self.task == "embed" or head is not None:
                feats = self._embedding(x)
                if head is None:
                    return [Embedding("", v) for v in feats.cpu()]
                probs = head.scores(feats).cpu()
            else:
                probs = self.model(x).float().softmax(dim=-1).cpu()
        names = list(head.names) if head is not None else self.names
        k = min(top_k or self.top_k, len(names))
        top_p, top_i = probs.topk(k, dim=-1)
        return [
            Prediction("", ti[0], names[ti[0]], tp[0], [(i, names[i], s) for i, s in zip(ti, tp, strict=True)], p)
            for p, tp, ti in zip(probs, top_p.tolist(), top_i.tolist(), strict=True)
        ]

    def _embedding(self, x: torch.Tensor) -> torch.Tensor:
        """The image embedding, float32: an embedding model's output; a classifier's feature before
        its head (unit L2 norm with ``normalize``)."""
        feats = (self.model(x) if self.output == "embedding" else self.model.extract_feat(x)).float()
        return torch.nn.functional.normalize(feats, dim=-1) if self.normalize else feats

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda" and x.device.type == "cpu":
            return x.pin_memory().to(self.device, dtype=self.dtype, non_blocking=True)
        return x.to(device=self.device, dtype=self.dtype)

    def run_batch(
        self, decoded: Sequence[torch.Tensor | ItemError], labels: Sequence[str], *, top_k: int | None = None,
        head: ZeroShotHead | None = None,
    ) -> list[Result]:
        """Decoded items (tensors or errors) → one result each, in order; ``labels`` name them in
        the results. The tensors run as one forward pass (``head``: see :meth:`forward`)."""
        tensors = [d for d in decoded if not isinstance(d, ItemError)]
        outputs = iter(self.forward(torch.stack(tensors), top_k=top_k, head=head) if tensors else ())
        failed = Embedding if self.task != "classify" and head is None and self.head is None else Prediction
        return [
            failed(label, error=d.reason) if isinstance(d, ItemError) else replace(next(outputs), input=label)
            for d, label in zip(decoded, labels, strict=True)
        ]

    # -- many images

    def stream(
        self,
        items: Sequence[Any],
        *,
        names: Sequence[str] | None = None,
        batch_size: int = 8,
        workers: int | None = None,
        errors: str = "raise",
        progress: bool | str = False,
    ) -> Iterator[Result]:
        """One result per item, in input order, as each batch finishes. ``names``: how to name each
        item in results and errors (default: its path or a short description). ``errors="raise"``
        raises at the first bad image; ``"return"`` gives it a failed result and goes on.
        ``workers``: decoding threads (default: one per core, at most 16). ``progress``: a
        progress bar on stderr (a string: its label)."""
        check_run_options(batch_size=batch_size, errors=errors)
        names = list(names) if names is not None else [describe_input(item) for item in items]
        bar = _progress(len(items), progress, "predict" if self.task == "classify" else self.task)
        try:
            for start, decoded in self._decoded_batches(items, names, batch_size, workers):
                if errors == "raise":
                    for d in decoded:
                        if isinstance(d, ItemError):
                            raise d.exception()
                labels = [n.strip("'") for n in names[start : start + len(decoded)]]
                yield from self.run_batch(decoded, labels)
                del decoded  # the per-image buffers: freed, and their pages handed back, before the next batch
                if bar is not None:
                    bar.update(len(labels))
        finally:
            if bar is not None:
                bar.close()

    def _decoded_batches(
        self, items: Sequence[Any], names: list[str], batch_size: int, workers: int | None
    ) -> Iterator[tuple[int, list[torch.Tensor | ItemError]]]:
        """(index of the first item, decoded items) per batch, in input order, decoded on a thread
        pool at most ``PREFETCH_BATCHES`` batches ahead of the consumer."""
        pool = ThreadPoolExecutor(max_workers=workers or default_workers(), thread_name_prefix="tinyvit-decode")
        window: collections.deque[Future] = collections.deque()
        todo = iter(enumerate(items))
        ahead = (PREFETCH_BATCHES + 1) * batch_size

        def fill() -> None:
            for i, image in todo:
                window.append(pool.submit(self.decode, image, names[i]))
                if len(window) >= ahead:
                    return

        try:
            fill()
            start = 0
            while window:
                decoded = [window.popleft().result() for _ in range(min(batch_size, len(window)))]
                fill()  # keep the pool busy while the model runs this batch
                yield start, decoded
                start += len(decoded)
                del decoded  # the consumer has dropped its reference too: the buffers are free now
                _release_free_memory()
        finally:
            for future in window:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------------------------------------
# Helpers


def default_workers() -> int:
    """Decoding threads: one per core, at most 16. They decode only while the prefetch window has
    room, so when the model is the bottleneck they wait and take nothing from torch; when decoding
    is (12-megapixel photos), they share the cores with torch's threads, as timm's DataLoader
    workers do (measured on 2 cores: 1.13x the throughput of one thread on 12 MP JPEGs, 1.05x on
    ImageNet-size ones). On a GPU the cores have nothing else to do."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, 16))


def _progress(total: int, show: bool | str, desc: str):
    """A progress bar on stderr when it is a terminal (huggingface_hub's tqdm:
    HF_HUB_DISABLE_PROGRESS_BARS turns it off); ``show`` may be the bar's label. Into a file or a
    pipe a bar is only noise: tqdm cannot redraw there, so every refresh, the last one twice,
    would stay in the log."""
    if not show or not sys.stderr.isatty():
        return None
    from huggingface_hub.utils import tqdm

    return tqdm(total=total, unit="img", file=sys.stderr, desc=show if isinstance(show, str) else desc)


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
