"""Where the class token looks: attention rollout (Abnar & Zuidema, 2020) drawn over the image.

The model sees a resized, center-cropped view of the photo; the map is computed on that view and
drawn back over the whole photo through the same geometry, so nothing of the picture is lost:
the part the model did not see is dimmed and outlined. Colour and opacity both grow with
attention, so low-attention areas keep the photo's own colours. A colour scale gives the values as
multiples of a uniform share (1× = every patch equal) on one fixed logarithmic scale, from 1×
(clear) to 8× and more (full colour), so maps of different images compare and a flat map stays
clear; the prediction is written on the picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from tinyvit.core.errors import TinyViTError
from tinyvit.core.fsutil import atomic_path
from tinyvit.images.decode import ImageInput, load_image
from tinyvit.images.spec import PreprocessSpec
from tinyvit.images.transforms import preprocess_one
from tinyvit.models.vit import VisionTransformer
from tinyvit.run.runner import Runner, model_output

__all__ = ["FORMATS", "attention_rollout", "class_token_map", "explain", "render"]

# file extension → Pillow format
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP", ".bmp": "BMP", ".tif": "TIFF",
           ".tiff": "TIFF"}  # fmt: skip
SCALE_MAX = 8.0  # multiples of a uniform share drawn in full colour


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
    """(B, 3, H, W) → (B, h, w): the share of the class token's rolled-out attention on each patch
    (each map sums to 1 over the patches; the other prefix tokens — distillation token, registers —
    are left out). A model without a class token (SigLIP) gives the mean over all tokens' rows."""
    with torch.inference_mode():
        out = model.forward_trace(x, attention=True)
    rollout = attention_rollout(out.attention)
    rows = rollout[:, 0] if model.config.class_token else rollout.mean(dim=1)  # (B, T)
    weights = rows[:, model.config.num_prefix_tokens :].reshape(-1, *out.grid)
    return weights / weights.sum(dim=(1, 2), keepdim=True)


def _colormap(v: np.ndarray) -> np.ndarray:
    """[0, 1] → RGB float in [0, 1]: dark violet → red → orange → light yellow (perceptually ordered)."""
    stops = np.array([[0.20, 0.02, 0.40], [0.75, 0.10, 0.35], [0.98, 0.45, 0.05], [1.00, 0.95, 0.55]])
    pos = np.clip(v, 0, 1) * (len(stops) - 1)
    i = np.minimum(pos.astype(int), len(stops) - 2)
    t = (pos - i)[..., None]
    return stops[i] * (1 - t) + stops[i + 1] * t


