"""Accuracy on a labelled folder: :func:`evaluate` runs an ImageFolder tree (one subfolder per
class) through the runner and counts top-1 / top-5 hits, overall and per class."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tinyvit.core.errors import TinyViTError
from tinyvit.images.inputs import class_folders
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import DEFAULT_MODEL, ModelOptions
from tinyvit.run.runner import check_run_options
from tinyvit.run.session import runner_for
from tinyvit.weights.record import imagenet_classes

__all__ = ["ClassCounts", "Evaluation", "evaluate", "folder_samples"]


@dataclass(frozen=True)
class ClassCounts:
    images: int = 0  # images of the class that were scored
    top1: int = 0  # ... whose top-1 class was right
    top5: int | None = 0  # ... whose right class was among the top 5 (None: the model has 5 classes or fewer)


@dataclass(frozen=True)
class Evaluation:
    """The result of :func:`evaluate`: accuracies in percent (None when no image was scored)."""

    model: str  # the weights, as they can be loaded again
    weights: str | None  # where their tensors came from
    images: int  # images scored
    failed: int  # images that could not be read (not scored)
    top1: float | None
    top5: float | None  # also None for a model of 5 classes or fewer: every image would be a top-5 hit
    per_class: dict[str, ClassCounts] = field(default_factory=dict)  # class name → counts
    errors: list[str] = field(default_factory=list)  # one per failed image

    def to_dict(self, *, per_class: bool = False) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("per_class", "errors")}
        if per_class:
            d["per_class"] = {name: asdict(c) for name, c in self.per_class.items()}
        return d


def folder_samples(
    root: Path, categories: list[str], ids: list[str], limit: int | None = None
) -> list[tuple[Path, int]]:
    """(image, label) pairs of an ImageFolder tree whose subfolders are named by class id (WordNet
    ids for ImageNet), class name or class index. With ``limit``, the first images of every class
    in turn, so that all classes are sampled."""
    if not root.exists():
        raise TinyViTError(f"{str(root)!r}: no such folder")
    if not root.is_dir():
        raise TinyViTError(f"{str(root)!r}: not a folder (eval reads an ImageFolder tree: one subfolder per class)")
    index = {name: i for i, name in enumerate(ids)} | {name: i for i, name in enumerate(categories)}
    per_class = []
    for name, files in class_folders(root):
        if name in index:
            label = index[name]
        elif name.isdigit():
            label = int(name)
            if label >= len(categories):
                raise TinyViTError(
                    f"{str(root / name)!r}: class index {label} is out of range (the model has {len(categories)} "
                    "classes)"
                )
        else:
            raise TinyViTError(f"{str(root / name)!r}: folder name is neither a class id, a class name nor a class "
                               "index")  # fmt: skip
        per_class.append([(f, label) for f in files])
    if not per_class:
        raise TinyViTError(f"{str(root)!r}: no class subfolders")
    samples = [s for group in per_class for s in group]
    if not samples:
        raise TinyViTError(f"{str(root)!r}: the class subfolders hold no image files")
    if limit is not None:
        interleaved = [group[i] for i in range(max(map(len, per_class))) for group in per_class if i < len(group)]
        samples = interleaved[:limit]
    return samples


def evaluate(
    folder: str | os.PathLike,
    model: str | os.PathLike | VisionTransformer = DEFAULT_MODEL,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: bool | str = False,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> Evaluation:
    """Top-1 / top-5 accuracy of ``model`` on an ImageFolder tree: subfolders named by class id
    (WordNet ids such as ``n01440764`` for ImageNet), class name or class index (hidden folders
    are not classes). Unreadable images are counted as failed, not scored. ``limit``: at most N
    images, taken from all classes in turn. The model options as :func:`tinyvit.predict` takes them."""
    check_run_options(batch_size=batch_size)
    o = ModelOptions.of(options, **model_options)
    root = Path(folder)
    if not root.is_dir():  # before the weights are fetched
        raise TinyViTError(f"{os.fspath(folder)!r}: " + ("not a folder" if root.exists() else "no such folder"))
    runner = runner_for(model, o, progress=bool(progress))
    net, names = runner.model, runner.names
    imagenet = tuple(names) == imagenet_classes().names or o.classes == "imagenet"  # open_clip's names, same order
    ids = list(imagenet_classes().ids) if imagenet else names
    samples = folder_samples(root, names, ids, limit)
    top5 = len(names) > 5  # with 5 classes or fewer, top-5 accuracy says nothing
    runner.top_k = min(5, len(names))
    counts = {i: [0, 0, 0] for _, i in samples}
    errors = []
    results = runner.stream([p for p, _ in samples], batch_size=batch_size, errors="return", progress=progress)
    for r, (_, label) in zip(results, samples, strict=True):
        if not r.ok:
            errors.append(r.error_line())
            continue
        c = counts[label]
        c[0], c[1], c[2] = c[0] + 1, c[1] + (r.label == label), c[2] + (label in [i for i, _, _ in r.topk])
    n = sum(c[0] for c in counts.values())
    record = net.weights
    return Evaluation(
        model=record.spec if record is not None else str(model),
        weights=None if record is None else record.source.location,
        images=n,
        failed=len(errors),
        top1=100.0 * sum(c[1] for c in counts.values()) / n if n else None,
        top5=100.0 * sum(c[2] for c in counts.values()) / n if n and top5 else None,
        per_class={names[i]: ClassCounts(c[0], c[1], c[2] if top5 else None) for i, c in sorted(counts.items())},
        errors=errors,
    )
