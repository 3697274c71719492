"""Where the class token looks: attention rollout (Abnar & Zuidema, 2020) drawn over the image."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tinyvit.model import VisionTransformer
from tinyvit.preprocessing import ImageInput, load_image, normalize, resize_and_crop, resolve_spec

__all__ = ["attention_rollout", "class_token_map", "explain"]


def attention_rollout(attentions: list[torch.Tensor], residual: float = 0.5) -> torch.Tensor:
    """Per-layer attention (B, H, T, T) → rolled-out attention (B, T, T).

    Each layer's head-averaged attention is mixed with the identity for the residual path
    (``residual * I + (1 - residual) * A``), rows renormalised, and the layers multiplied from the
    first to the last.
    """
    B, _, T, _ = attentions[0].shape
    eye = torch.eye(T, dtype=torch.float32).expand(B, T, T)
    rollout = eye
    for attn in attentions:
        a = residual * eye + (1 - residual) * attn.float().mean(dim=1)
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout


def class_token_map(model: VisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, h, w): how much the class token draws on each patch, in [0, 1]."""
    with torch.inference_mode():
        _, attentions = model.forward_features(x, return_attention=True)
    grid_h = -(-x.shape[-2] // model.config.patch_size)
    grid_w = -(-x.shape[-1] // model.config.patch_size)
    weights = attention_rollout(attentions)[:, 0, 1:].reshape(-1, grid_h, grid_w)
    low = weights.amin(dim=(1, 2), keepdim=True)
    high = weights.amax(dim=(1, 2), keepdim=True)
    return (weights - low) / (high - low).clamp_min(1e-12)


def _heat_colors(v: np.ndarray) -> np.ndarray:
    """[0, 1] → RGB uint8 on a black → red → yellow → white ramp."""
    r = np.clip(v * 3, 0, 1)
    g = np.clip(v * 3 - 1, 0, 1)
    b = np.clip(v * 3 - 2, 0, 1)
    return (np.stack([r, g, b], axis=-1) * 255).round().astype(np.uint8)


def explain(image: ImageInput, model: VisionTransformer, output: str | os.PathLike, *, alpha: float = 0.55) -> Path:
    """Draw the class token's attention rollout over the model's view of ``image`` (the resized,
    center-cropped picture it classifies) and save it as PNG."""
    spec = resolve_spec(model)
    view = resize_and_crop(load_image(image), spec)
    param = next(model.parameters())
    x = normalize(view, spec)[None].to(device=param.device, dtype=param.dtype)
    heat = class_token_map(model, x)[0].cpu().numpy()
    heat_img = Image.fromarray((heat * 255).round().astype(np.uint8)).resize(view.size, Image.Resampling.BILINEAR)
    overlay = Image.fromarray(_heat_colors(np.asarray(heat_img) / 255.0))
    out = Path(output)
    Image.blend(view, overlay, alpha).save(out, format="PNG")
    return out
