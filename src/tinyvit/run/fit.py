"""Fit a classifier on a base model's frozen embeddings: ``tinyvit fit`` and :func:`fit`.

The training set is an ImageFolder tree (a subfolder per class, named by the class) or a label file
(CSV or JSON lines of ``path,label``; relative paths are relative to the file's folder). Its images
run through the base model with the runner (decoding threads, bounded memory, a progress bar; an
unreadable image is reported, counted and left out), giving what :func:`tinyvit.embed` gives: an
embedding model's output, a classifier's feature before its head. A linear probe
(``probe.py``) is fitted on them, and its standardization and the base's own projection head, if
any, are folded into one linear ``head``: the result is an ordinary ViT classifier whose
``forward`` is ``head(pooled feature)``, written as one self-describing tinyvit file (the base's
weights and preprocessing, the new head, the class names, and in its record what it was fitted
from: :class:`~tinyvit.weights.record.Fit`), or, with ``head_only``, the head and that record alone.

Embeddings can be cached beside the output, keyed by the base's SHA-256 and its preprocessing and
each image file's SHA-256, so fitting again with other options skips the model.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from tinyvit.core.errors import FitError, TinyViTError
from tinyvit.core.fsutil import atomic_path, sha256_file
from tinyvit.images.inputs import IMAGE_SUFFIXES, class_folders
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import DEFAULT_MODEL, ModelOptions
from tinyvit.run.probe import ProbeReport, fit_probe
from tinyvit.run.runner import Runner, check_run_options, model_output
from tinyvit.run.runtime import model_for
from tinyvit.weights._builder import build_model, weights_sha256
from tinyvit.weights.files import save
from tinyvit.weights.record import Fit, Source, Weights

__all__ = ["FitOptions", "Fitted", "TrainingSet", "fit", "fit_and_report", "read_training_set"]

LABEL_FILES = (".csv", ".jsonl")
FEW_IMAGES = 5  # a class with fewer images gets a warning
HEAD_KEYS = ("head.", "head_dist.")
CACHE_SUFFIX = ".embeddings.safetensors"


@dataclass(frozen=True)
class FitOptions:
    """How to fit. ``val``: a held-out set (folder or label file) that chooses the regularization
    and measures the accuracy, instead of cross-validation; ``head_only``: write only the head and
    the record naming the base; ``cache``: keep the embeddings in a file (True: beside the output,
    ``OUTPUT.embeddings.safetensors``; or its path); ``seed``: the cross-validation folds. The rest
    run the base model as :func:`tinyvit.embed` does; ``model``: the base's
    :class:`~tinyvit.run.options.ModelOptions` (device, dtype, fast, preprocess, arch)."""

    val: str | os.PathLike | None = None
    head_only: bool = False
    cache: bool | str | os.PathLike = False
    seed: int = 0
    batch_size: int = 8
    model: ModelOptions = ModelOptions()
    workers: int | None = None
    progress: bool | str | None = None  # None: a progress bar for more than one batch


@dataclass(frozen=True)
class TrainingSet:
    """Image files and their class indices into ``classes``."""

    files: list[Path]
    labels: list[int]
    classes: tuple[str, ...]
    where: str  # how to name the set in messages

    def counts(self) -> list[int]:
        return [self.labels.count(i) for i in range(len(self.classes))]


@dataclass
class Fitted:
    """What :func:`fit_and_report` did: the model, the probe's report, and for people what happened."""

    model: VisionTransformer
    report: ProbeReport
    images: tuple[int, ...]  # per class, the images the head was fitted on
    errors: list[str] = field(default_factory=list)  # one per image that could not be read (left out)
    warnings: list[str] = field(default_factory=list)
    embedded: int = 0  # images run through the base now
    cached: int = 0  # images whose embedding came from the cache
    written: list[Path] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (``tinyvit fit --json``)."""
        r, fit_ = self.report, self.model.weights.fit
        return {
            "classes": list(self.model.weights.categories), "images": list(self.images), "base": fit_.base,
            "base_sha256": fit_.base_sha256, "accuracy": r.accuracy, "validation": r.validation,
            "regularization": r.probe.C, "scores": {str(c): v for c, v in r.scores.items()},
            "confusion": None if r.confusion is None else r.confusion.tolist(), "errors": self.errors,
            "warnings": self.warnings, "embedded": self.embedded, "cached": self.cached,
            "written": [str(p) for p in self.written],
        }  # fmt: skip

    def summary(self) -> str:
        """What ``tinyvit fit`` prints: the data, the held-out accuracy, a line per class."""
        r, record = self.report, self.model.weights
        names = record.categories
        lines = [f"fitted a head of {len(names)} classes on the embeddings of {sum(self.images)} images "
                 f"({self.embedded} run through {record.fit.base}, {self.cached} from the cache)"]  # fmt: skip
        if r.accuracy is None:
            lines.append(f"held-out accuracy: not measured ({r.validation}); C = {r.probe.C:g}")
            return "\n".join(lines)
        lines.append(f"held-out accuracy {r.accuracy:.2f}% ({r.validation}; C = {r.probe.C:g})")
        width = max(12, *(len(n) for n in names))
        lines.append(f"  {'class':<{width}}  fitted on  held out  correct  most often mistaken for")
        for i, name in enumerate(names):
            row = r.confusion[i].tolist()
            held, hit = sum(row), row[i]
            row[i] = -1
            worst = max(range(len(row)), key=lambda j: (row[j], -j))
            mistaken = f"{names[worst]} ({row[worst]})" if row[worst] > 0 else "-"
            share = f"{100.0 * hit / held:5.1f}%" if held else "    -"
            lines.append(f"  {name:<{width}}  {self.images[i]:>9}  {held:>8}  {share:>7}  {mistaken}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Training sets


def read_training_set(src: str | os.PathLike, classes: Sequence[str] | None = None) -> TrainingSet:
    """An ImageFolder tree or a CSV / JSON-lines label file of ``path,label``. ``classes``: the
    classes the labels must be among (a validation set's), in their order; otherwise the set's
    own, sorted."""
    path = Path(src)
    where = repr(os.fspath(src))
    if path.is_dir():
        pairs = _image_folder(path, where)
    elif path.is_file() and path.suffix.lower() in LABEL_FILES:
        pairs = _label_file(path, where)
    elif path.exists():
        raise FitError(f"{where}: expected a folder of class subfolders, or a {' / '.join(LABEL_FILES)} label file")
    else:
        raise FitError(f"{where}: no such folder or file")
    names = sorted({label for _, label in pairs}) if classes is None else list(classes)
    index = {name: i for i, name in enumerate(names)}
    unknown = sorted({label for _, label in pairs} - set(index))
    if unknown:
        raise FitError(f"{where}: class {unknown[0]!r} is not among the training classes ({', '.join(names)})")
    if classes is None and len(names) < 2:
        only = f"only the class {names[0]!r}" if names else "no class"
        raise FitError(f"{where}: {only}; a classifier needs at least two classes")
    return TrainingSet([p for p, _ in pairs], [index[label] for _, label in pairs], tuple(names), where)


def _image_folder(root: Path, where: str) -> list[tuple[Path, str]]:
    classes = class_folders(root)
    if not classes:
        raise FitError(f"{where}: no class subfolders (one subfolder of images per class, named by the class)")
    pairs = []
    for name, files in classes:
        if not files:
            kinds = ", ".join(sorted(IMAGE_SUFFIXES))
            raise FitError(f"{str(root / name)!r}: the class folder holds no images ({kinds})")
        pairs += [(f, name) for f in files]
    return pairs


def _label_file(path: Path, where: str) -> list[tuple[Path, str]]:
    """(file, label) rows of a CSV (``path,label``, an optional header) or JSON lines
    (``{"path": ..., "label": ...}``); relative paths are relative to the label file's folder."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise FitError(f"{where}: cannot read it ({e})") from e
    rows: list[tuple[str, str]] = []
    if path.suffix.lower() == ".csv":
        for n, row in enumerate(csv.reader(text.splitlines()), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip() or not row[1].strip():
                raise FitError(f"{where}, line {n}: expected path,label")
            if n == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue  # the header
            rows.append((row[0].strip(), row[1].strip()))
    else:
        for n, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                rows.append(_json_row(line, f"{where}, line {n}"))
    if not rows:
        raise FitError(f"{where}: names no images")
    pairs = [(p if p.is_absolute() else path.parent / p, label) for p, label in ((Path(f), c) for f, c in rows)]
    missing = [str(p) for p, _ in pairs if not p.is_file()]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3]) + (", …" if len(missing) > 3 else "")
        raise FitError(f"{where}: {len(missing)} of the {len(pairs)} files it names do not exist: {shown}")
    return pairs