def render(
    photo: Image.Image, share: np.ndarray, spec: PreprocessSpec, caption: str, *, max_opacity: float = 0.75
) -> Image.Image:
    """The attention map ``share`` (h, w patches of the model's view, summing to 1) drawn over the
    whole ``photo`` (RGB, as decoded), with a colour scale and ``caption``."""
    W, H = photo.size
    rw, rh = spec.resized_size(W, H)
    left, top, right, bottom = spec.crop_box(rw, rh)
    sx, sy = W / rw, H / rh  # view pixels → photo pixels
    box = (round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
    bw, bh = max(box[2] - box[0], 1), max(box[3] - box[1], 1)

    relative = share * share.size  # 1.0 = a uniform share
    level = np.clip(np.log(np.maximum(relative, 1e-12)) / np.log(SCALE_MAX), 0, 1)  # 1x → 0, 8x → 1
    level_img = Image.fromarray((level * 255).round().astype(np.uint8)).resize((bw, bh), Image.Resampling.BICUBIC)
    v = np.asarray(level_img, dtype=np.float32) / 255

    base = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255
    out = base * 0.45 + 0.55 * 0.5  # what the model did not see: dimmed
    region = base[box[1] : box[1] + bh, box[0] : box[0] + bw]
    alpha = (max_opacity * v**1.5)[..., None]  # low attention stays clear
    out[box[1] : box[1] + bh, box[0] : box[0] + bw] = region * (1 - alpha) + _colormap(v) * alpha
    image = Image.fromarray((out * 255).round().astype(np.uint8))

    draw = ImageDraw.Draw(image)
    unit = max(2, min(W, H) // 200)
    if box != (0, 0, W, H):
        draw.rectangle([box[0], box[1], box[0] + bw - 1, box[1] + bh - 1], outline=(255, 255, 255), width=unit)
    font = ImageFont.load_default(size=max(12, min(W, H) // 28))
    pad = 3 * unit
    # caption, top left, on a dark band
    while len(caption) > 8 and draw.textlength(caption, font=font) > W - 2 * pad:  # fit the width
        caption = caption[: -4 if caption.endswith("...") else -1].rstrip() + "..."
    tb = draw.textbbox((pad, pad), caption, font=font)
    draw.rectangle([tb[0] - pad, tb[1] - pad, tb[2] + pad, tb[3] + pad], fill=(0, 0, 0))
    draw.text((pad, pad), caption, fill=(255, 255, 255), font=font)
    # colour scale, bottom right: 1× … 8× a uniform share, and the map's own maximum
    bar_w, bar_h = max(60, W // 4), max(8, H // 40)
    x0, y0 = W - bar_w - 2 * pad, H - bar_h - 2 * pad - (tb[3] - tb[1]) - pad
    legend = f"attention: 1x to {SCALE_MAX:g}x a uniform share (max {float(relative.max()):.1f}x)"
    lb = draw.textbbox((0, 0), legend, font=font)
    lx = max(pad, x0 + bar_w - (lb[2] - lb[0]))
    draw.rectangle([min(lx, x0) - pad, y0 - pad, W - 1, H - 1], fill=(0, 0, 0))  # a dark band, as the caption's
    ramp = _colormap(np.linspace(0, 1, bar_w))[None].repeat(bar_h, axis=0)
    image.paste(Image.fromarray((ramp * 255).round().astype(np.uint8)), (x0, y0))
    draw.rectangle([x0 - 1, y0 - 1, x0 + bar_w, y0 + bar_h], outline=(255, 255, 255), width=1)
    draw.text((lx, y0 + bar_h + pad // 2), legend, fill=(255, 255, 255), font=font)
    return image


def picture_path(output: str | os.PathLike) -> tuple[Path, str]:
    """Where a picture goes and Pillow's format for it (from the extension), or the one-line error
    saying why not: an unknown extension, a folder that does not exist."""
    out = Path(output)
    fmt = FORMATS.get(out.suffix.lower())
    if fmt is None:
        raise TinyViTError(f"{str(out)!r}: the output must end in one of {', '.join(sorted(FORMATS))}")
    if not out.parent.is_dir():
        raise TinyViTError(f"{str(out)!r}: the folder {str(out.parent)!r} does not exist")
    return out, fmt


def explain(
    image: ImageInput, model: VisionTransformer, output: str | os.PathLike, *, caption: str | None = None
) -> Path:
    """Draw the class token's attention rollout over ``image`` and save it to ``output``, in the
    format its extension names (.png, .jpg, .webp, .bmp, .tif); returns the path."""
    out, fmt = picture_path(output)
    classifier = model_output(model) == "classes"
    runner = Runner(model, task="classify" if classifier else "embed", top_k=1)
    spec = runner.spec
    photo = load_image(image)
    x = preprocess_one(photo, spec)[None]
    param = next(model.parameters())
    share = class_token_map(model, x.to(device=param.device, dtype=param.dtype))[0].float().cpu().numpy()
    if caption is None:
        top = runner.forward(x)[0] if classifier else None
        caption = f"{top.name}  {top.score:.2f}" if top is not None else (model.weights.spec if model.weights else "")
    picture = render(photo, share, spec, caption)
    try:
        with atomic_path(out, suffix=out.suffix) as tmp:
            picture.save(tmp, format=fmt, **({"quality": 92} if fmt in ("JPEG", "WEBP") else {}))
    except OSError as e:
        raise TinyViTError(f"cannot write {str(out)!r}: {e.strerror or e}") from e
    return out
