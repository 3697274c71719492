"""Dense features: every patch's token on the image's patch grid (issue #26).

What DINOv2 / DINOv3 users mostly want (segmentation, depth, correspondence, the PCA pictures of
the papers): the final-norm patch tokens, prefix tokens (class token, registers) left out, laid
out as the grid they came from — DINOv2's ``x_norm_patchtokens``, timm's ``forward_features``
without its ``num_prefix_tokens``, transformers' ``last_hidden_state[:, 1 + registers:]``. The
grid follows the input: a tensor of any size gives its own (h, w).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from tinyvit.core.errors import TinyViTError
from tinyvit.images.decode import ImageInput
from tinyvit.images.transforms import preprocess as preprocess_images
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.options import DEFAULT_MODEL, ModelOptions
from tinyvit.run.runtime import model_for
from tinyvit.weights._builder import resolve_preprocess

__all__ = ["patch_features", "patch_tokens"]


def patch_tokens(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """Preprocessed images (B, C, H, W) → their patch tokens after the final norm, (B, h, w, D),
    row by row as the patches lie in the image."""
    trace = model.forward_trace(x, blocks=())
    h, w = trace.grid
    patches = trace.tokens[:, model.config.num_prefix_tokens :]  # (B, h * w, D)
    return patches.reshape(x.shape[0], h, w, patches.shape[-1])


def patch_features(
    images: ImageInput | Sequence[ImageInput] | torch.Tensor,
    model: str | os.PathLike | VisionTransformer = DEFAULT_MODEL,
    *,
    batch_size: int = 8,
    options: ModelOptions | None = None,
    **model_options: Any,
) -> torch.Tensor:
    """Images → their patch features (N, h, w, D), float32 on the CPU, equal to the home library's
    patch tokens. ``images``: one image or a list (files, URLs, PIL images, arrays: preprocessed
    as the weights were evaluated, or as ``preprocess=`` says), or a tensor (B, 3, H, W) already
    preprocessed, of any size (the grid follows it). ``model``: a zoo name, a checkpoint, or a
    loaded model; ``model_options`` as :func:`tinyvit.load` takes them."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise TinyViTError(f"batch_size must be a positive int, got {batch_size!r}")
    o = ModelOptions.of(options, **model_options)
    net = model_for(model, o if isinstance(model, str | os.PathLike) else ModelOptions(device=o.device, dtype=o.dtype))
    if isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images.unsqueeze(0)
    else:
        spec = resolve_preprocess(o.preprocess if o.preprocess is not None else net)
        x = preprocess_images(list(images) if isinstance(images, (list, tuple)) else [images], spec)
    param = next(net.parameters())
    out = []
    with torch.inference_mode():
        for batch in x.split(batch_size):
            out.append(patch_tokens(net, batch.to(device=param.device, dtype=param.dtype)).float().cpu())
    return torch.cat(out)