def _json_row(line: str, what: str) -> tuple[str, str]:
    try:
        row = json.loads(line)
    except ValueError as e:
        raise FitError(f"{what}: invalid JSON ({e})") from None
    if not isinstance(row, dict) or not isinstance(row.get("path"), str) or row.get("label") in (None, ""):
        raise FitError(f'{what}: expected {{"path": "...", "label": "..."}}')
    return row["path"], str(row["label"])


# ---------------------------------------------------------------------------------------------
# The base model and its embeddings


def base_spec(record: Weights) -> str | None:
    """How :func:`tinyvit.load` loads the base again (None: it cannot, e.g. random weights)."""
    return record.reload_spec


def _embedding_map(model: VisionTransformer) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(W, b) such that the base's embedding is ``W f + b`` of its pooled feature ``f`` (what
    ``extract_feat`` gives); (None, None) when the embedding is ``f`` itself (a classifier's
    feature before its head, or an embedding model without a head)."""
    if model_output(model) != "embedding" or not model.config.num_classes:
        return None, None
    if model.head_dist is not None:  # (head(cls) + head_dist(dist)) / 2: not a function of the pooled feature
        raise FitError(f"{model.weights.spec}: its embedding averages two heads on two tokens; no linear head on "
                       "one feature reproduces it, so there is no embedding to fit a head on")  # fmt: skip
    return model.head.weight, model.head.bias


def _check_base(model: VisionTransformer, options: FitOptions) -> Runner:
    """The runner that embeds images with the base, or the one line saying why it cannot."""
    if model.weights is None:
        raise FitError("the base model has no weights record (load it with tinyvit.load): no embedding to fit on")
    _embedding_map(model)
    if options.head_only and base_spec(model.weights) is None:
        raise FitError(f"--head-only: {model.weights.spec} cannot be loaded again by name or path; write the whole "
                       "model instead")  # fmt: skip
    try:
        return Runner(model, task="embed", normalize=False, preprocess=options.model.preprocess,
                      fast=options.model.fast)  # fmt: skip
    except TinyViTError as e:
        raise FitError(f"the base model gives no embedding: {e}") from None


class EmbeddingCache:
    """Embeddings by image-file SHA-256, for one base and preprocessing (``key``), in a
    safetensors file: ``embeddings`` (M, E) float32 and ``sha256`` (M, 32) uint8."""

    def __init__(self, path: Path | None, key: str | None):
        self.path, self.key = path, key
        self.rows: dict[str, torch.Tensor] = {}
        self.added = 0
        if path is not None and key is not None and path.is_file():
            self._read()

    def _read(self) -> None:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(self.path, framework="pt") as f:
                if (f.metadata() or {}).get("tinyvit.fit.key") != self.key:
                    return  # another base or preprocessing: start afresh
                feats, hashes = f.get_tensor("embeddings"), f.get_tensor("sha256")
        except (SafetensorError, OSError, KeyError) as e:
            warnings.warn(f"tinyvit: ignoring the unreadable embedding cache {str(self.path)!r} ({e})", stacklevel=3)
            return
        self.rows = {bytes(h.tolist()).hex(): v for h, v in zip(hashes, feats, strict=True)}

    def write(self) -> Path | None:
        if self.path is None or self.key is None or not self.added:
            return None
        from safetensors.torch import save_file

        keys = sorted(self.rows)
        tensors = {"embeddings": torch.stack([self.rows[k] for k in keys]).contiguous(),
                   "sha256": torch.tensor([list(bytes.fromhex(k)) for k in keys], dtype=torch.uint8)}  # fmt: skip
        with atomic_path(self.path) as tmp:
            save_file(tensors, str(tmp), metadata={"tinyvit.fit.key": self.key})
        return self.path


def _cache_for(runner: Runner, base_sha: str | None, output: Path | None, options: FitOptions) -> EmbeddingCache:
    if options.cache is False or options.cache is None:
        return EmbeddingCache(None, None)
    if options.cache is True:
        if output is None:
            raise FitError("cache=True keeps the embeddings beside the output: give the output, or a cache path")
        path = output.with_name(output.name + CACHE_SUFFIX)
    else:
        path = Path(options.cache)
    if base_sha is None:
        warnings.warn("tinyvit: the base's SHA-256 is unknown; its embeddings are not cached", stacklevel=3)
        return EmbeddingCache(None, None)
    what = {"base": base_sha, "preprocess": runner.spec.to_dict(), "fast": runner.fast, "dtype": str(runner.dtype),
            "output": runner.output}  # fmt: skip
    return EmbeddingCache(path, hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest())


def _embed(runner: Runner, files: list[Path], cache: EmbeddingCache, options: FitOptions) -> dict[str, Any]:
    """Each file's embedding (or the error that kept it out) by key: its SHA-256 when caching,
    else its path; identical files run once. Returns {"rows": key → (E,), "keys": per file,
    "errors": key → message, "embedded": n, "cached": n}."""
    keys = [sha256_file(f) if cache.key is not None else str(f) for f in files]
    todo: dict[str, Path] = {}
    for key, f in zip(keys, files, strict=True):
        if key not in cache.rows and key not in todo:
            todo[key] = f
    rows = {k: cache.rows[k] for k in keys if k in cache.rows}
    errors: dict[str, str] = {}
    show = options.progress if options.progress is not None else len(todo) > options.batch_size
    results = runner.stream(list(todo.values()), batch_size=options.batch_size, workers=options.workers,
                            errors="return", progress="fit: embed" if show is True else show)  # fmt: skip
    for key, e in zip(todo, results, strict=True):
        if e.ok:
            rows[key] = e.vector
            if cache.key is not None:
                cache.rows[key] = e.vector
                cache.added += 1
        else:
            errors[key] = str(e.error)  # the reason (the file is named where it is reported)
    return {"rows": rows, "keys": keys, "errors": errors, "embedded": len(todo), "cached": len(files) - len(todo)}


def _features(
    tset: TrainingSet, embedded: dict[str, Any], offset: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(features (n, E), labels (n,), errors) of the set's readable images; ``offset``: where the
    set's files start in ``embedded["keys"]``."""
    keys = embedded["keys"][offset : offset + len(tset.files)]
    rows, errors = embedded["rows"], embedded["errors"]
    kept = [i for i, k in enumerate(keys) if k in rows]
    failed = [f"{str(tset.files[i])!r}: {errors[k]}" for i, k in enumerate(keys) if k in errors]
    x = torch.stack([rows[keys[i]].float() for i in kept]) if kept else torch.empty(0)
    return x, torch.tensor([tset.labels[i] for i in kept], dtype=torch.long), failed


