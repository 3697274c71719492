"""weights_manifest.json: its schema, its agreement with the model, and its place in the wheel."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import tinyvit
from tinyvit.images.spec import SIZE_RULES
from tinyvit.weights.manifest import entries, manifest_path, parse_manifest, resolve
from tinyvit.weights.record import imagenet_classes

ROOT = Path(__file__).resolve().parents[1]
RAW = json.loads((ROOT / "weights_manifest.json").read_text())


def test_installed_manifest_is_the_repository_manifest():
    assert json.loads(manifest_path().read_text()) == RAW


def test_zoo_starts_with_the_four_models_of_the_seed_page_then_the_families():
    assert tinyvit.available_models()[:4] == [
        "vit-base-p32-384",
        "vit-base-p16-224",
        "vit-base-p16-384",
        "vit-large-p16-384",
    ]
    families = {w.name.split("-")[0] for e in entries().values() for w in e.weights}
    assert {"deit", "deit3", "dinov2", "clip", "siglip"} <= families


@pytest.mark.parametrize("name", list(RAW["models"]))
def test_entry_params_match_the_architecture(name):
    e = entries()[name]
    with torch.device("meta"):
        model = tinyvit.VisionTransformer(e.arch)
    assert sum(p.numel() for p in model.parameters()) == e.params


def test_every_record_is_complete_and_honest():
    for e in entries().values():
        default = e.weights[0].source
        assert default.kind == "hub" and default.layout == "timm"  # default: timm's safetensors
        for w in e.weights:
            s = w.source
            assert w.config == e.arch and w.name == e.name
            assert w.size_rule == SIZE_RULES[s.layout]  # other sizes: as their library does
            assert w.preprocess.crop == e.arch.image_size and w.license
            if w.output == "classes":  # classifiers: ImageNet's classes, the accuracy and who published it
                assert w.categories == imagenet_classes().names and w.metrics.source
                assert e.arch.num_classes == 1000
            else:  # embedding models: no classes; the embedding is the head's output or the pooled feature
                assert w.categories is None and (w.metrics is None or w.metrics.source)
            if s.kind == "hub":
                assert s.repo_id and s.filename.endswith(".safetensors")
            else:
                assert s.url.startswith("https://") and s.sha256_prefix in s.url
                assert s.sha256 is None or s.sha256.startswith(s.sha256_prefix)


def test_record_round_trips_through_json():
    for e in entries().values():
        for w in e.weights:
            assert tinyvit.Weights.from_json(w.to_json()) == w


def test_pins_agree_with_what_their_sources_say_and_the_readme_counts_them():
    # What is pinned must be well formed and agree with what the source itself states (the
    # SHA-256 prefix torch.hub-style file names carry); pinning more (scripts/pin_manifest.py) is
    # fine, and the README's sentence on what is pinned must follow.
    sources = [w.source for e in entries().values() for w in e.weights]
    for s in sources:
        assert s.revision is None or re.fullmatch(r"[0-9a-f]{40}", s.revision), s
        assert s.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", s.sha256), s
        if s.kind == "url":
            named = re.search(r"-([0-9a-f]{8})\.pth$", s.url).group(1)
            assert s.sha256_prefix == named and (s.sha256 is None or s.sha256.startswith(named)), s
    pinned = sum(s.sha256 is not None for s in sources)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert f"({pinned} of its\n  {len(sources)} sources pin one today)" in readme


def test_name_and_tag_lookup():
    w = resolve("vit-base-p32-384:mmpretrain")
    assert w.name == "vit-base-p32-384" and w.source.layout == "mmpretrain" and w.metrics.top1 == 84.01
    assert resolve("vit-base-p32-384").source.repo_id == "timm/vit_base_patch32_384.augreg_in21k_ft_in1k"
    assert resolve("ViT-Base-P32-384:MMPretrain") == w  # case does not matter
    with pytest.raises(tinyvit.UnknownModelError, match="no weights tagged 'nope'.*tags: augreg_in21k_ft_in1k"):
        resolve("vit-base-p32-384:nope")
    with pytest.raises(tinyvit.UnknownModelError, match="'mmpretrian'; did you mean 'mmpretrain'"):
        resolve("vit-base-p32-384:mmpretrian")
    with pytest.raises(tinyvit.UnknownModelError, match="'vit-base-p32-348'; did you mean 'vit-base-p32-384'"):
        resolve("vit-base-p32-348")
    with pytest.raises(tinyvit.UnknownModelError, match="did you mean 'vit_base_patch16_384'"):
        resolve("vit_base_patch16_348")


NAMES = json.loads((ROOT / "tests" / "fixtures" / "names.json").read_text())


@pytest.mark.parametrize("name", sorted(NAMES["mmpretrain"]))
def test_mmpretrain_names_resolve_to_the_same_checkpoint(name):
    """Each mmpretrain model name whose checkpoint (per mmpretrain itself) is a zoo weight's URL."""
    w = resolve(name)
    assert w.source.url == NAMES["mmpretrain"][name] and w.tag == "mmpretrain"
    assert resolve(name.upper()) == w


