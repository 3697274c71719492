"""Images → the normalized tensors a weight was evaluated with.

Every weight record carries a :class:`PreprocessSpec`. Two geometries cover the evaluation
pipelines of timm, mmpretrain and transformers:

* ``"short-edge"`` (timm, mmpretrain): resize the short edge to ``resize`` (long edge
  ``int(resize * long / short)``, truncated), then center-crop ``crop`` × ``crop`` (offset
  ``int(round((side - crop) / 2))``, Python's half-to-even round);
* ``"squash"`` (transformers' ``ViTImageProcessor``, timm's ``crop_mode="squash"``): resize to
  ``resize`` × ``resize`` whatever the aspect, then center-crop ``crop`` (nothing when equal).

Then ``(x - mean) / std`` in float32, with ``mean`` and ``std`` in 0–255 pixel values. Resizing is
done by Pillow on the uint8 image, as in those libraries' PIL-based pipelines, so the tensors
match theirs.

Decoding rules (the same for every input type):

* The EXIF orientation is applied, as mmpretrain's (OpenCV) decoder and transformers'
  ``load_image`` do. timm's pipeline does not apply it; for photos without an orientation tag the
  two agree.
* Transparency (RGBA, LA, PA, P with a transparent colour) is composited on white.
* 16-bit images (``I;16``, ``I``) are scaled to 8 bits (v / 257, rounded); every other mode
  (L, P, CMYK, 1, YCbCr, …) goes through Pillow's ``convert("RGB")``.
* An animated image gives its first frame.

Importing this module does not import torch; making a tensor does.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tinyvit.errors import ImageError

if TYPE_CHECKING:
    import torch

__all__ = ["ImageInput", "PreprocessSpec", "check_path", "describe_input", "load_image", "preprocess", "preprocess_one"]

ImageInput: TypeAlias = (
    "str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray | torch.Tensor"
)

# Pillow's filters, by the names timm and torchvision use
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
RESIZE_MODES = ("short-edge", "squash")


def _torch():
    """torch, imported on first use (reading specs and decoding images do not need it)."""
    import torch

    return torch


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor can only exist once torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


@dataclass(frozen=True)
class PreprocessSpec:
    """How one weight's evaluation turned an image into a tensor (see the module docstring)."""

    resize: int  # short edge after resizing ("short-edge"), or the square's side ("squash"), pixels
    crop: int  # side of the square center crop, pixels
    interpolation: str  # one of _RESAMPLE: Pillow's filters (antialiased when downsampling)
    mean: tuple[float, float, float]  # RGB, 0–255 pixel values
    std: tuple[float, float, float]  # RGB, 0–255 pixel values
    resize_mode: str = "short-edge"  # or "squash": see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in _RESAMPLE:
            raise ValueError(f"interpolation must be one of {sorted(_RESAMPLE)}, got {self.interpolation!r}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PreprocessSpec.{name} must be a positive int, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) is larger than resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError("mean and std need 3 values each, std > 0")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {"resize", "crop", "interpolation", "mean", "std", "resize_mode"}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown PreprocessSpec field(s): {', '.join(unknown)}")
        return cls(
            d["resize"], d["crop"], d["interpolation"], tuple(d["mean"]), tuple(d["std"]),
            d.get("resize_mode", "short-edge"),
        )  # fmt: skip

    def __call__(self, image: ImageInput, *, fast: bool = False) -> torch.Tensor:
        """One image → its (3, crop, crop) float32 tensor: the transform that goes with the weights."""
        return preprocess_one(image, self, fast=fast)

    def __str__(self) -> str:
        geometry = (
            f"short edge {self.resize}, center crop {self.crop}"
            if self.resize_mode == "short-edge"
            else f"squash to {self.resize}x{self.resize}"
            + (f", center crop {self.crop}" if self.crop != self.resize else "")
        )
        mean = ", ".join(f"{m:g}" for m in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"{geometry}, {self.interpolation}; mean ({mean}), std ({std})"


def resized_size(width: int, height: int, short_edge: int, mode: str = "short-edge") -> tuple[int, int]:
    """(width, height) after resizing: the short edge at ``short_edge`` with the long edge
    truncated, or (for ``mode="squash"``) a square of that side."""
    if mode == "squash":
        return short_edge, short_edge
    if width <= height:
        return short_edge, int(short_edge * height / width)
    return int(short_edge * width / height), short_edge


def center_crop_box(width: int, height: int, crop: int) -> tuple[int, int, int, int]:
    left = int(round((width - crop) / 2))
    top = int(round((height - crop) / 2))
    return left, top, left + crop, top + crop


# ---------------------------------------------------------------------------------------------
# Decoding


def describe_input(image: Any) -> str:
    """A short name for an input, for error messages."""
    if isinstance(image, (str, os.PathLike)):
        return repr(os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"<{len(image)} bytes>"
    if isinstance(image, np.ndarray) or _is_tensor(image):
        return f"<{type(image).__name__} shape {tuple(image.shape)} dtype {image.dtype}>"
    name = getattr(image, "name", None)
    if isinstance(name, str):
        return repr(name)
    return f"<{type(image).__name__}>"


def check_path(image: str | os.PathLike, name: str | None = None) -> Path:
    """The path of an image file that exists and is a regular file (not a folder, FIFO or
    device, which would be read forever), else :class:`ImageError`."""
    name = name or describe_input(image)
    text = os.fspath(image)
    if isinstance(text, str) and text.split("://", 1)[0].lower() in ("http", "https", "ftp", "s3", "gs", "hf"):
        raise ImageError(f"{name}: URLs are not fetched; download the image first and pass the local file")
    path = Path(image)
    if not path.exists():
        raise ImageError(f"{name}: no such file")
    if path.is_dir():
        raise ImageError(f"{name}: is a directory, not an image file")
    if not path.is_file():
        raise ImageError(f"{name}: not a regular file (a FIFO, socket or device); refusing to read it")
    return path


def _open(image: Any, name: str) -> Image.Image:
    """Decode a path, bytes or binary file into a fully loaded PIL image."""
    if isinstance(image, (str, os.PathLike)):
        path = check_path(image, name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(f"{name}: cannot read the file ({e.strerror or e})") from e
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        try:
            data = image.read()
        except (OSError, ValueError) as e:
            raise ImageError(f"{name}: cannot read from the file object ({e})") from e
        if not isinstance(data, bytes):
            raise ImageError(f"{name}: the file object must be opened in binary mode")
    if not data:
        raise ImageError(f"{name}: empty file")
    try:
        img = Image.open(io.BytesIO(data))
        return img
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(f"{name}: not an image, or a format Pillow cannot read") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{name}: cannot decode the image ({e})") from e


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """H×W(×C) array → PIL image. uint8 is taken as is; floats must be in [0, 1] (what
    torchvision's ``ToTensor`` and ``read_image(...) / 255`` give) and are rounded to 8 bits."""
    if array.dtype.kind == "f":
        if array.size and not np.isfinite(array).all():
            raise ImageError(f"{name}: float image holds NaN or infinite values")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0 or high > 1:
            raise ImageError(
                f"{name}: float images must hold values in [0, 1] (got {low:.3g} to {high:.3g}); "
                "pass the image before normalization, or as uint8 0-255"
            )
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"{name}: arrays must be uint8 (0-255) or float in [0, 1], got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(f"{name}: expected an H×W×3 RGB (or H×W gray, H×W×4 RGBA) array")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"{name}: empty image")
    return Image.fromarray(np.ascontiguousarray(array))


def _tensor_to_hwc(t: torch.Tensor, name: str) -> np.ndarray:
    """A C×H×W image tensor (or a batch of one, 1×C×H×W) → an H×W×C array."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    elif t.ndim == 4:
        raise ImageError(f"{name}: a batch of {t.shape[0]} images; pass them as a list, or call the model on the batch")
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ImageError(f"{name}: tensors must be C×H×W (or 1×C×H×W) with 1, 3 or 4 channels")
    if not (t.dtype.is_floating_point or str(t.dtype) == "torch.uint8"):
        raise ImageError(f"{name}: tensors must be uint8 (0-255) or float in [0, 1], got {t.dtype}")
    t = t.detach().cpu()
    return (t.float() if t.dtype.is_floating_point else t).permute(1, 2, 0).numpy()


def _to_rgb(img: Image.Image) -> Image.Image:
    has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        wide = np.asarray(img, dtype=np.float64).clip(0, 65535)
        return Image.fromarray(np.rint(wide / 257).astype(np.uint8), "L").convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def load_image(image: ImageInput, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode any supported input into an RGB PIL image, orientation applied.

    ``draft_size`` (width, height, as displayed) lets JPEG decode at a reduced scale that is
    still at least that large (Pillow's draft mode): the fast path for big photos. A PIL image
    that needs no change is returned as it is, not copied.
    """
    name = describe_input(image)
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, np.ndarray):
        img = _from_array(image, name)
    elif _is_tensor(image):
        img = _from_array(_tensor_to_hwc(image, name), name)
    elif isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(image, "read"):
        img = _open(image, name)
    else:
        raise ImageError(f"{name}: unsupported input type {type(image).__name__}")
    try:
        if draft_size is not None and img.format == "JPEG":
            w, h = draft_size
            if _exif_orientation(img) in (5, 6, 7, 8):  # stored rotated by 90°: swap the request
                w, h = h, w
            img.draft(img.mode, (w, h))
        img.load()
        if img.width == 0 or img.height == 0:
            raise ImageError(f"{name}: empty image")
        if _exif_orientation(img) != 1:  # exif_transpose would copy an upright image (36 MB at 12 MP)
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"{name}: image too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(f"{name}: truncated or corrupt image ({e})") from e


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError):  # unreadable EXIF: no orientation
        return 1


# ---------------------------------------------------------------------------------------------
# Geometry and normalization


def resize_and_crop(img: Image.Image, spec: PreprocessSpec, *, size: tuple[int, int] | None = None) -> Image.Image:
    """Short-edge resize then center crop, on the uint8 image. ``size`` is the displayed size the
    resize target is computed from (the original size when the image was draft-decoded)."""
    w, h = size or img.size
    target = resized_size(w, h, spec.resize, spec.resize_mode)
    if img.size != target:
        img = img.resize(target, _RESAMPLE[spec.interpolation])
    return img.crop(center_crop_box(*target, spec.crop))


def normalize(img: Image.Image, spec: PreprocessSpec) -> torch.Tensor:
    """RGB uint8 image → (3, H, W) float32, ``(x - mean) / std``."""
    torch = _torch()
    x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float()
    mean = torch.tensor(spec.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float32).view(3, 1, 1)
    return (x - mean) / std


def preprocess_one(image: ImageInput, spec: PreprocessSpec, *, fast: bool = False) -> torch.Tensor:
    if not fast:
        return normalize(resize_and_crop(load_image(image), spec), spec)
    header = _peek_size(image)
    if header is None:  # not a JPEG, or an input already decoded: nothing to gain
        return normalize(resize_and_crop(load_image(image), spec), spec)
    size = header
    img = load_image(image, draft_size=resized_size(*size, spec.resize, spec.resize_mode))
    return normalize(resize_and_crop(img, spec, size=size), spec)


def _peek_size(image: ImageInput) -> tuple[int, int] | None:
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
            return (h, w) if _exif_orientation(img) in (5, 6, 7, 8) else (w, h)
    except (OSError, ValueError, SyntaxError, EOFError):
        return None  # let the normal path report the error properly


def preprocess(images: ImageInput | Sequence[ImageInput], spec: PreprocessSpec, *, fast: bool = False) -> torch.Tensor:
    """Images → the tensors the weights were evaluated with: one image gives (3, H, W) float32, a
    list or tuple gives (B, 3, H, W). ``fast=True`` decodes JPEGs at a reduced scale first
    (Pillow's draft mode): much faster on big photos, no longer bit-exact."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("preprocess() got an empty list of images")
        return _torch().stack([preprocess_one(image, spec, fast=fast) for image in images])
    return preprocess_one(images, spec, fast=fast)