# ---------------------------------------------------------------------------------------------
# The fitted model


def _fold(model: VisionTransformer, report: ProbeReport) -> dict[str, torch.Tensor]:
    """The probe (its standardization folded in) composed with the base's own projection head, as
    one linear ``head`` on the pooled feature (and ``head_dist`` the same, for a distilled base,
    whose feature is the mean of its two tokens); computed in float64, stored in float32."""
    a, c = report.probe.linear()
    w_e, b_e = _embedding_map(model)
    if w_e is not None:
        c = c + (a @ b_e.detach().double().cpu() if b_e is not None else 0)
        a = a @ w_e.detach().double().cpu()
    head = {"head.weight": a.float(), "head.bias": c.float()}
    if model.config.dist_token:
        head |= {"head_dist.weight": head["head.weight"].clone(), "head_dist.bias": head["head.bias"].clone()}
    return head


def _base_state(model: VisionTransformer) -> dict[str, torch.Tensor]:
    """The base's tensors without its head, float32 on the CPU: those it was loaded with, or, when
    it runs in another dtype (``fast``, ``dtype``), a float32 copy loaded again from its file."""
    param = next(model.parameters())
    spec = base_spec(model.weights)
    if param.dtype != torch.float32 and spec is not None:
        model = model_for(spec)
    return {k: v.detach().float().cpu() for k, v in model.state_dict().items() if not k.startswith(HEAD_KEYS)}


