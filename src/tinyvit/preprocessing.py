"""How a weight's evaluation turned an image into a tensor, as plain data: :class:`PreprocessSpec`.

Two geometries cover the evaluation pipelines of timm, mmpretrain and transformers:

* ``"short-edge"`` (timm, mmpretrain): resize the short edge to ``resize`` (long edge
  ``int(resize * long / short)``, truncated), then center-crop ``crop`` × ``crop`` (offset
  ``int(round((side - crop) / 2))``, Python's half-to-even round);
* ``"squash"`` (transformers' ``ViTImageProcessor``, timm's ``crop_mode="squash"``): resize to
  ``resize`` × ``resize`` whatever the aspect, then center-crop ``crop`` (nothing when equal).

Then ``(x - mean) / std`` in float32, with ``mean`` and ``std`` in 0–255 pixel values. The spec is
pure data (no Pillow, numpy or torch here); ``images.py`` applies it to images, and a spec is
callable as a shortcut for that: ``spec(image)`` → the (3, crop, crop) tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["INTERPOLATIONS", "MEAN_PRESETS", "RESIZE_MODES", "STD_PRESETS", "PreprocessSpec", "build_spec"]

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")  # Pillow's filters, timm's names
RESIZE_MODES = ("short-edge", "squash")
MEAN_PRESETS = {"imagenet": (123.675, 116.28, 103.53), "inception": (127.5, 127.5, 127.5)}
STD_PRESETS = {"imagenet": (58.395, 57.12, 57.375), "inception": (127.5, 127.5, 127.5)}


@dataclass(frozen=True)
class PreprocessSpec:
    """How one weight's evaluation turned an image into a tensor (see the module docstring)."""

    resize: int  # short edge after resizing ("short-edge"), or the square's side ("squash"), pixels
    crop: int  # side of the square center crop, pixels
    interpolation: str  # one of INTERPOLATIONS: Pillow's filters (antialiased when downsampling)
    mean: tuple[float, float, float]  # RGB, 0–255 pixel values
    std: tuple[float, float, float]  # RGB, 0–255 pixel values
    resize_mode: str = "short-edge"  # or "squash": see the module docstring

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {self.resize_mode!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {self.interpolation!r}")
        for name in ("resize", "crop"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"PreprocessSpec.{name} must be a positive int, got {value!r}")
        if self.crop > self.resize:
            raise ValueError(f"crop ({self.crop}) is larger than resize ({self.resize})")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise ValueError("mean and std need 3 values each, std > 0")

    # -- geometry (pure arithmetic: the image module applies it)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after resizing an image of ``width`` × ``height``."""
        if self.resize_mode == "squash":
            return self.resize, self.resize
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the center crop in a resized image of ``width`` × ``height``."""
        left = int(round((width - self.crop) / 2))
        top = int(round((height - self.crop) / 2))
        return left, top, left + self.crop, top + self.crop

    # -- serialisation

    def to_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {"resize", "crop", "interpolation", "mean", "std", "resize_mode"}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown PreprocessSpec field(s): {', '.join(unknown)}")
        return cls(
            d["resize"], d["crop"], d["interpolation"], tuple(d["mean"]), tuple(d["std"]),
            d.get("resize_mode", "short-edge"),
        )  # fmt: skip

    def __call__(self, image: Any, *, fast: bool = False) -> torch.Tensor:
        """One image → its (3, crop, crop) float32 tensor: the transform that goes with the weights.
        (Runs :func:`tinyvit.images.preprocess_one`, imported here on first use: it needs Pillow.)"""
        from tinyvit.images import preprocess_one

        return preprocess_one(image, self, fast=fast)

    def __str__(self) -> str:
        geometry = (
            f"short edge {self.resize}, center crop {self.crop}"
            if self.resize_mode == "short-edge"
            else f"squash to {self.resize}x{self.resize}"
            + (f", center crop {self.crop}" if self.crop != self.resize else "")
        )
        mean = ", ".join(f"{m:g}" for m in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"{geometry}, {self.interpolation}; mean ({mean}), std ({std})"


def _triple(name: str, value: Any, presets: dict) -> tuple[float, float, float]:
    """3 numbers, or the name of a preset (``"imagenet"``, ``"inception"``)."""
    if isinstance(value, str) or (isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], str)):
        key = (value if isinstance(value, str) else value[0]).lower()
        if key in presets:
            return presets[key]
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        numbers = ()
    if len(numbers) != 3:
        raise ValueError(f"{name} takes 3 numbers (R G B, in 0-255 pixel values) or one of {', '.join(presets)}")
    return numbers  # type: ignore[return-value]


def build_spec(
    base: PreprocessSpec | None = None,
    *,
    crop: int | None = None,
    resize: int | None = None,
    interpolation: str | None = None,
    mean: Any = None,
    std: Any = None,
    squash: bool = False,
) -> PreprocessSpec | None:
    """A spec from explicit values, each overriding ``base``'s (None: not given). Without a base,
    ``crop``, ``mean`` and ``std`` are needed; ``resize`` defaults to the crop, the interpolation to
    bicubic. ``mean`` / ``std``: 3 numbers in 0–255 or a preset name. None when nothing is given.
    Raises ValueError naming what is wrong."""
    explicit = {
        "crop": crop,
        "resize": resize,
        "interpolation": interpolation,
        "mean": None if mean is None else _triple("mean", mean, MEAN_PRESETS),
        "std": None if std is None else _triple("std", std, STD_PRESETS),
        "resize_mode": "squash" if squash else None,
    }
    explicit = {k: v for k, v in explicit.items() if v is not None}
    if base is not None:
        return replace(base, **explicit) if explicit else base
    if not explicit:
        return None
    missing = [k for k in ("crop", "mean", "std") if k not in explicit]
    if missing:
        raise ValueError(f"explicit preprocessing needs {', '.join(missing)} (or a spec to start from)")
    return PreprocessSpec(
        resize=explicit.get("resize", explicit["crop"]),
        crop=explicit["crop"],
        interpolation=explicit.get("interpolation", "bicubic"),
        mean=explicit["mean"],
        std=explicit["std"],
        resize_mode=explicit.get("resize_mode", "short-edge"),
    )
