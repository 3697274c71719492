"""The model zoo, read from ``weights_manifest.json``: one entry per model, one :class:`Weights`
record per published weight, and the names people already type for them (aliases).

Name resolution ignores case. ``"vit-base-p32-384"`` is the model's default weights,
``"vit-base-p32-384:mmpretrain"`` a tagged one, and every alias the manifest lists (mmpretrain's
model names, timm's ``architecture.tag`` names) resolves to the weights it names. An unknown name
or tag raises :class:`UnknownModelError` with the closest known names. No torch here.
"""

from __future__ import annotations

import difflib
import functools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import UnknownModelError
from tinyvit.images.spec import PreprocessSpec, size_rule
from tinyvit.weights.record import LAYOUTS, NAMED_LABEL_SETS, OPEN_CLIP_FILES, Metrics, Source, TextSource, Weights

__all__ = [
    "ModelEntry",
    "UnknownModelError",
    "available_models",
    "entries",
    "entry",
    "list_models",
    "manifest_path",
    "markdown_table",
    "zoo_rows",
    "parse_manifest",
    "resolve",
]

_HEX = set("0123456789abcdef")


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    arch: ViTConfig
    params: int
    gmacs: float
    gmacs_source: str
    license: str
    weights: tuple[Weights, ...]  # the first is the default
    aliases: tuple[tuple[str, str], ...]  # (alias, tag) pairs, in manifest order

    @property
    def output(self) -> str:
        """``"classes"`` (a classifier) or ``"embedding"`` (an image embedding model)."""
        return self.weights[0].output

    @property
    def tags(self) -> list[str]:
        return [w.tag for w in self.weights]  # type: ignore[misc]

    def get(self, tag: str | None = None) -> Weights:
        """The weights tagged ``tag`` (case-insensitive), or the default ones."""
        if tag is None:
            return self.weights[0]
        for w in self.weights:
            if str(w.tag).lower() == tag.lower():
                return w
        close = difflib.get_close_matches(tag.lower(), [t.lower() for t in self.tags], n=2, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(self._tag(c)) for c in close)}?" if close else ""
        raise UnknownModelError(
            f"model {self.name!r} has no weights tagged {tag!r}{hint} (tags: {', '.join(self.tags)})"
        )

    def _tag(self, lowered: str) -> str:
        return next(t for t in self.tags if t.lower() == lowered)

    def aliases_of(self, tag: str | None) -> list[str]:
        """The aliases that resolve to the weights tagged ``tag``."""
        return [alias for alias, t in self.aliases if t == tag]


def manifest_path() -> Path:
    """The installed manifest (inside the wheel), or the repository's in a source checkout."""
    packaged = resources.files("tinyvit") / "weights_manifest.json"
    if packaged.is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[3] / "weights_manifest.json"


# ---------------------------------------------------------------------------------------------
# Parsing


def _check_sha(value: str | None, what: str, length: int | None = 64) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not set(value) <= _HEX or (length and len(value) != length):
        raise ValueError(f"{what}: expected a lower-case hex SHA-256, got {value!r}")


def _parse_weights(model: str, m: dict, arch: ViTConfig, categories: tuple[str, ...] | None, d: dict) -> Weights:
    where = f"manifest entry {model!r}, weights {d.get('tag')!r}"
    common = {"tag", "kind", "layout", "preprocess", "top1", "top5", "metrics_source", "license", "sha256", "note",
              "text"}  # fmt: skip
    per_kind = {"hub": {"repo_id", "filename", "revision"}, "url": {"url", "sha256_prefix"}}
    kind = d.get("kind")
    if kind not in per_kind:
        raise ValueError(f"{where}: kind must be 'hub' or 'url', got {kind!r}")
    allowed = common | per_kind[kind]
    required = allowed - {"note", "sha256_prefix", "text"}
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
    try:
        metrics = None if d["metrics_source"] is None else Metrics(d["top1"], d["top5"], d["metrics_source"])
        text = None if d.get("text") is None else _parse_text(d["text"], where)
        source = Source(
            kind=kind, layout=d["layout"], repo_id=d.get("repo_id"), filename=d.get("filename"),
            revision=d.get("revision"), url=d.get("url"), sha256=d["sha256"], sha256_prefix=d.get("sha256_prefix"),
        )  # fmt: skip
        return Weights(
            config=arch,
            preprocess=PreprocessSpec.from_dict(d["preprocess"]),
            categories=categories,
            source=source,
            metrics=metrics,
            name=model,
            tag=d["tag"],
            license=d["license"],
            note=d.get("note"),
            output=m.get("output", "classes"),
            size_rule=size_rule(d["layout"], registers=arch.reg_tokens > 0, pos_embed=arch.use_abs_pos_emb),
            text=text,
        )
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{where}: {e}") from e


