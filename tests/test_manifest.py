"""weights_manifest.json: its schema, its agreement with the model, and its place in the wheel."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

import tinyvit
from tinyvit.manifest import entries, find_source, manifest_path, parse_manifest

ROOT = Path(__file__).resolve().parents[1]
RAW = json.loads((ROOT / "weights_manifest.json").read_text())


def test_installed_manifest_is_the_repository_manifest():
    assert json.loads(manifest_path().read_text()) == RAW


def test_zoo_is_the_four_models_of_the_seed_page():
    assert tinyvit.available_models() == [
        "vit-base-p32-384",
        "vit-base-p16-224",
        "vit-base-p16-384",
        "vit-large-p16-384",
    ]


@pytest.mark.parametrize("name", list(RAW["models"]))
def test_entry_params_match_the_architecture(name):
    e = entries()[name]
    with torch.device("meta"):
        model = tinyvit.VisionTransformer(e.arch)
    assert sum(p.numel() for p in model.parameters()) == e.params


def test_every_source_is_complete_and_honest():
    for e in entries().values():
        assert e.sources[0].kind == "hub" and e.sources[0].layout == "timm"  # default: timm's safetensors
        for s in e.sources:
            assert s.preprocess.crop == e.arch.image_size
            assert s.metrics_source and s.license
            if s.kind == "hub":
                assert s.repo_id and s.filename.endswith(".safetensors")
            else:
                assert s.url.startswith("https://") and s.sha256_prefix in s.url
                assert s.sha256 is None or s.sha256.startswith(s.sha256_prefix)


def test_known_checksums_are_those_of_vit_facts():
    # the only SHA-256 values known offline (VIT_FACTS.md §2); the rest stay null until pinned
    assert find_source("vit-base-p16-224:mmpretrain")[1].sha256.startswith("4c544545d506")
    assert find_source("vit-base-p16-224:orig_in21k_ft_in1k")[1].sha256.startswith("1cea07110a4a")
    assert find_source("vit-base-p32-384")[1].revision is None


def test_name_and_tag_lookup():
    e, s = find_source("vit-base-p32-384:mmpretrain")
    assert e.name == "vit-base-p32-384" and s.layout == "mmpretrain" and s.top1 == 84.01
    assert find_source("vit-base-p32-384")[1].repo_id == "timm/vit_base_patch32_384.augreg_in21k_ft_in1k"
    with pytest.raises(tinyvit.UnknownModelError, match="no weights tagged 'nope'; tags: augreg_in21k_ft_in1k"):
        find_source("vit-base-p32-384:nope")


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
        ("models/vit-base-p32-384/sources/0/preprocess/interpolation", "nearest", "interpolation"),
        ("models/vit-base-p32-384/arch/num_heads", 5, "not divisible"),
        ("format_version", 2, "format_version"),
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
    assert "tinyvit/model.py" in names
    assert not [n for n in names if n.startswith("tests/")]