@pytest.mark.parametrize("name", sorted(NAMES["timm"]) + sorted(NAMES["timm_default"]))
def test_timm_names_resolve_to_the_same_hub_repository(name):
    """timm's 'architecture.tag' names, and bare architecture names (timm's default tag)."""
    repo = NAMES["timm"].get(name) or NAMES["timm_default"][name]
    assert resolve(name).source.repo_id == repo


def test_every_alias_is_listed_and_resolves():
    aliases = tinyvit.list_models(aliases=True)
    for name in [*NAMES["mmpretrain"], *NAMES["timm"], *NAMES["timm_default"]]:
        assert name in aliases
    for alias in aliases:
        resolve(alias)


def _broken(path: str, value):
    data = copy.deepcopy(RAW)
    *parents, last = path.split("/")
    node = data
    for p in parents:
        node = node[int(p)] if p.isdigit() else node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("models/vit-base-p32-384/params", KeyError, "missing params"),
        ("models/vit-base-p32-384/sources/0/kind", "ftp", "kind must be"),
        ("models/vit-base-p32-384/sources/0/layout", "keras", "layout must be"),
        ("models/vit-base-p32-384/sources/0/sha256", "abc", "hex SHA-256"),
        ("models/vit-base-p32-384/sources/0/revision", "main", "40-hex commit"),
        ("models/vit-base-p32-384/sources/0/top1", 840.1, "percentage"),
        ("models/vit-base-p32-384/sources/0/colour", "red", "unknown field"),
        ("models/vit-base-p32-384/sources/1/sha256", "f" * 64, "does not start with sha256_prefix"),
        ("models/vit-base-p32-384/sources/0/preprocess/interpolation", "area", "interpolation"),
        ("models/vit-base-p32-384/arch/num_heads", 5, "not divisible"),
        ("format_version", 1, "format_version"),
        ("models/vit-base-p32-384/aliases/vit_base_patch32_384", "nope", "unknown tag"),
        ("models/vit-base-p16-224/aliases/VIT-BASE-P32-384", "mmpretrain", "defined twice"),
    ],
)
def test_schema_violations_are_rejected(path, value, message):
    with pytest.raises(ValueError, match=message):
        parse_manifest(_broken(path, value))


def test_wheel_ships_the_manifest(tmp_path):
    """A non-editable install finds the manifest: it is inside the built wheel."""
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)]
    subprocess.run(cmd, check=True, capture_output=True)
    (wheel,) = tmp_path.glob("tinyvit-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert json.loads(z.read("tinyvit/weights_manifest.json")) == RAW
        names = z.namelist()
    for module in ("models/vit.py", "weights/timm_archs.json", "imagenet1k_classes.txt", "deploy/cli.py"):
        assert f"tinyvit/{module}" in names
    assert not [n for n in names if n.startswith("tests/")]


@pytest.mark.parametrize(
    "argv",
    [None, ["models"], ["models", "vit_base_patch16_384", "--json"], ["--help"], ["--version"], ["predict", "-h"]],
)
def test_names_help_and_version_never_import_torch(argv, tmp_path):
    """The torch-free bottom layer: listing, resolving and describing weights, and the CLI's help."""
    if argv is None:
        code = (
            "import sys, tinyvit\n"
            "tinyvit.list_models(); tinyvit.list_models(tags=True, aliases=True)\n"
            "from tinyvit.weights.manifest import resolve; resolve('vit-base-p16_32xb128-mae_in1k').describe()\n"
        )
    else:
        code = (f"import sys\nfrom tinyvit.deploy.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n"
                "    pass\n")  # fmt: skip
    code += "assert 'torch' not in sys.modules, 'torch was imported'\n"
    env = {**__import__("os").environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
