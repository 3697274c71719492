"""The weights record: everything known about one set of ViT weights, as one typed value.

Like torchvision's ``Weights``, a :class:`Weights` record carries together what a user needs to
run the weights and to trust them: the architecture (:class:`ViTConfig`), the preprocessing the
weights were evaluated with (a :class:`PreprocessSpec`, callable on an image), the class names
(``categories``), where the tensors come from (:class:`Source`: location, revision, SHA-256,
layout) and the published accuracy (:class:`Metrics`).

The same record is read from ``weights_manifest.json``, written into (and read back from) the
header of every safetensors file tinyvit writes, and attached to every model tinyvit builds as
``model.weights``. Nothing here imports torch.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import TinyViTError
from tinyvit.core.text_config import TextConfig
from tinyvit.images.spec import PreprocessSpec, SizeRule

__all__ = [
    "LAYOUTS",
    "Fit",
    "Metrics",
    "Source",
    "Weights",
    "LabelsArg",
    "TextSource",
    "TextTower",
    "imagenet_classes",
    "parse_labels",
]

LabelsArg = str | os.PathLike | Sequence[str] | None  # class names: a list, a file, or a named set ("imagenet-1k")
LAYOUTS = ("timm", "hf", "mmpretrain", "npz", "open_clip", "dinov2")  # images.spec.SIZE_RULES has one rule each
SOURCE_KINDS = ("hub", "url", "file", "init")
OUTPUTS = ("classes", "embedding")
RECORD_FORMAT = 1


@dataclass(frozen=True)
class Metrics:
    """Published accuracy of a weight, with its preprocessing (percentages)."""

    top1: float | None
    top5: float | None
    source: str  # who published the figures
    dataset: str = "imagenet-1k val"

    def __post_init__(self) -> None:
        for name in ("top1", "top5"):
            value = getattr(self, name)
            if value is not None and not 0 < value <= 100:
                raise ValueError(f"Metrics.{name} must be a percentage or None, got {value!r}")


@dataclass(frozen=True)
class Fit:
    """How a classification head was fitted on a base model's embeddings (``tinyvit fit``).

    ``base``: the base weights as :func:`tinyvit.load` takes them, and ``base_sha256`` their file's
    SHA-256; ``images``: the images each class was fitted on (in ``categories`` order);
    ``accuracy``: the held-out top-1 in percent (None when no class had two images), measured as
    ``validation`` says; ``regularization``: the chosen C of the L2 logistic regression on
    standardized features; ``head_only``: the file holds only the head, and loading it loads the base.
    """

    base: str
    base_sha256: str | None
    images: tuple[int, ...]
    accuracy: float | None
    validation: str  # "5-fold cross-validation", "held-out set of 40 images", "none"
    regularization: float
    seed: int
    date: str  # ISO 8601 day
    head_only: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "images", tuple(int(n) for n in self.images))
        if self.accuracy is not None and not 0 <= self.accuracy <= 100:
            raise ValueError(f"Fit.accuracy must be a percentage or None, got {self.accuracy!r}")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images": list(self.images)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fit:
        if unknown := sorted(set(d) - {f.name for f in fields(cls)}):
            raise ValueError(f"unknown fit record field(s): {', '.join(unknown)}")
        return cls(**d)

    def describe(self) -> str:
        accuracy = "not measured" if self.accuracy is None else f"{self.accuracy:.1f}%"
        sha = f" (sha256 {self.base_sha256[:12]}…)" if self.base_sha256 else ""
        return (f"on {self.base}{sha}, {sum(self.images)} images, {self.date}; held-out accuracy {accuracy} "
                f"({self.validation})" + ("; head only: loading it loads the base" if self.head_only else ""))


# The file names open_clip's ``download_pretrained_from_hf`` tries in a Hub repository, in its order
OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


@dataclass(frozen=True)
class TextSource:
    """Where zoo weights' text tower is: the Hub repository of the whole open_clip model (both
    towers), as open_clip's own registry names it for the same weights (``provenance`` says where
    that was read). ``open_clip_model``: the open_clip model name, whose config is used when the
    repository has no ``open_clip_config.json``; ``filename``: the file, else the first of
    :data:`OPEN_CLIP_FILES` the repository has; ``sha256``: its pinned SHA-256 (else the Hub's ETag
    is checked, as for an unpinned image file)."""

    repo_id: str
    open_clip_model: str
    provenance: str
    filename: str | None = None
    revision: str | None = None
    sha256: str | None = None

    @property
    def location(self) -> str:
        return f"hf://{self.repo_id}/{self.filename or OPEN_CLIP_FILES[0]}" + (
            f"@{self.revision}" if self.revision else "")  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextSource:
        if unknown := sorted(set(d) - {f.name for f in fields(cls)}):
            raise ValueError(f"unknown text source field(s): {', '.join(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class TextTower:
    """The text tower beside a CLIP / SigLIP image tower: its architecture, the learned scale (and
    SigLIP's bias) of its image-text logits, and which tokenizer its library uses with it."""

    config: TextConfig
    logit_scale: float | None  # as stored: the logits are exp(logit_scale) x cosine (+ logit_bias)
    logit_bias: float | None  # SigLIP's; then the scores are sigmoids, else a softmax over the classes
    tokenizer: str  # what tokenizes its text, for people ("open_clip SimpleTokenizer", …)
    identity: str = ""  # what the checkpoint is (a SHA-256, or a local file's path, size and time): keys caches

    def describe(self) -> str:
        c = self.config
        scale = "no logit scale" if self.logit_scale is None else f"logit scale {self.logit_scale:.3g}"
        bias = "" if self.logit_bias is None else f", logit bias {self.logit_bias:.3g} (sigmoid scores)"
        return (f"text tower {c.embed_dim}d x {c.depth} blocks, {c.context_length} tokens, embedding "
                f"{c.output_dim}; {self.tokenizer}; {scale}{bias}")  # fmt: skip


@dataclass(frozen=True)
class Source:
    """Where a weight's tensors come from, in which layout, and how they are checked.

    ``kind``: ``"hub"`` (``repo_id`` / ``filename`` at ``revision``), ``"url"``, ``"file"`` (a local
    checkpoint, ``path``) or ``"init"`` (random initialisation). ``sha256`` is the SHA-256 of the
    original file when known; ``path`` the local file the tensors were last read from.
    """

    kind: str
    layout: str
    repo_id: str | None = None
    filename: str | None = None
    revision: str | None = None
    url: str | None = None
    sha256: str | None = None
    sha256_prefix: str | None = None  # url: the start of the SHA-256 that the file name gives
    path: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCE_KINDS:
            raise ValueError(f"Source.kind must be one of {SOURCE_KINDS}, got {self.kind!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"Source.layout must be one of {LAYOUTS}, got {self.layout!r}")

    @property
    def location(self) -> str:
        """``hf://owner/repo/file``, the URL, the local path, or ``random initialisation``."""
        if self.kind == "hub":
            return f"hf://{self.repo_id}/{self.filename}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "url":
            return str(self.url)
        if self.kind == "file":
            return str(self.path)
        return "random initialisation"

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class Weights:
    """One set of weights: architecture, preprocessing, class names, source and metrics.

    ``preprocess`` is callable: ``weights.preprocess(image)`` gives the (3, H, W) tensor these
    weights were evaluated with. ``categories`` has one name per output class (None for a model
    without a classification head, or whose class names nobody stated). ``output`` says what the
    model gives: ``"classes"`` (a classifier's logits; its image embedding is the feature before
    the head) or ``"embedding"`` (an image embedding: a projection head's output, CLIP's, or the
    pooled feature of a model without a head, DINOv2's, SigLIP's).
    """

    config: ViTConfig
    preprocess: PreprocessSpec | None
    categories: tuple[str, ...] | None
    source: Source
    metrics: Metrics | None = None
    name: str | None = None  # zoo model name, for zoo weights
    tag: str | None = None  # zoo weights tag
    license: str | None = None
    note: str | None = None
    output: str = "classes"
    fit: Fit | None = None  # a head fitted by `tinyvit fit`: on what, how well
    size_rule: SizeRule = SizeRule()  # what the home library does with other input sizes (timm's by default)
    text: TextSource | None = None  # zoo weights of a CLIP / SigLIP image tower: where their text tower is

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"Weights.output must be one of {OUTPUTS}, got {self.output!r}")
        if self.categories is not None:
            cats = tuple(self.categories)
            object.__setattr__(self, "categories", cats)
            if cats is not imagenet_classes().names and not all(isinstance(c, str) for c in cats):  # checked once
                raise ValueError("Weights.categories must be strings")
            if len(cats) != self.config.num_classes:
                raise ValueError(f"{len(cats)} class names for a model with {self.config.num_classes} classes")
        if self.fit is not None and len(self.fit.images) != self.config.num_classes:
            raise ValueError(f"Fit.images has {len(self.fit.images)} classes, the head {self.config.num_classes}")

    @property
    def spec(self) -> str:
        """How to load these weights again: ``name:tag`` for zoo weights, else the location."""
        if self.source.kind == "init":
            return f"{self.name or 'ViT'} (randomly initialised)"
        return f"{self.name}:{self.tag}" if self.name and self.tag else self.source.location

    @property
    def reload_spec(self) -> str | None:
        """How :func:`tinyvit.load` loads these weights again (None: it cannot, e.g. random weights)."""
        s = self.source
        if self.name and self.tag:
            return f"{self.name}:{self.tag}"
        if s.kind == "hub" and s.repo_id:
            return f"hf-hub:{s.repo_id}" + (f"@{s.revision}" if s.revision else "")
        if s.kind == "url" and s.url:
            return s.url
        if s.kind == "file" and s.path and Path(s.path).exists():
            return str(Path(s.path).resolve())
        return None

    def with_overrides(
        self, *, categories: Sequence[str] | None = None, preprocess: PreprocessSpec | None = None
    ) -> Weights:
        """The record with the class names and / or the preprocessing replaced (None keeps them)."""
        changes: dict[str, Any] = {}
        if categories is not None:
            changes["categories"] = tuple(categories)
        if preprocess is not None:
            changes["preprocess"] = preprocess
        return replace(self, **changes) if changes else self

    # -- serialisation (manifest-independent: the safetensors header, ONNX metadata, JSON output) --

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "name": self.name,
            "tag": self.tag,
            "config": self.config.to_dict(),
            "preprocess": None if self.preprocess is None else self.preprocess.to_dict(),
            "categories": None if self.categories is None else list(self.categories),
            "source": self.source.to_dict(),
            "metrics": None if self.metrics is None else asdict(self.metrics),
            "license": self.license,
            "note": self.note,
            **({"output": self.output} if self.output != "classes" else {}),  # older readers know only classes
            **({"fit": self.fit.to_dict()} if self.fit is not None else {}),
            "size_rule": self.size_rule.to_dict(),
            **({"text": self.text.to_dict()} if self.text is not None else {}),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Weights:
        if d.get("format") != RECORD_FORMAT:
            raise ValueError(f"unsupported weights record format {d.get('format')!r}")
        known = {f.name for f in fields(cls)} | {"format"}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown weights record field(s): {', '.join(unknown)}")
        pre, metrics = d.get("preprocess"), d.get("metrics")
        rule = d.get("size_rule")  # tinyvit 0.1 kept it in the config
        return cls(
            config=ViTConfig.from_dict(d["config"]),
            preprocess=None if pre is None else PreprocessSpec.from_dict(pre),
            categories=None if d.get("categories") is None else tuple(d["categories"]),
            source=Source(**d["source"]),
            metrics=None if metrics is None else Metrics(**metrics),
            name=d.get("name"),
            tag=d.get("tag"),
            license=d.get("license"),
            note=d.get("note"),
            output=d.get("output", "classes"),
            fit=None if d.get("fit") is None else Fit.from_dict(d["fit"]),
            size_rule=SizeRule.from_legacy_config(d["config"]) if rule is None else SizeRule.from_dict(rule),
            text=None if d.get("text") is None else TextSource.from_dict(d["text"]),
        )

    @classmethod
    def from_json(cls, text: str) -> Weights:
        return cls.from_dict(json.loads(text))

    def describe(self) -> str:
        """A few lines for people: what these weights are, how they preprocess, where from."""
        c = self.config
        lines = [
            f"weights:       {self.spec}",
            f"architecture:  ViT {c.embed_dim}d x {c.depth} blocks, {c.num_heads} heads, patch {c.patch_size}, "
            f"{c.image_size} px, " + (f"{c.num_classes or 'no'} classes" if self.output == "classes" else
                                      f"an image embedding of {c.num_classes or c.embed_dim} floats"),
            f"preprocessing: {self.preprocess if self.preprocess is not None else 'unknown'}",
            *(["classes:       " + _describe_categories(self.categories)] if self.output == "classes" else []),
            f"source:        {self.source.location} ({self.source.layout} layout"
            + (f", sha256 {self.source.sha256[:12]}…" if self.source.sha256 else "")
            + ")",
        ]
        if self.text is not None:
            lines.append(f"text tower:    {self.text.location} (open_clip {self.text.open_clip_model}; fetched when "
                         "text or classes are asked for)")  # fmt: skip
        if self.metrics is not None and self.metrics.top1 is not None:
            top5 = "" if self.metrics.top5 is None else f", top-5 {self.metrics.top5}"
            lines.append(f"accuracy:      top-1 {self.metrics.top1}{top5} ({self.metrics.source})")
        if self.fit is not None:
            lines.append(f"fitted:        {self.fit.describe()}")
        return "\n".join(lines)


def _describe_categories(categories: tuple[str, ...] | None) -> str:
    if categories is None:
        return "not named"
    if categories == imagenet_classes().names:
        return "ImageNet-1k (1000)"
    shown = ", ".join(categories[:5]) + (", …" if len(categories) > 5 else "")
    return f"{len(categories)}: {shown}"


# ---------------------------------------------------------------------------------------------
# Class names


@dataclass(frozen=True)
class LabelSet:
    names: tuple[str, ...]
    ids: tuple[str, ...]  # e.g. WordNet ids, for ImageFolder trees named by them


@functools.cache
def imagenet_classes() -> LabelSet:
    """The 1000 ImageNet-1k classes in class-index order: names and WordNet ids."""
    text = (resources.files("tinyvit") / "imagenet1k_classes.txt").read_text(encoding="utf-8")
    rows = [line.split("\t", 1) for line in text.splitlines()]
    return LabelSet(names=tuple(name for _, name in rows), ids=tuple(wnid for wnid, _ in rows))


NAMED_LABEL_SETS = {"imagenet-1k": imagenet_classes}


def parse_labels(labels: str | os.PathLike | Sequence[str]) -> tuple[str, ...]:
    """Class names from a list, a named set (``"imagenet-1k"``) or a file: JSON (a list, or a
    mapping from class index to name such as an HF ``id2label``) or plain text, one per line."""
    if isinstance(labels, (list, tuple)):
        return _check_names(labels, "labels")
    if isinstance(labels, str) and labels.lower() in NAMED_LABEL_SETS:
        return NAMED_LABEL_SETS[labels.lower()]().names
    path = Path(labels)  # type: ignore[arg-type]
    what = repr(str(path))
    if not path.is_file():
        named = ", ".join(NAMED_LABEL_SETS)
        raise TinyViTError(f"labels {what}: no such file (give a file of class names, or one of: {named})")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TinyViTError(f"labels {what}: cannot read it ({e})") from e
    if path.suffix.lower() == ".json" or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as e:
            raise TinyViTError(f"labels {what}: invalid JSON ({e})") from e
        if isinstance(data, dict):
            return labels_from_mapping(data, f"labels {what}")
        if isinstance(data, list):
            return _check_names(data, f"labels {what}")
        raise TinyViTError(f"labels {what}: expected a JSON list of names or an index → name mapping")
    names = [line.strip() for line in text.splitlines()]
    while names and not names[-1]:
        names.pop()
    return _check_names(names, f"labels {what}")


def labels_from_mapping(mapping: dict, what: str) -> tuple[str, ...]:
    """``{"0": "cat", "1": "dog"}`` (HF's ``id2label``) → ``("cat", "dog")``; the indices must
    be exactly 0 … n-1."""
    try:
        by_index = {int(k): v for k, v in mapping.items()}
    except (TypeError, ValueError):
        raise TinyViTError(f"{what}: keys must be class indices (0, 1, …)") from None
    if sorted(by_index) != list(range(len(by_index))):
        raise TinyViTError(f"{what}: class indices must be 0 … {len(by_index) - 1} with none missing")
    return _check_names([by_index[i] for i in range(len(by_index))], what)


def _check_names(names: Sequence[Any], what: str) -> tuple[str, ...]:
    if not names:
        raise TinyViTError(f"{what}: no class names")
    bad = [i for i, n in enumerate(names) if not isinstance(n, str) or not n.strip()]
    if bad:
        raise TinyViTError(f"{what}: entry {bad[0]} is not a class name ({names[bad[0]]!r})")
    return tuple(str(n) for n in names)
