"""tinyvit: exact, lightweight Vision Transformer inference.

>>> import tinyvit
>>> model = tinyvit.load("vit-base-p32-384")          # weights from the Hub, SHA-256 checked
>>> x = tinyvit.preprocess("bird.jpg", model)           # (3, 384, 384), as the weights were evaluated
>>> logits = model(x[None])

Importing tinyvit is cheap: torch, Pillow and the rest load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from tinyvit.errors import ImageError, TinyViTError, WeightsError

__version__ = "0.1.0"

# public name → the module that defines it, imported on first access
_LAZY = {
    "available_models": "tinyvit.api",
    "download": "tinyvit.api",
    "list_models": "tinyvit.api",
    "get_model": "tinyvit.api",
    "load": "tinyvit.api",
    "predict": "tinyvit.api",
    "Prediction": "tinyvit.api",
    "convert": "tinyvit.conversion",
    "preprocess": "tinyvit.preprocessing",
    "PreprocessSpec": "tinyvit.preprocessing",
    "ViTConfig": "tinyvit.model",
    "VisionTransformer": "tinyvit.model",
    "UnknownModelError": "tinyvit.manifest",
}

__all__ = [
    "ImageError",
    "Prediction",
    "PreprocessSpec",
    "TinyViTError",
    "UnknownModelError",
    "ViTConfig",
    "VisionTransformer",
    "WeightsError",
    "__version__",
    "available_models",
    "convert",
    "download",
    "get_model",
    "list_models",
    "load",
    "predict",
    "preprocess",
]

if TYPE_CHECKING:
    from tinyvit.api import Prediction, available_models, download, get_model, list_models, load, predict
    from tinyvit.conversion import convert
    from tinyvit.manifest import UnknownModelError
    from tinyvit.model import VisionTransformer, ViTConfig
    from tinyvit.preprocessing import PreprocessSpec, preprocess


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinyvit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
