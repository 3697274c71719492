"""Dense patch features downstream (issue #26): ``tinyvit embed --patches`` streams them to a file
with their grid, equal to ``tinyvit.patch_features``; ``tinyvit explain --pca`` draws their first
three principal components over real photos (the DINOv2 paper's pictures). The model is the small
DINOv3 of the rope fixtures (timm's layout, patch 8), as its library wrote it."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, cli
from PIL import Image
from safetensors import safe_open
from test_rope import write_case

import tinyvit
from tinyvit.run.pca import pca_colours, principal_axes

PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))
LARGER = ["--resize", "64", "--crop", "64"]  # with --preprocess-like: an 8x8 grid


@pytest.fixture(scope="module")
def dinov3(tmp_path_factory) -> Path:
    return write_case("timm_dinov3", tmp_path_factory.mktemp("patches") / "timm_dinov3")


def read_patches(path: Path) -> tuple[torch.Tensor, torch.Tensor, dict]:
    with safe_open(str(path), "pt") as f:
        meta = {k: json.loads(v) for k, v in f.metadata().items()}
        return f.get_tensor("patch_features"), f.get_tensor("valid"), meta


@pytest.mark.parametrize("crop", [None, 48])
def test_embed_patches_writes_patch_features_with_the_grid(dinov3, tmp_path, crop):
    """Every photo's features on the grid of the preprocessing's crop (--crop: a larger one), equal
    to tinyvit.patch_features through the same preprocessing."""
    out = tmp_path / "feats.safetensors"
    extra = ["--preprocess-like", dinov3, "--resize", str(crop), "--crop", str(crop)] if crop else []
    ran = cli("embed", "--patches", *PHOTOS[:3], "--model", dinov3, "-o", out, "--batch-size", "2", *extra)
    assert ran.returncode == 0, ran.stderr
    got, valid, meta = read_patches(out)
    model = tinyvit.load(dinov3)
    spec = model.weights.preprocess if crop is None else replace(model.weights.preprocess, resize=crop, crop=crop)
    want = tinyvit.patch_features(PHOTOS[:3], model, preprocess=spec)
    side = spec.crop // 8
    assert got.shape == want.shape == (3, side, side, 64)
    # the CLI runs the CPU GEMM path from its second batch on (run/cpu.py): within 1e-5 of the model as built
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())
    assert valid.tolist() == [1, 1, 1]
    assert meta["tinyvit.grid"] == [side, side] and meta["tinyvit.patch_size"] == 8
    assert meta["tinyvit.inputs"] == [str(p) for p in PHOTOS[:3]]
    assert f"3 patch features of {side}x{side}x64 floats" in ran.stdout


def test_embed_patches_marks_a_bad_image_and_writes_the_rest(dinov3, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "feats.npy"
    ran = cli("embed", "--patches", PHOTOS[0], bad, "--model", dinov3, "-o", out)
    assert ran.returncode == 1 and "bad.jpg" in ran.stderr
    rows = np.load(out)
    grid = tinyvit.load(dinov3).weights.preprocess.crop // 8
    assert rows.shape == (2, grid, grid, 64) and np.isnan(rows[1]).all() and not np.isnan(rows[0]).any()
    sidecar = json.loads(out.with_name(out.name + ".json").read_text())
    assert sidecar["grid"] == [grid, grid] and list(sidecar["errors"]) == ["1"]


def test_embed_patches_refuses_what_it_cannot_do(dinov3, tmp_path):
    ran = cli("embed", "--patches", "--normalize", PHOTOS[0], "--model", dinov3, "-o", tmp_path / "f.safetensors")
    assert ran.returncode == 2 and "--patches" in ran.stderr.strip().splitlines()[-1]


def test_pca_components_are_principal_axes():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 3, generator=g) @ torch.diag(torch.tensor([5.0, 2.0, 0.5]))
    axes = principal_axes(x, 3)
    assert torch.allclose(axes.abs(), torch.eye(3), atol=0.1)
    assert (axes.gather(1, axes.abs().argmax(1, keepdim=True)) > 0).all()


def test_pca_colours_split_foreground_by_the_first_component():
    """A bright square on a plain ground: the square is the foreground (the border patches are not)."""
    feats = torch.zeros(1, 8, 8, 16)
    feats[0, 2:6, 2:6, 0] = 10.0
    feats += 0.01 * torch.randn(feats.shape, generator=torch.Generator().manual_seed(0))
    colours, fg = pca_colours(feats)
    assert colours.shape == (1, 8, 8, 3) and 0 <= colours.min() and colours.max() <= 1
    assert fg[0, 2:6, 2:6].all() and fg.sum() == 16


@pytest.mark.parametrize("count", [1, 2])
def test_explain_pca_draws_a_picture_over_real_photos(dinov3, tmp_path, count):
    out = tmp_path / "pca.png"
    ran = cli("explain", "--pca", *PHOTOS[:count], "--model", dinov3, "-o", out, "--preprocess-like", dinov3, *LARGER)
    assert ran.returncode == 0, ran.stderr
    with Image.open(out) as img:
        picture = np.asarray(img.convert("RGB"))
    sizes = [Image.open(p).size for p in PHOTOS[:count]]
    height = sizes[0][1]
    width = sum(w if h == height else round(w * height / h) for w, h in sizes)
    assert picture.shape == (height, width, 3)
    assert picture.std() > 10 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 100  # not constant


def test_explain_refuses_several_images_without_pca(dinov3, tmp_path):
    ran = cli("explain", *PHOTOS[:2], "--model", dinov3, "-o", tmp_path / "a.png")
    assert ran.returncode != 0 and "--pca" in ran.stderr
