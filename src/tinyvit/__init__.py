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

from tinyvit.core.errors import FitError, ImageError, TinyViTError, UnknownModelError, WeightsError

__version__ = "0.1.0"

# public name → the module that defines it, imported on first access
_LAZY = {
    # torch-free
    "available_models": "tinyvit.weights.manifest",
    "list_models": "tinyvit.weights.manifest",
    "ViTConfig": "tinyvit.core.config",
    "PreprocessSpec": "tinyvit.images.spec",
    "Weights": "tinyvit.weights.record",
    "Source": "tinyvit.weights.record",
    "Metrics": "tinyvit.weights.record",
    "Fit": "tinyvit.weights.record",
    # these import torch
    "download": "tinyvit.api",
    "get_model": "tinyvit.api",
    "load": "tinyvit.api",
    "preprocess": "tinyvit.api",
    "predict": "tinyvit.api",
    "predict_iter": "tinyvit.api",
    "embed": "tinyvit.api",
    "embed_iter": "tinyvit.api",
    "embed_text": "tinyvit.api",
    "ModelOptions": "tinyvit.run.options",
    "patch_features": "tinyvit.run.dense",
    "Index": "tinyvit.run.search",
    "evaluate": "tinyvit.run.evaluate",
    "Evaluation": "tinyvit.run.evaluate",
    "Prediction": "tinyvit.run.runner",
    "Embedding": "tinyvit.run.runner",
    "convert": "tinyvit.weights.convert",
    "fit": "tinyvit.run.fit",
    "FitOptions": "tinyvit.run.fit",
    "VisionTransformer": "tinyvit.models.vit",
}

__all__ = [
    "Embedding",
    "Evaluation",
    "Fit",
    "FitError",
    "FitOptions",
    "ImageError",
    "Index",
    "ModelOptions",
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
    "embed_text",
    "evaluate",
    "fit",
    "get_model",
    "list_models",
    "load",
    "patch_features",
    "predict",
    "predict_iter",
    "preprocess",
]

if TYPE_CHECKING:
    from tinyvit.api import (
        download,
        embed,
        embed_iter,
        embed_text,
        get_model,
        load,
        predict,
        predict_iter,
        preprocess,
    )
    from tinyvit.core.config import ViTConfig
    from tinyvit.images.spec import PreprocessSpec
    from tinyvit.models.vit import VisionTransformer
    from tinyvit.run.dense import patch_features
    from tinyvit.run.evaluate import Evaluation, evaluate
    from tinyvit.run.fit import FitOptions, fit
    from tinyvit.run.options import ModelOptions
    from tinyvit.run.runner import Embedding, Prediction
    from tinyvit.run.search import Index
    from tinyvit.weights.convert import convert
    from tinyvit.weights.manifest import available_models, list_models
    from tinyvit.weights.record import Fit, Metrics, Source, Weights


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
