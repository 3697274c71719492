"""Images in, tensors out: which files are images, decoding any input to RGB, and applying a
:class:`~tinyvit.preprocessing.PreprocessSpec` to the pixel.

Decoding rules (the same for every input type):

* The EXIF orientation is applied, as mmpretrain's (OpenCV) decoder and transformers'
  ``load_image`` do. timm's pipeline does not apply it; for photos without an orientation tag the
  two agree.
* Transparency (RGBA, LA, PA, P with a transparent colour) is composited on white.
* 16-bit images (``I;16``, ``I``) are scaled to 8 bits (v / 257, rounded); every other mode
  (L, P, CMYK, 1, YCbCr, …) goes through Pillow's ``convert("RGB")``.
* An animated image gives its first frame.

Resizing is done by Pillow on the uint8 image, as in the reference libraries' PIL-based
pipelines, so the tensors match theirs. Every failure is an :class:`~tinyvit.errors.ImageError`
that names the input. Importing this module does not import torch; making a tensor does.
"""

from __future__ import annotations

import glob
import io
import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tinyvit.errors import ImageError, TinyViTError

if TYPE_CHECKING:
    import torch

    from tinyvit.preprocessing import PreprocessSpec

__all__ = [
    "IMAGE_SUFFIXES",
    "ImageInput",
    "check_path",
    "check_paths",
    "describe_input",
    "expand_inputs",
    "files_from_args",
    "is_image_url",
    "image_files",
    "load_image",
    "preprocess",
    "preprocess_one",
]

ImageInput: TypeAlias = (
    "str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray | torch.Tensor"
)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}

# Pillow's filters, by the names timm and torchvision use (preprocessing.INTERPOLATIONS)
_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
_URL_SCHEMES = ("http", "https", "ftp", "s3", "gs", "hf")
URL_TIMEOUT = 30.0  # seconds without data before an image download is abandoned
URL_MAX_BYTES = 100 * 2**20  # an image URL that sends more is refused


def is_image_url(image: Any) -> bool:
    """An ``http://`` or ``https://`` URL given as an image (fetched as transformers' pipeline does)."""
    return isinstance(image, str) and image.split("://", 1)[0].lower() in ("http", "https") and "://" in image


def _torch():
    """torch, imported on first use (decoding images does not need it)."""
    import torch

    return torch


