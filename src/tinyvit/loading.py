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

import torch

from tinyvit.conversion import read_weights
from tinyvit.errors import OfflineError, TinyViTError, WeightsError
from tinyvit.fetch import Fetched, cache_dir, fetch
from tinyvit.files import read_tensors
from tinyvit.manifest import resolve
from tinyvit.model import VisionTransformer
from tinyvit.preprocessing import PreprocessSpec
from tinyvit.record import Source, Weights, parse_labels
from tinyvit.specs import ModelSpec, ZooSpec

__all__ = ["LabelsArg", "bare_model", "build_model", "load_model", "resolve_preprocess"]

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


def bare_model(name: str) -> VisionTransformer:
    """A zoo architecture, randomly initialised, in eval mode; its record says so."""
    record = resolve(name)
    record = replace(record, source=Source(kind="init", layout="timm"), metrics=None, tag=None, note=None)
    model = VisionTransformer(record.config).init_weights()
    model.weights = record
    return model.eval()


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
