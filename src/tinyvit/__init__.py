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

from tinyvit.errors import FitError, ImageError, TinyViTError, UnknownModelError, WeightsError

__version__ = "0.1.0"

# public name → the module that defines it, imported on first access
_LAZY = {
    # torch-free
    "available_models": "tinyvit.manifest",
    "list_models": "tinyvit.manifest",
    "ViTConfig": "tinyvit.config",
    "PreprocessSpec": "tinyvit.preprocessing",
    "Weights": "tinyvit.record",
    "Source": "tinyvit.record",
    "Metrics": "tinyvit.record",
    "Fit": "tinyvit.record",
    # these import torch
    "download": "tinyvit.api",
    "get_model": "tinyvit.api",
    "load": "tinyvit.api",
    "preprocess": "tinyvit.api",
    "predict": "tinyvit.api",
    "predict_iter": "tinyvit.api",
    "embed": "tinyvit.api",
    "embed_iter": "tinyvit.api",
    "evaluate": "tinyvit.evaluate",
    "Evaluation": "tinyvit.evaluate",
    "Prediction": "tinyvit.runner",
    "Embedding": "tinyvit.runner",
    "convert": "tinyvit.conversion",
    "fit": "tinyvit.fitting",
    "FitOptions": "tinyvit.fitting",
    "VisionTransformer": "tinyvit.model",
}

__all__ = [
    "Embedding",
    "Evaluation",
    "Fit",
    "FitError",
    "FitOptions",
    "ImageError",
    "Metrics",
    "Prediction",
    "PreprocessSpec",
    "Source",
    "TinyViTError",
    "UnknownModelError",
    "ViTConfig",
    "VisionTransformer",
    "Weights",
    "WeightsError",
    "__version__",
    "available_models",
    "convert",
    "download",
    "embed",
    "embed_iter",
    "evaluate",
    "fit",
    "get_model",
    "list_models",
    "load",
    "predict",
    "predict_iter",
    "preprocess",
]

if TYPE_CHECKING:
    from tinyvit.api import download, embed, embed_iter, get_model, load, predict, predict_iter, preprocess
    from tinyvit.config import ViTConfig
    from tinyvit.conversion import convert
    from tinyvit.evaluate import Evaluation, evaluate
    from tinyvit.fitting import FitOptions, fit
    from tinyvit.manifest import available_models, list_models
    from tinyvit.model import VisionTransformer
    from tinyvit.preprocessing import PreprocessSpec
    from tinyvit.record import Fit, Metrics, Source, Weights
    from tinyvit.runner import Embedding, Prediction


# the optional integrations, as submodules imported on first access: tinyvit.ray.Classifier
_SUBMODULES = ("ray", "serve", "export")


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"tinyvit.{name}")
    raise AttributeError(f"module 'tinyvit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