def _parse_text(d: dict, where: str) -> TextSource:
    """A weight's ``text``: the open_clip repository of the whole model, as open_clip names it."""
    if missing := sorted({"repo_id", "open_clip_model", "provenance"} - set(d)):
        raise ValueError(f"{where}: text: missing {', '.join(missing)}")
    _check_sha(d.get("sha256"), f"{where}: text.sha256")
    if d.get("filename") not in (None, *OPEN_CLIP_FILES):
        raise ValueError(f"{where}: text.filename must be one of {OPEN_CLIP_FILES} or absent")
    revision = d.get("revision")
    if revision is not None and not (len(revision) == 40 and set(revision) <= _HEX):
        raise ValueError(f"{where}: text.revision must be a 40-hex commit hash or null")
    return TextSource.from_dict(d)


def parse_manifest(data: dict) -> dict[str, ModelEntry]:
    """Validate the manifest's structure and build its entries (raises ValueError)."""
    if data.get("format_version") != 2:
        raise ValueError(f"unsupported manifest format_version {data.get('format_version')!r}")
    out: dict[str, ModelEntry] = {}
    seen: dict[str, str] = {}  # lower-cased name or alias → where it is defined
    for name, m in data["models"].items():
        keys = {"description", "arch", "params", "gmacs", "gmacs_source", "labels", "license", "sources", "aliases"}
        if missing := sorted(keys - set(m)):
            raise ValueError(f"manifest entry {name!r}: missing {', '.join(missing)}")
        if extra := sorted(set(m) - keys - {"output"}):
            raise ValueError(f"manifest entry {name!r}: unknown field(s) {', '.join(extra)}")
        if not m["sources"]:
            raise ValueError(f"manifest entry {name!r}: no weight sources")
        if m["labels"] is not None and m["labels"] not in NAMED_LABEL_SETS:
            raise ValueError(f"manifest entry {name!r}: labels must be null or one of {sorted(NAMED_LABEL_SETS)}")
        arch = ViTConfig.from_dict(m["arch"])
        categories = None if m["labels"] is None else NAMED_LABEL_SETS[m["labels"]]().names
        weights = tuple(_parse_weights(name, m, arch, categories, s) for s in m["sources"])
        tags = [w.tag for w in weights]
        if len({t.lower() for t in tags}) != len(tags) or any(":" in t for t in tags):
            raise ValueError(f"manifest entry {name!r}: tags must be unique (ignoring case) and contain no ':'")
        for alias, tag in m["aliases"].items():
            if tag not in tags:
                raise ValueError(f"manifest entry {name!r}: alias {alias!r} names unknown tag {tag!r}")
        for key in [name, *m["aliases"]]:
            if ":" in key or key.lower() in seen:
                raise ValueError(f"manifest: name {key!r} is defined twice or contains ':'")
            seen[key.lower()] = name
        out[name] = ModelEntry(
            name=name,
            description=m["description"],
            arch=arch,
            params=m["params"],
            gmacs=m["gmacs"],
            gmacs_source=m["gmacs_source"],
            license=m["license"],
            weights=weights,
            aliases=tuple(m["aliases"].items()),
        )
    return out


@functools.cache
def entries() -> dict[str, ModelEntry]:
    with open(manifest_path(), encoding="utf-8") as f:
        return parse_manifest(json.load(f))


# ---------------------------------------------------------------------------------------------
# Names


@functools.cache
def _names() -> dict[str, tuple[str, str | None]]:
    """Every name a user may type, lower-cased → (model, tag or None for the default)."""
    names: dict[str, tuple[str, str | None]] = {}
    for name, e in entries().items():
        names[name.lower()] = (name, None)
        for alias, tag in e.aliases:
            names[alias.lower()] = (name, tag)
    return names


def _suggest(typed: str) -> str:
    spellings = {k.lower(): k for e in entries().values() for k in [e.name, *(a for a, _ in e.aliases)]}
    close = difflib.get_close_matches(typed.lower(), list(spellings), n=3, cutoff=0.6)
    return f"; did you mean {', '.join(repr(spellings[c]) for c in close)}?" if close else ""


