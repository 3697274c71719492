"""Which inputs are images, and how to name them: files, folders (recursively, and as ImageFolder
class trees), http(s) URLs, and a short name for any input in error messages. No Pillow, no torch."""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tinyvit.core.errors import ImageError, TinyViTError

__all__ = [
    "IMAGE_SUFFIXES",
    "is_tensor",
    "check_path",
    "check_paths",
    "class_folders",
    "describe_input",
    "expand_inputs",
    "files_from_args",
    "image_files",
    "is_image_url",
]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
_URL_SCHEMES = ("http", "https", "ftp", "s3", "gs", "hf")


def is_image_url(image: Any) -> bool:
    """An ``http://`` or ``https://`` URL given as an image (fetched as transformers' pipeline does)."""
    return isinstance(image, str) and image.split("://", 1)[0].lower() in ("http", "https") and "://" in image


def is_tensor(x: Any) -> bool:
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
    if hasattr(image, "shape") and hasattr(image, "dtype"):  # a numpy array, a tensor
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
    if isinstance(text, str) and "://" in text and (scheme := text.split("://", 1)[0].lower()) in _URL_SCHEMES:
        raise ImageError(name, f"the {scheme}:// scheme is not supported: only http(s) URLs are fetched; download "
                         "the image first and pass the local file")  # fmt: skip
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


def class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """An ImageFolder tree (one subfolder of images per class): (subfolder name, its image files)
    per subfolder, sorted by name; hidden ones (``.ipynb_checkpoints``, ``.git``) are not classes.
    A class folder without images is listed with none: what that means is the caller's to say."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    return [(folder.name, image_files(folder)) for folder in folders]


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
            files.extend(_folder_files(p, repr(m)) if p.is_dir() else [check_path(m, repr(m))])  # m: a Path drops "//"
    return files
