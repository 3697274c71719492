"""Decoding any input to an RGB PIL image, with tinyvit's rules.

Decoding rules (the same for every input type):

* The EXIF orientation is applied, as mmpretrain's (OpenCV) decoder and transformers'
  ``load_image`` do. timm's pipeline does not apply it; for photos without an orientation tag the
  two agree.
* Transparency (RGBA, LA, PA, P with a transparent colour) is composited on white.
* 16-bit images (``I;16``, ``I``) are scaled to 8 bits (v / 257, rounded); every other mode
  (L, P, CMYK, 1, YCbCr, …) goes through Pillow's ``convert("RGB")``.
* An animated image gives its first frame.
Every failure is an :class:`~tinyvit.core.errors.ImageError` that names the input. No torch
here, except to read a tensor given as an image.
"""

from __future__ import annotations

import io
import os
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tinyvit.core.errors import ImageError
from tinyvit.images.inputs import check_path, describe_input, is_image_url, is_tensor

if TYPE_CHECKING:
    import torch

__all__ = ["ImageInput", "exif_orientation", "load_image"]

ImageInput: TypeAlias = (
    "str | os.PathLike | bytes | bytearray | memoryview | BinaryIO | Image.Image | np.ndarray | torch.Tensor"
)
URL_TIMEOUT = 30.0  # seconds without data before an image download is abandoned
URL_MAX_BYTES = 100 * 2**20  # an image URL that sends more is refused


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
        except ImageError:  # a reader that already says what went wrong (run/search's photo files)
            raise
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
    if is_tensor(image):
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
            if exif_orientation(img) in (5, 6, 7, 8):  # stored rotated by 90°: swap the request
                w, h = h, w
            img.draft(img.mode, (w, h))
        img.load()
        if img.width == 0 or img.height == 0:
            raise ImageError(name, "empty image")
        if exif_orientation(img) != 1:  # exif_transpose would copy an upright image (36 MB at 12 MP)
            img = ImageOps.exif_transpose(img)
        return _to_rgb(img)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(name, f"image too large to decode safely ({e})") from e
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise ImageError(name, f"truncated or corrupt image ({e})") from e


def exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except (OSError, ValueError, SyntaxError, TypeError):  # unreadable EXIF: no orientation
        return 1