def _is_tensor(x: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch tensor can only exist once torch is imported
    return torch is not None and isinstance(x, torch.Tensor)


# ---------------------------------------------------------------------------------------------
# Inputs: which files are images, named how


def describe_input(image: Any) -> str:
    """A short name for an input, for error messages: a quoted path, ``<1234 bytes>``, …"""
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
    if isinstance(text, str) and "://" in text and text.split("://", 1)[0].lower() in _URL_SCHEMES:
        raise ImageError(name, "only http(s) URLs are fetched; download the image first and pass the local file")
    path = Path(image)
    if not path.exists():
        raise ImageError(name, "no such file")
    if path.is_dir():
        raise ImageError(name, "is a directory, not an image file")
    if not path.is_file():
        raise ImageError(name, "not a regular file (a FIFO, socket or device); refusing to read it")
    return path


def image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (by extension, case-insensitive), recursively, sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _folder_files(folder: Path, shown: str) -> list[Path]:
    files = image_files(folder)
    if not files:
        raise ImageError(shown, f"no image files in this folder ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def expand_inputs(images: Any) -> tuple[list[Any], bool]:
    """What the Python API was given → (the items, whether a single image was given). A folder
    gives its image files (an empty folder is an error); a list or tuple is taken as it is."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("images", "none given (an empty list)")
        return list(images), False
    if isinstance(images, (str, os.PathLike)) and Path(images).is_dir():
        return list(_folder_files(Path(images), repr(os.fspath(images)))), False
    return [images], True


def check_paths(items: Sequence[Any]) -> None:
    """Raise :class:`ImageError` for the first path among ``items`` that is not an image file:
    before any weights are fetched, a missing file fails in well under a second."""
    for item in items:
        if isinstance(item, (str, os.PathLike)) and not is_image_url(item):
            check_path(item)


def files_from_args(entries: Sequence[str | os.PathLike], *, globs: bool = False) -> list[Path | str]:
    """What a command line names → image files, every one checked now (before any weights are
    fetched): files, folders (their image files, recursively, sorted), http(s) URLs (fetched when
    decoded) and, with ``globs``, patterns such as ``photos/**/*.jpg``. A missing file, an empty
    folder, a pattern that matches nothing or another kind of URL is an error."""
    if not entries:
        raise TinyViTError("no inputs given")
    files: list[Path | str] = []
    for entry in entries:
        text = os.fspath(entry)
        if is_image_url(text):
            files.append(text)
            continue
        matches = [text]
        if globs and glob.has_magic(text) and not Path(text).exists():
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise ImageError(repr(text), "no file matches this pattern")
        for m in matches:
            p = Path(m)
            files.extend(_folder_files(p, repr(m)) if p.is_dir() else [check_path(p, repr(m))])
    return files


# ---------------------------------------------------------------------------------------------
# Decoding


def _download(url: str, name: str) -> bytes:
    """An image URL's bytes: a bounded wait for data, a bounded size, every failure an ImageError."""
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "tinyvit"})
    try:
        with urllib.request.urlopen(request, timeout=URL_TIMEOUT) as r:
            size = int(r.headers.get("Content-Length") or 0)
            data = r.read(URL_MAX_BYTES + 1) if size <= URL_MAX_BYTES else b""
    except urllib.error.HTTPError as e:
        raise ImageError(name, f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        reason = e.reason.strerror if isinstance(e.reason, OSError) and e.reason.strerror else e.reason
        raise ImageError(name, f"could not fetch it ({reason})") from None
    except TimeoutError:
        raise ImageError(name, f"no data for {URL_TIMEOUT:g} s; gave up") from None
    except (OSError, ValueError) as e:  # a connection dropped half-way, a malformed URL
        raise ImageError(name, f"could not fetch it ({e})") from None
    if size > URL_MAX_BYTES or len(data) > URL_MAX_BYTES:
        raise ImageError(name, f"more than the {URL_MAX_BYTES} bytes an image may have")
    return data


def _read(image: Any, name: str) -> bytes:
    """The bytes of a path, an http(s) URL, a bytes-like object or a binary file."""
    if is_image_url(image):
        data = _download(image, name)
    elif isinstance(image, (str, os.PathLike)):
        path = check_path(image, name)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise ImageError(name, f"cannot read the file ({e.strerror or e})") from e
    elif isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
    else:
        try:
            data = image.read()
        except (OSError, ValueError) as e:
            raise ImageError(name, f"cannot read from the file object ({e})") from e
        if not isinstance(data, bytes):
            raise ImageError(name, "the file object must be opened in binary mode")
    if not data:
        raise ImageError(name, "empty file")
    return data


def _open(image: Any, name: str) -> Image.Image:
    """Open (lazily: header only) a path, bytes or binary file as a PIL image."""
    data = _read(image, name)
    try:
        return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"image too large to decode safely ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageError(name, "not an image, or a format Pillow cannot read") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(name, f"cannot decode the image ({e})") from e


def _from_array(array: np.ndarray, name: str) -> Image.Image:
    """H×W(×C) array → PIL image. uint8 is taken as is; floats must be in [0, 1] (what
    torchvision's ``ToTensor`` and ``read_image(...) / 255`` give) and are rounded to 8 bits."""
    if array.dtype.kind == "f":
        if array.size and not np.isfinite(array).all():
            raise ImageError(name, "float image holds NaN or infinite values")
        low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
        if low < 0 or high > 1:
            raise ImageError(
                name,
                f"float images must hold values in [0, 1] (got {low:.3g} to {high:.3g}); "
                "pass the image before normalization, or as uint8 0-255",
            )
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(name, f"arrays must be uint8 (0-255) or float in [0, 1], got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (3, 4))):
        raise ImageError(name, "expected an H×W×3 RGB (or H×W gray, H×W×4 RGBA) array")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(name, "empty image")
    return Image.fromarray(np.ascontiguousarray(array))


def _tensor_to_hwc(t: torch.Tensor, name: str) -> np.ndarray:
    """A C×H×W image tensor (or a batch of one, 1×C×H×W) → an H×W×C array."""
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    elif t.ndim == 4:
        raise ImageError(name, f"a batch of {t.shape[0]} images; pass them as a list, or call the model on the batch")
    if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
        raise ImageError(name, "tensors must be C×H×W (or 1×C×H×W) with 1, 3 or 4 channels")
    if not (t.dtype.is_floating_point or str(t.dtype) == "torch.uint8"):
        raise ImageError(name, f"tensors must be uint8 (0-255) or float in [0, 1], got {t.dtype}")
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


def _as_pil(image: Any, name: str) -> Image.Image:
    """Any supported input as a PIL image, not yet fully decoded."""
    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray):
        return _from_array(image, name)
    if _is_tensor(image):
        return _from_array(_tensor_to_hwc(image, name), name)
    if isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(image, "read"):
        return _open(image, name)
    raise ImageError(name, f"unsupported input type {type(image).__name__}")


def load_image(image: ImageInput, *, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode any supported input into an RGB PIL image, orientation applied.

    ``draft_size`` (width, height, as displayed) lets JPEG decode at a reduced scale that is
    still at least that large (Pillow's draft mode): the fast path for big photos. A PIL image
    that needs no change is returned as it is, not copied.
    """
    name = describe_input(image)
    img = _as_pil(image, name)
    try:
        if draft_size is not None and img.format == "JPEG":
            w, h = draft_size
            if _exif_orientation(img) in (5, 6, 7, 8):  # stored rotated by 90°: swap the request
                w, h = h, w
            img.draft(img.mode, (w, h))
        img.load()
        if img.width == 0 or img.height == 0:
            raise ImageError(name, "empty image")
        if _exif_orientation(img) != 1:  # exif_transpose would copy an upright image (36 MB at 12 MP)
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"image too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(name, f"truncated or corrupt image ({e})") from e


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError):  # unreadable EXIF: no orientation
        return 1


# ---------------------------------------------------------------------------------------------
# Applying a spec: geometry, then normalization


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
        return normalize(resize_and_crop(load_image(image), spec), spec)
    img = load_image(image, draft_size=spec.resized_size(*size))
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
            return (h, w) if _exif_orientation(img) in (5, 6, 7, 8) else (w, h)
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
