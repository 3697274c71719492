"""Preprocessing: parity with timm's eval transform and mmpretrain's test pipeline, input types,
image modes, EXIF orientation, the fast path, and errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import refdata
import torch
from conftest import FIXTURES
from PIL import Image

import tinyvit
from tinyvit.images.decode import load_image
from tinyvit.images.spec import PreprocessSpec
from tinyvit.images.transforms import resize_and_crop
from tinyvit.weights._builder import resolve_preprocess

META = json.loads((FIXTURES / "preprocess.json").read_text())
PIXELS = dict(np.load(FIXTURES / "preprocess_pixels.npz"))
IMAGE_CASES = sorted(k for k, v in META["cases"].items() if "spec" in v)
SPECS = {k: v for k, v in META["cases"].items() if "library" in v}


def tinyvit_spec(spec_name: str) -> PreprocessSpec:
    s = SPECS[spec_name]["tinyvit_spec"]
    if "zoo" in s:
        return resolve_preprocess(f"{s['zoo']}:{s['tag']}")
    return PreprocessSpec(s["resize"], s["crop"], s["interpolation"], tuple(s["mean"]), tuple(s["std"]))


def reference_tensor(case_key: str) -> torch.Tensor:
    """The reference library's output: its stored pixels, normalized the way it normalizes."""
    spec = SPECS[META["cases"][case_key]["spec"]]
    u = torch.from_numpy(PIXELS[case_key]).float()
    cfg = spec["reference_config"]
    if spec["library"] == "timm":  # ToTensor (/255) then Normalize(mean, std) in 0-1 units
        mean, std = torch.tensor(cfg["mean"]).view(3, 1, 1), torch.tensor(cfg["std"]).view(3, 1, 1)
        return (u / 255 - mean) / std
    pre = cfg["data_preprocessor"]  # mmpretrain's ClsDataPreprocessor, 0-255 units
    return (u - torch.tensor(pre["mean"]).view(3, 1, 1)) / torch.tensor(pre["std"]).view(3, 1, 1)


def test_fixture_covers_both_interpolations_and_many_sizes():
    by_interp = {}
    for key in IMAGE_CASES:
        spec = tinyvit_spec(META["cases"][key]["spec"])
        by_interp.setdefault(spec.interpolation, set()).add((META["cases"][key]["width"], META["cases"][key]["height"]))
    assert set(by_interp) == {"bilinear", "bicubic"}
    assert all(len(sizes) >= 10 for sizes in by_interp.values())
    assert {SPECS[s]["library"] for s in SPECS} == {"timm", "mmpretrain"}


@pytest.mark.parametrize("key", IMAGE_CASES)
def test_matches_reference_pipeline(key, tmp_path):
    case = META["cases"][key]
    img = refdata.make_image(case["width"], case["height"], case["seed"], texture=case["texture"])
    path = tmp_path / "img.png"
    Image.fromarray(img).save(path)  # the reference read the same lossless PNG
    spec = tinyvit_spec(case["spec"])
    out = tinyvit.preprocess(path, spec)
    ref = reference_tensor(key)
    assert out.dtype == torch.float32 and out.shape == ref.shape == (3, spec.crop, spec.crop)
    err = (out - ref).abs().max().item()
    assert err <= 1e-6, f"{key}: max |Δ| = {err:.3g}"
    # the uint8 image before normalization is the reference's to the last level
    crop = np.asarray(resize_and_crop(load_image(path), spec)).transpose(2, 0, 1)
    assert np.array_equal(crop, PIXELS[key])


def test_zoo_specs():
    s = resolve_preprocess
    assert s("vit-base-p32-384") == PreprocessSpec(384, 384, "bicubic", (127.5,) * 3, (127.5,) * 3)
    assert s("vit-base-p32-384:mmpretrain") == PreprocessSpec(384, 384, "bilinear", (127.5,) * 3, (127.5,) * 3)
    assert s("vit-base-p16-224") == PreprocessSpec(248, 224, "bicubic", (127.5,) * 3, (127.5,) * 3)
    assert s("vit-base-p16-224:mmpretrain") == PreprocessSpec(
        256, 224, "bicubic", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    )
    with pytest.raises(tinyvit.UnknownModelError):
        s("vit-tiny")
    model = tinyvit.get_model("vit-base-p16-224")
    assert s(model) == s("vit-base-p16-224")


