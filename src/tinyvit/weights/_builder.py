"""Loading, one way: a parsed spec → its checkpoint on this machine → tensors + record → the model.

:func:`load_model` reads top-down and never climbs back: ``_hub.fetch`` downloads and verifies
(nothing else), ``convert.prepare`` turns what was fetched into tensors under tinyvit's names and
a record, checked against each other (once per content: a converted file in the cache is read
instead, and a URL's is found without downloading anything), then the model is built on the meta
device with the tensors assigned, not copied (:func:`build_model`). What the user states (class
names, preprocessing, architecture) is applied on the way; devices and dtypes arrive parsed
(``run/runtime.py`` parses what users type).
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tinyvit.core.errors import OfflineError, TinyViTError, WeightsError
from tinyvit.core.fsutil import sha256_file
from tinyvit.images.spec import PreprocessSpec
from tinyvit.models.vit import VisionTransformer
from tinyvit.weights._hub import Fetched, fetch, fetch_text
from tinyvit.weights.architecture import ArchArg
from tinyvit.weights.convert import cached, prepare, prepare_text, with_overrides
from tinyvit.weights.files import weights_file_of
from tinyvit.weights.manifest import resolve
from tinyvit.weights.record import LabelsArg, Source, TextTower, Weights
from tinyvit.weights.specs import HubSpec, ModelSpec, PathSpec, UrlSpec, ZooSpec, parse_spec

if TYPE_CHECKING:
    from tinyvit.models.text import TextTransformer
    from tinyvit.text.tokenize import Tokenizer

__all__ = [
    "bare_model", "build_model", "download", "load_model", "load_text", "resolve_preprocess", "weights_record",
    "weights_sha256",
]  # fmt: skip


def load_model(
    spec: ModelSpec,
    *,
    device: torch.device | None = None,
    dtype: torch.dtype | None = None,
    labels: LabelsArg = None,
    preprocess: PreprocessSpec | None = None,
    arch: ArchArg = None,
) -> VisionTransformer:
    """The model ``spec`` names, in eval mode, with its record as ``model.weights``. ``labels``,
    ``preprocess`` and ``arch`` state what a checkpoint does not say, or override it."""
    state, record = _tensors(spec, arch)
    what = f"{record.source.location!r} ({record.source.layout} layout)"
    record = with_overrides(record, labels=labels, preprocess=preprocess, what=repr(record.source.location))
    if record.fit is not None and record.fit.head_only:
        return _with_base(record, state, what=what, device=device, dtype=dtype)
    return build_model(record, state, what=what, device=device, dtype=dtype)


def _tensors(spec: ModelSpec, arch: ArchArg, *, advise: bool = True) -> tuple[dict[str, torch.Tensor], Weights]:
    """The spec's tensors under tinyvit's names and its record: a converted file the cache has for
    a spec that names its content (no download), else fetched and prepared. ``advise``: an
    offline error says how to get the weights."""
    zoo = spec.record if isinstance(spec, ZooSpec) else None
    key = spec.content_key if isinstance(spec, (ZooSpec, UrlSpec)) else None
    if key is not None and (hit := cached(key, zoo, arch)) is not None:
        return hit
    fetched = _fetch(spec, advise)
    try:
        return prepare(fetched, arch=arch)
    except WeightsError as e:
        if zoo is None:
            raise
        raise type(e)(f"{spec}: {e}") from e
    finally:
        if fetched.temporary:
            fetched.path.unlink(missing_ok=True)


def _fetch(spec: ModelSpec, advise: bool = True) -> Fetched:
    """``fetch``, with the advice a zoo weight's offline error needs (not for `tinyvit download`
    itself: it would advise running the command that just failed)."""
    try:
        return fetch(spec)
    except OfflineError as e:
        if not isinstance(spec, ZooSpec):
            raise
        message = str(e) if str(e).startswith(str(spec)) else f"{spec}: {e}"
        if not advise:
            raise OfflineError(message) from e
        where = "the Hub" if spec.record.source.kind == "hub" else "its server"
        raise OfflineError(f"{message}. Fetch it once where {where} can be reached (`tinyvit download {spec}`), "
                           "or load a local copy by its path") from e  # fmt: skip


def load_text(
    spec: ModelSpec, *, device: torch.device | None = None, dtype: torch.dtype | None = None, arch: ArchArg = None
) -> tuple[TextTransformer, Tokenizer, TextTower]:
    """The text tower of the CLIP / SigLIP checkpoint ``spec`` names, in eval mode, with the
    tokenizer its library uses for it and its record — fetched and prepared as :func:`load_model`
    does the image tower (the same files: a Hub snapshot brings the tokenizer's). Zoo weights of an
    image tower: the text tower of the whole open_clip model their record names (``record.text``)."""
    from tinyvit.models.text import TextTransformer  # the text side: imported when text is asked for

    if isinstance(spec, ZooSpec):
        fetched, arch = _fetch_text(spec), spec.record.text.open_clip_model if spec.record.text else None
    else:
        fetched = _fetch(spec)
    try:
        state, tower, folder, open_clip_config = prepare_text(fetched, arch=arch)
    finally:
        if fetched.temporary:
            fetched.path.unlink(missing_ok=True)
    tokenizer = _tokenizer(folder, tower, open_clip_config)
    what = f"{str(fetched.path)!r} (text tower)"
    model = TextTransformer.from_state_dict(tower.config, state, what=what, device=device, dtype=dtype)
    weights = weights_file_of(fetched.path) or fetched.path
    stat = weights.stat()
    identity = fetched.key or f"file:{weights.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return model, tokenizer, replace(tower, tokenizer=tokenizer.kind, identity=identity)


def _fetch_text(spec: ZooSpec, advise: bool = True) -> Fetched:
    """The zoo entry's text tower, fetched (``_hub.fetch_text``), with the advice its errors need."""
    if spec.record.text is None:
        raise WeightsError(
            f"{spec}: an image tower only — the zoo has no text tower for these weights, so they cannot embed text "
            "or score classes (`tinyvit models` marks +text the entries that have one; or load a CLIP / SigLIP "
            "open_clip or transformers repository, hf-hub:…)"
        )
    try:
        return fetch_text(spec.record)
    except OfflineError as e:
        if not advise:
            raise
        raise OfflineError(f"{e}. Fetch it once where the Hub can be reached (`tinyvit download {spec}` fetches "
                           "both towers), or load a local copy by its path") from e  # fmt: skip


def _tokenizer(folder: Path, tower: TextTower, open_clip_config: dict | None) -> Tokenizer:
    """The tokenizer open_clip uses with its config (an open_clip checkpoint), or the one the
    transformers folder's files make."""
    from tinyvit.text.tokenize import open_clip_tokenizer, tokenizer_for_folder

    if open_clip_config is not None:
        return open_clip_tokenizer(open_clip_config, folder)
    return tokenizer_for_folder(folder, context_length=tower.config.context_length)


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
    copied (:meth:`VisionTransformer.from_state_dict`), under the record's size rule.
    """
    model = VisionTransformer.from_state_dict(
        record.config, state, size_rule=record.size_rule, what=what, device=device, dtype=dtype
    )
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
    return build_model(replace(record, size_rule=base.size_rule), state | head, what=what, device=device,
                       dtype=dtype)  # fmt: skip


def weights_sha256(record: Weights, expected: str | None = None) -> str | None:
    """The SHA-256 that names a record's weights: its source's, else that of the file it was read
    from (hashed now); with ``expected``, the file is hashed when the source's differs."""
    known = record.source.sha256
    if known is not None and expected in (None, known):
        return known
    path = weights_file_of(Path(record.source.path)) if record.source.path else None
    return sha256_file(path) if path is not None else known


def download(spec: ModelSpec) -> Path:
    """Fetch, verify and convert (where needed) weights into the caches, for offline use; returns
    the local checkpoint (a Hub repository: its snapshot folder)."""
    if isinstance(spec, PathSpec):
        raise WeightsError(f"{str(spec)!r} is a local path; there is nothing to download")
    if isinstance(spec, HubSpec):
        fetched = _fetch(spec, advise=False)
        prepare(fetched)
        return fetched.path
    path = Path(str(_tensors(spec, None, advise=False)[1].source.path))
    if isinstance(spec, ZooSpec) and spec.record.text is not None:  # both towers: classes work offline too
        _fetch_text(spec, advise=False)
    return path


def bare_model(name: str) -> VisionTransformer:
    """A zoo architecture, randomly initialised, in eval mode; its record says so."""
    record = resolve(name)
    record = replace(record, source=Source(kind="init", layout="timm"), metrics=None, tag=None, note=None)
    model = VisionTransformer(record.config, record.size_rule).init_weights()
    model.weights = record
    return model.eval()


def weights_record(spec: str | os.PathLike | ModelSpec, *, arch: ArchArg = None) -> Weights:
    """The record of the weights ``spec`` names — the zoo's, or what a checkpoint's own files say
    (fetched and prepared as ``load`` does) — without building the model."""
    parsed = parse_spec(spec)
    if isinstance(parsed, ZooSpec):
        return parsed.record
    return _tensors(parsed, arch)[1]


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
