"""The model zoo, read from ``weights_manifest.json``: one entry per model, one record per weight
source (its location, checksum, layout, preprocessing and published accuracy)."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tinyvit.errors import TinyViTError
from tinyvit.model import ViTConfig
from tinyvit.preprocessing import PreprocessSpec

__all__ = ["ModelEntry", "WeightSource", "UnknownModelError", "entries", "find_source", "manifest_path"]

LAYOUTS = ("timm", "hf", "mmpretrain", "npz")
_HEX = set("0123456789abcdef")


class UnknownModelError(TinyViTError, ValueError):
    """A model name or tag that the manifest does not list."""


@dataclass(frozen=True)
class WeightSource:
    tag: str
    kind: str  # "hub" | "url"
    layout: str  # one of LAYOUTS
    preprocess: PreprocessSpec
    top1: float | None
    top5: float | None
    metrics_source: str
    license: str
    repo_id: str | None = None  # hub
    filename: str | None = None  # hub
    revision: str | None = None  # hub; None: not pinned yet (scripts/pin_manifest.py)
    url: str | None = None  # url
    sha256: str | None = None  # None: not known yet
    sha256_prefix: str | None = None  # url: the start of the SHA-256 given in the file name
    note: str | None = None

    @property
    def location(self) -> str:
        return f"hf://{self.repo_id}/{self.filename}" if self.kind == "hub" else str(self.url)


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    arch: ViTConfig
    params: int
    gmacs: float
    gmacs_source: str
    labels: str
    license: str
    sources: tuple[WeightSource, ...]  # the first is the default
    mmpretrain_name: str | None = None

    def source(self, tag: str | None = None) -> WeightSource:
        if tag is None:
            return self.sources[0]
        for s in self.sources:
            if s.tag == tag:
                return s
        tags = ", ".join(s.tag for s in self.sources)
        raise UnknownModelError(f"model {self.name!r} has no weights tagged {tag!r}; tags: {tags}")


def manifest_path() -> Path:
    """The installed manifest (inside the wheel), or the repository's in a source checkout."""
    packaged = resources.files("tinyvit") / "weights_manifest.json"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[2] / "weights_manifest.json"


def _check_sha(value: str | None, what: str, length: int | None = 64) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not set(value) <= _HEX or (length and len(value) != length):
        raise ValueError(f"{what}: expected a lower-case hex SHA-256, got {value!r}")


def _parse_source(model: str, d: dict) -> WeightSource:
    where = f"manifest entry {model!r}, source {d.get('tag')!r}"
    common = {"tag", "kind", "layout", "preprocess", "top1", "top5", "metrics_source", "license", "sha256", "note"}
    per_kind = {"hub": {"repo_id", "filename", "revision"}, "url": {"url", "sha256_prefix"}}
    kind = d.get("kind")
    if kind not in per_kind:
        raise ValueError(f"{where}: kind must be 'hub' or 'url', got {kind!r}")
    allowed = common | per_kind[kind]
    required = allowed - {"note", "sha256_prefix"}
    if missing := sorted(required - set(d)):
        raise ValueError(f"{where}: missing {', '.join(missing)}")
    if extra := sorted(set(d) - allowed):
        raise ValueError(f"{where}: unknown field(s) {', '.join(extra)}")
    if d["layout"] not in LAYOUTS:
        raise ValueError(f"{where}: layout must be one of {LAYOUTS}, got {d['layout']!r}")
    _check_sha(d["sha256"], f"{where}: sha256")
    _check_sha(d.get("sha256_prefix"), f"{where}: sha256_prefix", length=None)
    if d.get("sha256") and d.get("sha256_prefix") and not d["sha256"].startswith(d["sha256_prefix"]):
        raise ValueError(f"{where}: sha256 does not start with sha256_prefix")
    if kind == "hub" and d["revision"] is not None and not (len(d["revision"]) == 40 and set(d["revision"]) <= _HEX):
        raise ValueError(f"{where}: revision must be a 40-hex commit hash or null")
    for metric in ("top1", "top5"):
        if d[metric] is not None and not 0 < d[metric] <= 100:
            raise ValueError(f"{where}: {metric} must be a percentage or null")
    fields = {k: v for k, v in d.items() if k != "preprocess"}
    return WeightSource(preprocess=PreprocessSpec.from_dict(d["preprocess"]), **fields)


def parse_manifest(data: dict) -> dict[str, ModelEntry]:
    """Validate the manifest's structure and build its entries (raises ValueError)."""
    if data.get("format_version") != 1:
        raise ValueError(f"unsupported manifest format_version {data.get('format_version')!r}")
    out = {}
    for name, m in data["models"].items():
        keys = {"description", "arch", "params", "gmacs", "gmacs_source", "labels", "license", "sources"}
        if missing := sorted(keys - set(m)):
            raise ValueError(f"manifest entry {name!r}: missing {', '.join(missing)}")
        if extra := sorted(set(m) - keys - {"mmpretrain_name"}):
            raise ValueError(f"manifest entry {name!r}: unknown field(s) {', '.join(extra)}")
        if not m["sources"]:
            raise ValueError(f"manifest entry {name!r}: no weight sources")
        sources = tuple(_parse_source(name, s) for s in m["sources"])
        tags = [s.tag for s in sources]
        if len(set(tags)) != len(tags) or any(":" in t for t in tags):
            raise ValueError(f"manifest entry {name!r}: tags must be unique and contain no ':'")
        out[name] = ModelEntry(
            name=name,
            description=m["description"],
            arch=ViTConfig.from_dict(m["arch"]),
            params=m["params"],
            gmacs=m["gmacs"],
            gmacs_source=m["gmacs_source"],
            labels=m["labels"],
            license=m["license"],
            sources=sources,
            mmpretrain_name=m.get("mmpretrain_name"),
        )
    return out


@functools.cache
def entries() -> dict[str, ModelEntry]:
    with open(manifest_path(), encoding="utf-8") as f:
        return parse_manifest(json.load(f))


def entry(name: str) -> ModelEntry:
    try:
        return entries()[name]
    except KeyError:
        known = ", ".join(entries())
        raise UnknownModelError(f"unknown model {name!r}; available: {known}") from None


def find_source(spec: str) -> tuple[ModelEntry, WeightSource]:
    """``"name"`` (default weights) or ``"name:tag"`` → its entry and weight source."""
    name, _, tag = spec.partition(":")
    model = entry(name)
    return model, model.source(tag or None)