def test_spec_validation():
    with pytest.raises(ValueError, match="interpolation"):
        PreprocessSpec(8, 8, "area", (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="larger than resize"):
        PreprocessSpec(8, 9, "bicubic", (0, 0, 0), (1, 1, 1))
    with pytest.raises(ValueError, match="std"):
        PreprocessSpec(8, 8, "bicubic", (0, 0, 0), (1, 0, 1))


SPEC = PreprocessSpec(40, 32, "bicubic", (127.5,) * 3, (127.5,) * 3)


@pytest.fixture(scope="module")
def rgb():
    return refdata.make_image(57, 43, seed=5)


def test_every_input_type_gives_the_same_tensor(rgb, tmp_path):
    path = tmp_path / "x.png"
    Image.fromarray(rgb).save(path)
    data = path.read_bytes()
    expected = tinyvit.preprocess(str(path), SPEC)
    inputs = [
        path,
        data,
        bytearray(data),
        io.BytesIO(data),
        Image.open(path),
        rgb,
        torch.from_numpy(rgb).permute(2, 0, 1),
    ]
    for image in inputs:
        assert torch.equal(tinyvit.preprocess(image, SPEC), expected), type(image)
    with open(path, "rb") as f:
        assert torch.equal(tinyvit.preprocess(f, SPEC), expected)
    batch = tinyvit.preprocess([path, rgb], SPEC)
    assert batch.shape == (2, 3, 32, 32) and torch.equal(batch[1], expected)


def _rgb_of(mode_image: Image.Image) -> np.ndarray:
    return np.asarray(load_image(mode_image))


def test_modes_convert_to_rgb_by_the_documented_rules(rgb):
    alpha = (np.arange(rgb.shape[0] * rgb.shape[1]) % 256).reshape(rgb.shape[:2]).astype(np.uint8)
    white_composite = np.rint(rgb * (alpha[..., None] / 255.0) + 255 * (1 - alpha[..., None] / 255.0))

    rgba = Image.fromarray(np.dstack([rgb, alpha]))
    assert rgba.mode == "RGBA"
    assert np.abs(_rgb_of(rgba) - white_composite).max() <= 1

    gray = rgb[..., 1]
    la = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    gray_composite = np.rint(gray * (alpha / 255.0) + 255 * (1 - alpha / 255.0))
    assert np.abs(_rgb_of(la) - gray_composite[..., None]).max() <= 1
    assert np.array_equal(_rgb_of(Image.fromarray(gray)), np.repeat(gray[..., None], 3, axis=2))

    # palette without and with a transparent index (index 0: fully transparent → white)
    p = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    p_rgb = np.asarray(p.convert("RGB"))
    assert np.array_equal(_rgb_of(p), p_rgb)
    p.info["transparency"] = 0
    idx = np.asarray(p)
    out = _rgb_of(p)
    assert (out[idx == 0] == 255).all() and np.array_equal(out[idx != 0], p_rgb[idx != 0])

    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.abs(_rgb_of(cmyk).astype(int) - rgb).max() <= 1

    wide = (rgb[..., 0].astype(np.uint16) * 257) + 100  # 16-bit: scaled to 8 bits, v / 257 rounded
    assert Image.fromarray(wide).mode == "I;16"
    assert np.array_equal(_rgb_of(Image.fromarray(wide))[..., 0], np.rint(wide / 257).astype(np.uint8))

    bits = Image.fromarray(gray > 128).convert("1")
    assert set(np.unique(_rgb_of(bits))) <= {0, 255}


def test_16_bit_png_from_disk(tmp_path):
    wide = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 53 % 65536).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "w.png")
    assert Image.open(tmp_path / "w.png").mode.startswith("I")
    out = np.asarray(load_image(tmp_path / "w.png"))
    assert np.array_equal(out[..., 2], np.rint(wide / 257).astype(np.uint8))


# EXIF orientation → the displayed image, by the EXIF specification's definitions
ORIENTED = {
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: np.rot90(a[:, ::-1], 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a[:, ::-1], -1),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(ORIENTED))
def test_exif_orientation_is_applied(orientation, rgb, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.png"
    Image.fromarray(rgb).save(path, exif=exif)
    assert np.array_equal(np.asarray(load_image(path)), ORIENTED[orientation](rgb))


def test_orientation_costs_no_copy_and_leaves_the_callers_image_alone(rgb, tmp_path):
    # A decoded 12 MP photo is 36 MB; Pillow's exif_transpose copies even an upright one.
    upright = Image.fromarray(rgb)
    assert load_image(upright) is upright
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "o.png"
    Image.fromarray(rgb).save(path, exif=exif)
    with Image.open(path) as rotated:
        out = load_image(rotated)
        assert rotated.size == (rgb.shape[1], rgb.shape[0])  # the caller's image is not rotated in place
        assert rotated.getexif().get(0x0112) == 6
        assert np.array_equal(np.asarray(out), ORIENTED[6](rgb))


def _jpeg(array: np.ndarray, orientation: int = 1, quality: int = 95) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG", quality=quality, exif=exif)
    return buf.getvalue()


def test_fast_path_is_close_to_exact_on_a_big_jpeg():
    big = refdata.make_image(2400, 1600, seed=3, texture=False)
    spec = resolve_preprocess("vit-base-p32-384")
    for orientation in (1, 6):
        data = _jpeg(big, orientation)
        exact = tinyvit.preprocess(data, spec)
        fast = tinyvit.preprocess(data, spec, fast=True)
        assert fast.shape == exact.shape == (3, 384, 384)
        diff = (fast - exact).abs()
        # ~2 levels on average on this hard-edged pattern; a wrong orientation gives ~0.5
        assert diff.mean() < 0.05 and diff.max() < 0.5  # normalized units (range 2)
        assert not torch.equal(fast, exact)  # it did decode at reduced scale


def test_fast_path_leaves_other_inputs_exact(rgb):
    png = io.BytesIO()
    Image.fromarray(rgb).save(png, "PNG")
    assert torch.equal(tinyvit.preprocess(png.getvalue(), SPEC, fast=True), tinyvit.preprocess(rgb, SPEC))
    assert torch.equal(tinyvit.preprocess(rgb, SPEC, fast=True), tinyvit.preprocess(rgb, SPEC))


def test_errors_name_the_input(tmp_path, rgb):
    """In-memory inputs; bad files and paths are in test_reliability.py."""
    with pytest.raises(tinyvit.ImageError, match="<4 bytes>.*not an image"):
        tinyvit.preprocess(b"abcd", SPEC)
    with pytest.raises(tinyvit.ImageError, match="uint8"):
        tinyvit.preprocess(rgb.astype(np.float32), SPEC)
    with pytest.raises(tinyvit.ImageError, match="unsupported input type int"):
        tinyvit.preprocess(42, SPEC)
    with pytest.raises(ValueError, match="empty list"):
        tinyvit.preprocess([], SPEC)


def test_animated_gif_gives_the_first_frame():
    frames = [Image.new("RGB", (20, 20), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    out = np.asarray(load_image(buf.getvalue()))
    assert out[..., 0].min() > 200 and out[..., 2].max() < 50