def _record(base: Weights, runner: Runner, classes: tuple[str, ...], fit_: Fit, output: Path | None) -> Weights:
    source = Source(kind="file", layout="timm", filename=output.name if output else None,
                    path=str(output) if output else "(fitted in memory, not saved)")  # fmt: skip
    return replace(
        base, config=replace(base.config, num_classes=len(classes), head_bias=True), preprocess=runner.spec,
        categories=classes, source=source, metrics=None, name=None, tag=None, note=None, output="classes", fit=fit_,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# fit


def _check(output: str | os.PathLike | None, options: FitOptions) -> Path | None:
    check_run_options(batch_size=options.batch_size)
    if output is None:
        if options.head_only:
            raise FitError("head_only writes a file: give the output path")
        return None
    out = Path(output)
    if out.suffix != ".safetensors":
        raise FitError(f"{os.fspath(output)!r}: the fitted model is written to a .safetensors file")
    if out.is_dir():
        raise FitError(f"{os.fspath(output)!r} is a folder; give the output file's path")
    return out


def fit_and_report(
    train: str | os.PathLike,
    model: str | os.PathLike | VisionTransformer = DEFAULT_MODEL,
    output: str | os.PathLike | None = None,
    options: FitOptions | None = None,
) -> Fitted:
    """:func:`fit`, returning also the held-out report, the images left out and the warnings
    (what ``tinyvit fit`` prints)."""
    options = options or FitOptions()
    out = _check(output, options)
    tset = read_training_set(train)  # every input checked before the base is loaded
    vset = None if options.val is None else read_training_set(options.val, tset.classes)
    net = model_for(model, replace(options.model, preprocess=None))  # the preprocessing is the runner's
    runner = _check_base(net, options)
    base_sha = weights_sha256(net.weights)
    cache = _cache_for(runner, base_sha, out, options)
    embedded = _embed(runner, tset.files + (vset.files if vset else []), cache, options)
    x, y, errors = _features(tset, embedded, 0)
    val, val_errors = None, []
    if vset is not None:
        vx, vy, val_errors = _features(vset, embedded, len(tset.files))
        val = (vx, vy) if len(vy) else None
    counts = torch.bincount(y, minlength=len(tset.classes)).tolist()
    if not all(counts):
        empty = tset.classes[counts.index(0)]
        raise FitError(f"{tset.where}: no image of the class {empty!r} could be read")
    report = fit_probe(x, y, len(tset.classes), seed=options.seed, val=val)
    fit_ = Fit(base=base_spec(net.weights) or net.weights.spec, base_sha256=base_sha, images=tuple(counts),
               accuracy=report.accuracy, validation=report.validation, regularization=report.probe.C,
               seed=options.seed, date=datetime.date.today().isoformat(), head_only=options.head_only)  # fmt: skip
    head = _fold(net, report)
    record = _record(net.weights, runner, tset.classes, fit_, out)
    device = next(net.parameters()).device  # the file is float32; the model runs where the base ran
    fitted = Fitted(build_model(record, _base_state(net) | head, what="the fitted model", device=device), report,
                    tuple(counts), errors + val_errors, _warnings(tset, counts), embedded["embedded"],
                    embedded["cached"])  # fmt: skip
    if out is not None:
        fitted.written = _write(out, fitted.model, head, cache)
    return fitted


def _warnings(tset: TrainingSet, counts: list[int]) -> list[str]:
    few = [(name, n) for name, n in zip(tset.classes, counts, strict=True) if n < FEW_IMAGES]
    return [f"class {name!r} has only {n} image{'s' if n > 1 else ''} (fewer than {FEW_IMAGES}): too few to fit it "
            "or measure it reliably" for name, n in few]  # fmt: skip


def _write(out: Path, model: VisionTransformer, head: dict[str, torch.Tensor], cache: EmbeddingCache) -> list[Path]:
    record = model.weights
    state = head if record.fit.head_only else {k: v.detach().cpu() for k, v in model.state_dict().items()}
    written = [save(out, state, record)]
    cached = cache.write()
    return written + ([cached] if cached else [])


def fit(
    train: str | os.PathLike,
    model: str | os.PathLike | VisionTransformer = DEFAULT_MODEL,
    output: str | os.PathLike | None = None,
    *,
    options: FitOptions | None = None,
    **knobs: Any,
) -> VisionTransformer:
    """Fit a classifier on ``model``'s embeddings of the images in ``train`` and return it (an
    ordinary ViT classifier: ``model.weights.categories`` are the classes, ``model.weights.fit``
    says on what it was fitted and its held-out accuracy); with ``output``, also write it as a
    tinyvit safetensors file that ``predict``, ``eval``, ``serve`` and ``export`` load.

    ``train``: an ImageFolder tree (a subfolder of images per class, named by the class) or a CSV
    / JSON-lines file of ``path,label``. ``model``: the base, anything :func:`tinyvit.load` takes,
    or a loaded model. ``options`` (a :class:`FitOptions`) or its fields as keywords: ``val``,
    ``head_only``, ``cache``, ``seed``, ``batch_size``, ``workers``, ``progress``, and the base's
    model options (``device``, ``dtype``, ``fast``, ``preprocess``, ``arch``). Unreadable images
    are left out, with a warning; so are classes of fewer than 5 images. Bad input raises
    :class:`tinyvit.FitError` and writes nothing.
    """
    options = options or FitOptions()
    own = {f.name for f in fields(FitOptions)}
    model_options = ModelOptions.of(options.model, **{k: v for k, v in knobs.items() if k not in own})
    options = replace(options, model=model_options, **{k: v for k, v in knobs.items() if k in own})
    fitted = fit_and_report(train, model, output, options)
    for message in fitted.warnings + [f"left out: {e}" for e in fitted.errors]:
        warnings.warn(f"tinyvit: {message}", stacklevel=2)
    return fitted.model
