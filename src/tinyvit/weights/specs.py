"""What a user types to name weights, parsed once into a typed value (no torch here).

=====================================  ==============================================================
``vit-base-p32-384``, ``name:tag``,     :class:`ZooSpec`: weights of the zoo (``weights_manifest.json``),
an alias (``vit_base_patch32_384``)     by name, tag or alias, ignoring case; unknown names fail here
a path (``ft.pth``, ``run/``)           :class:`PathSpec`: a local checkpoint file or folder
``hf-hub:owner/repo[@revision]``        :class:`HubSpec`: a repository on the Hugging Face Hub
``https://…/vit.pth``                   :class:`UrlSpec`: a checkpoint file at a URL
=====================================  ==============================================================

The loader dispatches on the type; nothing else looks at the string again.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from tinyvit.core.errors import WeightsError
from tinyvit.weights.manifest import resolve
from tinyvit.weights.record import Weights

__all__ = ["HubSpec", "ModelSpec", "PathSpec", "UrlSpec", "ZooSpec", "parse_spec"]

CHECKPOINT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".npz")
_HEX_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")  # torch.hub's convention: name-<sha256 prefix>.pth


@dataclass(frozen=True)
class ZooSpec:
    """Zoo weights: their record, as the manifest gives it."""

    record: Weights

    def __str__(self) -> str:
        return self.record.spec

    @property
    def content_key(self) -> str | None:
        """The identity of the content it names, known without the network (a URL file's pinned
        SHA-256), or None (a Hub file: its content is known once fetched)."""
        src = self.record.source
        return f"zoo:{self.record.spec}:{src.sha256 or src.sha256_prefix or ''}" if src.kind == "url" else None


@dataclass(frozen=True)
class PathSpec:
    """A local checkpoint: a file, or a folder (``save_pretrained``, a Hub snapshot)."""

    path: Path

    def __str__(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class HubSpec:
    """A repository on the Hugging Face Hub, at a revision (None: the default branch)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf-hub:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class UrlSpec:
    """A checkpoint file at an http(s) URL. ``sha256_prefix``: the hex digits its file name ends
    with (torch.hub's ``name-<sha256 prefix>.pth`` convention), which the download must match."""

    url: str
    sha256_prefix: str | None = None

    def __str__(self) -> str:
        return self.url

    @property
    def content_key(self) -> str:
        """What is downloaded from the URL, known by the URL (a converted copy is kept by it)."""
        return f"url:{self.url}"


ModelSpec = ZooSpec | PathSpec | HubSpec | UrlSpec


def parse_spec(spec: str | os.PathLike | ModelSpec) -> ModelSpec:
    """The typed value of what a user typed (see the module docstring); a zoo name that the
    manifest does not know raises :class:`~tinyvit.core.errors.UnknownModelError` now."""
    if isinstance(spec, (ZooSpec, PathSpec, HubSpec, UrlSpec)):
        return spec
    if isinstance(spec, os.PathLike):
        return PathSpec(Path(spec))
    if not isinstance(spec, str):
        raise TypeError(f"a model is named by a string, a path or 'hf-hub:owner/repo', not {type(spec).__name__}")
    if spec.startswith("hf-hub:"):
        repo_id, _, revision = spec.removeprefix("hf-hub:").partition("@")
        if repo_id.count("/") != 1 or not all(repo_id.split("/")):
            raise WeightsError(f"{spec!r}: expected hf-hub:owner/repo[@revision]")
        return HubSpec(repo_id, revision or None)
    if spec.split("://", 1)[0].lower() in ("http", "https"):
        m = _HEX_IN_NAME.search(spec.split("?", 1)[0])
        return UrlSpec(spec, m.group(1) if m else None)
    if Path(spec).exists() or spec.endswith(CHECKPOINT_SUFFIXES) or os.sep in spec:
        return PathSpec(Path(spec))
    return ZooSpec(resolve(spec))
