"""Loading: a parsed spec → its local source → tensors + weights record → the model.

Read top-down: :func:`load_model` asks ``fetch`` for the local file, ``conversion`` (or, for the
zoo's own files, ``files``) for the tensors under timm's names and their record, and builds the
model on the meta device with the tensors assigned, not copied (:func:`build_model`). Device and
dtype arrive parsed (``runtime.py`` parses what users type).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from tinyvit.core.errors import OfflineError, TinyViTError, WeightsError
from tinyvit.core.fsutil import sha256_file
from tinyvit.images.spec import PreprocessSpec
from tinyvit.models.vit import VisionTransformer
from tinyvit.weights._hub import Fetched, cache_dir, fetch
from tinyvit.weights.convert import read_weights
from tinyvit.weights.files import WEIGHTS_FILES, read_tensors
from tinyvit.weights.manifest import resolve
from tinyvit.weights.record import Source, Weights, parse_labels
from tinyvit.weights.specs import ModelSpec, ZooSpec, parse_spec

__all__ = [
    "LabelsArg", "bare_model", "build_model", "load_model", "resolve_preprocess", "weights_record", "weights_sha256",
]

LabelsArg = str | os.PathLike | Sequence[str] | None


def load_model(
    spec: ModelSpec,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    labels: LabelsArg = None,
    preprocess: PreprocessSpec | None = None,
) -> VisionTransformer:
    """The model ``spec`` names, in eval mode, with its record as ``model.weights``. ``labels`` and
    ``preprocess`` state what a checkpoint does not say, or override it."""
    try:
        fetched = fetch(spec)
    except OfflineError as e:
        if not isinstance(spec, ZooSpec):
            raise
        raise OfflineError(
            f"{spec}: {e}. Fetch it once where the Hub can be reached (`tinyvit download {spec}`), "
            "or load a local copy by its path"
        ) from e
    try:
        state, record = _read(fetched, labels, preprocess)
        what = f"{str(fetched.path)!r} ({record.source.layout} layout)"
        if record.fit is not None and record.fit.head_only:
            return _with_base(record, state, what=what, device=device, dtype=dtype)
        return build_model(record, state, what=what, device=device, dtype=dtype)
    except WeightsError as e:
        if not isinstance(spec, ZooSpec):
            raise
        note = ""
        if cache_dir() in fetched.path.resolve().parents:  # our own converted copy went bad: fetch it afresh
            fetched.path.unlink(missing_ok=True)
            note = "; the cached file was removed, load again to fetch it afresh"
        raise WeightsError(f"{spec}: {e}{note}") from e


def _read(fetched: Fetched, labels: LabelsArg, preprocess: PreprocessSpec | None) -> tuple[dict, Weights]:
    """The tensors under timm's names and their record: the zoo's own file and record as they are,
    any other checkpoint through ``conversion`` (which reads what its files say)."""
    if fetched.record is not None:
        categories = None if labels is None else parse_labels(labels)
        return read_tensors(fetched.path), fetched.record.with_overrides(categories=categories, preprocess=preprocess)
    state, record = read_weights(fetched.path, labels=labels, preprocess=preprocess)
    if fetched.origin:
        record = replace(record, source=replace(record.source, **fetched.origin))
    return state, record


def build_model(
    record: Weights,
    state: dict[str, torch.Tensor],
    *,
    what: str,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> VisionTransformer:
    """The model in eval mode with ``state`` as its parameters and ``record`` as ``model.weights``.

    Built on the meta device (no random initialisation), then the tensors are assigned, not
    copied (:meth:`VisionTransformer.from_state_dict`).
    """
    model = VisionTransformer.from_state_dict(record.config, state, what=what, device=device, dtype=dtype)
    model.weights = record
    return model


def _with_base(
    record: Weights, head: dict[str, torch.Tensor], *, what: str, device: torch.device | None,
    dtype: torch.dtype | None,
) -> VisionTransformer:
    """A head-only file (``tinyvit fit --head-only``): the base its record names, loaded (a file
    that has moved is looked for beside the head's file), with this head in place of its own."""
    fit = record.fit
    assert fit is not None
    spec = fit.base
    beside = Path(str(record.source.path)).parent / Path(spec).name
    if Path(spec).is_absolute() and not Path(spec).exists() and beside.is_file():
        spec = str(beside)
    try:
        base = load_model(parse_spec(spec), device=device, dtype=dtype)
    except TinyViTError as e:
        raise WeightsError(f"{what}: holds only a head; its base {fit.base} cannot be loaded: {e}") from e
    sha = weights_sha256(base.weights, fit.base_sha256) if base.weights is not None else None
    if fit.base_sha256 is not None and sha != fit.base_sha256:
        raise WeightsError(f"{what}: its head was fitted on {fit.base} with SHA-256 {fit.base_sha256[:12]}…, but "
                           f"that base now has {str(sha)[:12]}…; fit the head again")  # fmt: skip
    state = {k: v for k, v in base.state_dict().items() if not k.startswith(("head.", "head_dist."))}
    return build_model(record, state | head, what=what, device=device, dtype=dtype)


def weights_sha256(record: Weights, expected: str | None = None) -> str | None:
    """The SHA-256 that names a record's weights: its source's, else that of the file it was read
    from (hashed now); with ``expected``, the file is hashed when the source's differs."""
    known = record.source.sha256
    if known is not None and expected in (None, known):
        return known
    path = Path(record.source.path) if record.source.path else None
    if path is not None and path.is_dir():
        path = next((path / n for n in WEIGHTS_FILES if (path / n).is_file()), None)
    return sha256_file(path) if path is not None and path.is_file() else known


def bare_model(name: str) -> VisionTransformer:
    """A zoo architecture, randomly initialised, in eval mode; its record says so."""
    record = resolve(name)
    record = replace(record, source=Source(kind="init", layout="timm"), metrics=None, tag=None, note=None)
    model = VisionTransformer(record.config).init_weights()
    model.weights = record
    return model.eval()


def weights_record(spec: str | os.PathLike | ModelSpec) -> Weights:
    """The record of the weights ``spec`` names — the zoo's, or what a checkpoint's own files say
    (fetched as ``load`` fetches them) — without building the model."""
    parsed = parse_spec(spec)
    if isinstance(parsed, ZooSpec):
        return parsed.record
    return _read(fetch(parsed), None, None)[1]


def resolve_preprocess(spec: str | os.PathLike | PreprocessSpec | torch.nn.Module | Weights) -> PreprocessSpec:
    """A spec; what ``load`` takes — a zoo name or ``"name:tag"``, a checkpoint file or folder,
    ``hf-hub:owner/repo`` — (its weights' preprocessing); a record, or a loaded model (its
    record's preprocessing)."""
    if isinstance(spec, PreprocessSpec):
        return spec
    if isinstance(spec, (str, os.PathLike)):
        spec = weights_record(spec)
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
