"""The PCA pictures of the DINOv2 paper (Oquab et al., 2023, fig. 1 and §7): the first three
principal components of the patch features drawn as RGB over the photos.

As the paper does it: a first PCA over the patches of all the photos together; the first component
splits foreground from background by its sign (the sign whose side holds fewer of the border
patches is the foreground: the subject rarely fills the frame's edge); a second PCA over the
foreground patches alone, whose first three components, each scaled to [0, 1] over all the photos,
are the red, green and blue. The components are shared by all the photos, so the same part of
different objects takes the same colour. The background is left as the photo, dimmed.

Each map is computed on the model's view (the weights' resize and center crop) and drawn back over
the whole photo through the same geometry, as :mod:`tinyvit.run.explain` draws attention.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import atomic_path
from tinyvit.images.decode import ImageInput, load_image
from tinyvit.images.spec import PreprocessSpec
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.explain import picture_path
from tinyvit.run.runner import Runner

__all__ = ["explain_pca", "pca_colours", "principal_axes"]

OPACITY = 0.85  # of the colours over the foreground


def principal_axes(x: torch.Tensor, k: int) -> torch.Tensor:
    """The first ``k`` principal axes of the rows of ``x`` (M, D), as (k, D) unit rows, each signed
    so that its largest loading is positive (the SVD's signs are arbitrary)."""
    centred = x - x.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    axes = vh[:k]
    signs = axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)).sign()
    return axes * torch.where(signs == 0, 1.0, signs)


def _foreground(feats: torch.Tensor) -> torch.Tensor:
    """(N, h, w, D) → (N, h, w) bool: the side of the first component's sign with fewer border patches."""
    flat = feats.reshape(-1, feats.shape[-1])
    first = (flat - flat.mean(dim=0)) @ principal_axes(flat, 1)[0]
    positive = (first > 0).reshape(feats.shape[:3])
    border = torch.zeros(feats.shape[1:3], dtype=torch.bool)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = True
    on_border = positive[:, border].float().mean()
    return positive if on_border <= 0.5 else ~positive


def pca_colours(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Patch features (N, h, w, D) → (colours (N, h, w, 3) float in [0, 1], foreground (N, h, w)
    bool): the foreground's first three principal components as RGB, components shared by all N."""
    if feats.ndim != 4 or feats.shape[1] * feats.shape[2] < 4:
        raise TinyViTError(f"PCA pictures need patch features (N, h, w, D) on a grid of 2x2 or more, got "
                           f"{tuple(feats.shape)}")  # fmt: skip
    feats = feats.float()
    fg = _foreground(feats)
    if int(fg.sum()) < 3:  # too few foreground patches for three components: all of them
        fg = torch.ones_like(fg)
    chosen = feats[fg]  # (M, D)
    axes = principal_axes(chosen, 3)
    proj = (feats.reshape(-1, feats.shape[-1]) - chosen.mean(dim=0)) @ axes.T  # (N h w, k)
    if proj.shape[1] < 3:  # fewer than three dimensions (a tiny model): the missing ones grey
        proj = torch.cat([proj, torch.zeros(proj.shape[0], 3 - proj.shape[1])], dim=1)
    lo, hi = proj[fg.reshape(-1)].amin(dim=0), proj[fg.reshape(-1)].amax(dim=0)
    colours = ((proj - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    return colours.reshape(*feats.shape[:3], 3).numpy(), fg.numpy()


def _draw(photo: Image.Image, colours: np.ndarray, fg: np.ndarray, spec: PreprocessSpec) -> Image.Image:
    """One photo with its (h, w, 3) colours over the part the model saw; background and the unseen
    rest dimmed."""
    W, H = photo.size
    rw, rh = spec.resized_size(W, H)
    left, top, right, bottom = spec.crop_box(rw, rh)
    sx, sy = W / rw, H / rh  # view pixels → photo pixels
    x0, y0, x1, y1 = round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)
    rgba = np.concatenate([colours, fg[..., None].astype(np.float64)], axis=-1)
    layer = Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").resize(
        (max(x1 - x0, 1), max(y1 - y0, 1)), Image.Resampling.BICUBIC
    )
    base = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255
    out = base * 0.35  # background and what the model did not see: dimmed
    # the crop box may reach past the photo ("longest" pads): only the part inside is drawn
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, H)
    over = np.asarray(layer, dtype=np.float32)[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] / 255
    alpha = OPACITY * over[..., 3:]
    region = out[cy0:cy1, cx0:cx1]
    out[cy0:cy1, cx0:cx1] = region * (1 - alpha) + over[..., :3] * alpha
    return Image.fromarray((out * 255).round().astype(np.uint8))


def _side_by_side(panels: list[Image.Image]) -> Image.Image:
    """The panels in a row, each scaled to the first one's height."""
    height = panels[0].height
    scaled = [p if p.height == height else p.resize((max(1, round(p.width * height / p.height)), height),
                                                    Image.Resampling.BICUBIC) for p in panels]  # fmt: skip
    row = Image.new("RGB", (sum(p.width for p in scaled), height))
    x = 0
    for p in scaled:
        row.paste(p, (x, 0))
        x += p.width
    return row


def explain_pca(
    images: Sequence[ImageInput],
    model: VisionTransformer,
    output: str | os.PathLike,
    *,
    preprocess: PreprocessSpec | str | None = None,
    batch_size: int = 8,
) -> Path:
    """Draw the first three principal components of the patch features of ``images`` (shared by all
    of them) as RGB over each photo, side by side (each scaled to the first one's height; one photo:
    its own size), and save the picture to ``output`` (.png, .jpg, .webp, .bmp, .tif); returns the
    path. ``preprocess`` overrides the weights' (``crop`` sets the grid: a larger one, finer maps)."""
    out, fmt = picture_path(output)
    if not images:
        raise TinyViTError("explain_pca needs at least one image")
    runner = Runner(model, task="patches", preprocess=preprocess)
    feats = torch.stack([e.vector for e in runner.stream(list(images), batch_size=batch_size)])  # type: ignore[misc]
    colours, fg = pca_colours(feats)
    panels = [_draw(load_image(image), c, f, runner.spec) for image, c, f in zip(images, colours, fg, strict=True)]
    picture = _side_by_side(panels)
    try:
        with atomic_path(out, suffix=out.suffix) as tmp:
            picture.save(tmp, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    except OSError as e:
        raise TinyViTError(f"cannot write {str(out)!r}: {e.strerror or e}") from e
    return out
