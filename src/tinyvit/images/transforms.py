"""Applying a :class:`~tinyvit.images.spec.PreprocessSpec` to a decoded image, to the pixel:
the resize (in Pillow, or in torch's antialiased interpolation for transformers' torchvision
backend), the center crop or pad, then ``(x - mean) / std`` into a float32 tensor (torch is
imported on first use).

Resizing runs on the uint8 image, as in the reference libraries' pipelines, so the tensors match
theirs; with ``float_resize`` (transformers' DINOv3 processor) on the image rescaled to [0, 1].
"""

from __future__ import annotations

import io
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from tinyvit.images.decode import ImageInput, exif_orientation, load_image

if TYPE_CHECKING:
    import torch

    from tinyvit.images.spec import PreprocessSpec

__all__ = ["normalize", "preprocess", "preprocess_one", "resize_and_crop"]

# Pillow's filters, by the names timm and torchvision use (spec.INTERPOLATIONS)
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}


def _torch():
    """torch, imported on first use (decoding images does not need it)."""
    import torch

    return torch


def resize_and_crop(img: Image.Image, spec: PreprocessSpec, *, size: tuple[int, int] | None = None) -> Image.Image:
    """The spec's resize then center crop (or, ``"longest"``, pad), on the uint8 image. ``size`` is
    the displayed size the resize target is computed from (the original size when the image was
    draft-decoded)."""
    target = spec.resized_size(*(size or img.size))
    if img.size != target:
        img = _torch_resize(img, target, spec.interpolation) if spec.backend == "torch" else img.resize(
            target, _RESAMPLE[spec.interpolation]
        )
    if spec.resize_mode == "longest":  # open_clip: centred on black, the odd pixel right / below
        canvas = Image.new("RGB", (spec.crop, spec.crop))
        canvas.paste(img, ((spec.crop - target[0]) // 2, (spec.crop - target[1]) // 2))
        return canvas
    return img.crop(spec.crop_box(*target))


def _torch_resize(img: Image.Image, target: tuple[int, int], interpolation: str) -> Image.Image:
    """Resize as transformers' torchvision backend does (torchvision's ``resize`` of a uint8 CHW
    tensor): torch's antialiased interpolation, on the uint8 tensor itself where torch's CPU kernel
    takes it (bicubic; bilinear on AVX2 / AVX-512 / ARM), else in float32, rounded back to uint8."""
    torch = _torch()
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()[None]  # a copy: writable
    w, h = target
    antialias = interpolation != "nearest"
    native = interpolation in ("nearest", "bicubic") or (
        torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512") or platform.machine() in ("aarch64", "arm64")
    )
    kwargs = {"align_corners": False, "antialias": True} if antialias else {}
    if native:
        y = torch.nn.functional.interpolate(x, size=(h, w), mode=interpolation, **kwargs)
    else:
        y = torch.nn.functional.interpolate(x.float(), size=(h, w), mode=interpolation, **kwargs)
        y = y.round_().to(torch.uint8)
    return Image.fromarray(y[0].permute(1, 2, 0).numpy())


def _float_resized(img: Image.Image, spec: PreprocessSpec, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``float_resize``: transformers' DINOv3 processor, operation for operation — the uint8 tensor
    times 1/255, torch's antialiased resize of the float image, the center crop (offset as the spec
    says), ``(x - mean) / std`` with mean and std in [0, 1] — into a (3, crop, crop) float32 tensor."""
    torch = _torch()
    x = torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()[None] * (1 / 255)
    w, h = spec.resized_size(*(size or img.size))
    if (w, h) != img.size:
        antialias = {"align_corners": False, "antialias": True} if spec.interpolation != "nearest" else {}
        x = torch.nn.functional.interpolate(x, size=(h, w), mode=spec.interpolation, **antialias)
    left, top, right, bottom = spec.crop_box(w, h)
    x = x[0, :, top:bottom, left:right]
    mean = torch.tensor([m / 255 for m in spec.mean], dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor([v / 255 for v in spec.std], dtype=torch.float32).view(3, 1, 1)
    return x.sub(mean).div(std).contiguous()


def normalize(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """RGB uint8 image → (3, H, W) float32, ``(x - mean) / std``."""
    torch = _torch()
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def preprocess_one(image: ImageInput, spec: PreprocessSpec, *, fast: bool = False) -> torch.Tensor:
    """One image → its (3, crop, crop) float32 tensor. ``fast=True`` decodes a JPEG at a reduced
    scale first (Pillow's draft mode): much faster on big photos, no longer bit-exact."""
    size = _peek_jpeg_size(image) if fast else None
    if size is None:  # exact, or not a JPEG, or an input already decoded: nothing to gain
        img = load_image(image)
    else:
        img = load_image(image, draft_size=spec.resized_size(*size))
    if spec.float_resize:
        return _float_resized(img, spec, size)
    return normalize(resize_and_crop(img, spec, size=size), spec)


def _peek_jpeg_size(image: ImageInput) -> tuple[int, int] | None:
    """Displayed size of a JPEG from its header, without decoding; None for anything else."""
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            return None  # let the normal path report it
        source: Any = image
    elif isinstance(image, (bytes, bytearray, memoryview)):
        source = io.BytesIO(bytes(image))
    else:
        return None
    try:
        with Image.open(source) as img:
            if img.format != "JPEG":
                return None
            w, h = img.size
            return (h, w) if exif_orientation(img) in (5, 6, 7, 8) else (w, h)
    except (OSError, ValueError, SyntaxError, EOFError):
        return None  # let the normal path report the error properly


def preprocess(images: ImageInput | Sequence[ImageInput], spec: PreprocessSpec, *, fast: bool = False) -> torch.Tensor:
    """Images → the tensors the weights were evaluated with: one image gives (3, H, W) float32, a
    list or tuple gives (B, 3, H, W)."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("preprocess() got an empty list of images")
        return _torch().stack([preprocess_one(image, spec, fast=fast) for image in images])
    return preprocess_one(images, spec, fast=fast)