def entry(name: str) -> ModelEntry:
    """The zoo entry of a model name or alias (case-insensitive)."""
    hit = _names().get(name.lower())
    if hit is None:
        raise UnknownModelError(
            f"unknown model {name!r}{_suggest(name)} (models: {', '.join(entries())}; `tinyvit models` lists them)"
        )
    return entries()[hit[0]]


def resolve(spec: str) -> Weights:
    """``"name"``, ``"name:tag"`` or an alias (case-insensitive) → its weights record."""
    name, _, tag = spec.partition(":")
    hit = _names().get(name.lower())
    if hit is None:
        raise UnknownModelError(
            f"unknown model {name!r}{_suggest(name)} (models: {', '.join(entries())}; `tinyvit models` lists them)"
        )
    model, alias_tag = hit
    e = entries()[model]
    if tag and alias_tag and tag.lower() != alias_tag.lower():
        raise UnknownModelError(f"{name!r} already names the weights {model}:{alias_tag}; drop ':{tag}'")
    return e.get(tag or alias_tag)


def available_models() -> list[str]:
    """Names of the zoo's models, as :func:`tinyvit.load` and :func:`tinyvit.get_model` take them."""
    return list(entries())


def list_models(*, tags: bool = False, aliases: bool = False) -> list[str]:
    """The zoo's model names; with ``tags=True`` every weight as ``"name:tag"``, defaults first;
    with ``aliases=True`` also every other name that resolves (mmpretrain's, timm's)."""
    names = [f"{name}:{t}" for name, e in entries().items() for t in e.tags] if tags else available_models()
    if aliases:
        names += [alias for e in entries().values() for alias, _ in e.aliases]
    return names


# ---------------------------------------------------------------------------------------------
# The zoo as a table (``tinyvit models``, the README)


def zoo_rows() -> list[dict]:
    """One row per weight of the zoo, classifiers first, then image embedding models, defaults
    first within each model: name, tag, what it gives, size, accuracy, where the file is, and the
    aliases that resolve to it."""
    rows = []
    for name, e in sorted(entries().items(), key=lambda item: item[1].output != "classes"):
        for i, w in enumerate(e.weights):
            m, c = w.metrics, w.config
            gives = "ImageNet-1k classes" if w.output == "classes" else f"embedding ({c.num_classes or c.embed_dim})"
            gives += " + text tower (zero-shot classes)" if w.text is not None else ""
            rows.append({
                "name": name, "tag": w.tag, "default": i == 0, "output": w.output, "gives": gives,
                "params": e.params, "gmacs": e.gmacs,
                "top1": m.top1 if m else None, "top5": m.top5 if m else None, "metrics_source": m.source if m else "",
                "weights": w.source.location, "layout": w.source.layout, "size_mb": round(e.params * 4 / 1e6),
                "aliases": e.aliases_of(w.tag), "text": None if w.text is None else w.text.location,
            })  # fmt: skip
    return rows


def markdown_table() -> str:
    """The README's model tables (classifiers, then image embedding models), from the manifest."""
    lines = []
    for output, title in (("classes", "Classifiers"), ("embedding", "Image embedding models")):
        lines += [
            f"**{title}**", "",
            "| model | weights (tag) | gives | params | GMACs | top-1 | top-5 | accuracy from | file | also known as |",
            "|---|---|---|---:|---:|---:|---:|---|---|---|",
        ]  # fmt: skip
        lines += [_markdown_row(r) for r in zoo_rows() if r["output"] == output] + [""]
    return "\n".join(lines).rstrip()


def _markdown_row(r: dict) -> str:
    tag = f"`{r['tag']}`" + (" (default)" if r["default"] else "")
    top1 = "—" if r["top1"] is None else f"{r['top1']}"
    top5 = "—" if r["top5"] is None else f"{r['top5']}"
    where = r["weights"].removeprefix("hf://").rsplit("/", 1)[0] if r["weights"].startswith("hf://") else "OpenMMLab"
    aliases = ", ".join(f"`{a}`" for a in r["aliases"]) or "—"
    return (
        f"| `{r['name']}` | {tag} | {r['gives']} | {r['params'] / 1e6:.2f} M | {r['gmacs']:.2f} | {top1} | {top5} "
        f"| {r['metrics_source'] or '—'} | {where} ({r['layout']}) | {aliases} |"
    )
