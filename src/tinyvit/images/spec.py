"""How a weight's evaluation turned an image into a tensor, as plain data: :class:`PreprocessSpec`.

Three geometries cover the evaluation pipelines of timm, mmpretrain, open_clip and transformers:

* ``"short-edge"`` (timm, mmpretrain, open_clip's ``shortest``, transformers' CLIP and DINOv2
  processors): resize the short edge to ``resize`` (long edge ``int(resize * long / short)``,
  truncated), then center-crop ``crop`` × ``crop``;
* ``"squash"`` (transformers' ViT and SigLIP processors, timm's ``crop_mode="squash"``, open_clip's
  ``squash``): resize to ``resize`` × ``resize`` whatever the aspect, then center-crop ``crop``
  (nothing when equal);
* ``"longest"`` (open_clip's ``longest``): resize the long edge to ``resize`` (each side
  ``round(side / ratio)``), then pad with black to ``crop`` × ``crop``, centred.

The crop's offset is ``int(round((side - crop) / 2))`` (Python's half-to-even round: timm,
torchvision, open_clip, mmpretrain) or ``(side - crop) // 2`` (``crop_offset="floor"``:
transformers). The resize runs on the uint8 image, in Pillow (``backend="pil"``) or in torch's
antialiased interpolation on a uint8 tensor (``backend="torch"``: what transformers' torchvision
backend runs, its default since 5.25). Then ``(x - mean) / std`` in float32, with ``mean`` and
``std`` in 0–255 pixel values. transformers' DINOv3 processor rescales first and resizes the float
image (``float_resize``: torch backend only): ``x / 255`` in float32, resized and cropped without
rounding, then ``(x - mean / 255) / (std / 255)``, as it computes it.

The spec is pure data (no Pillow, numpy or torch here); ``images.py`` applies it to images, and a
spec is callable as a shortcut for that: ``spec(image)`` → the (3, crop, crop) tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "INTERPOLATIONS", "MEAN_PRESETS", "POS_EMBED_RESIZES", "RESIZE_MODES", "SIZE_RULES", "STD_PRESETS",
    "PreprocessSpec", "SizeRule", "build_spec", "size_rule",
]  # fmt: skip

INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")  # Pillow's filters, timm's names
RESIZE_MODES = ("short-edge", "squash", "longest")
CROP_OFFSETS = ("round", "floor")
BACKENDS = ("pil", "torch")
TORCH_INTERPOLATIONS = ("nearest", "bilinear", "bicubic")  # what the torch backend resizes with
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
    resize_mode: str = "short-edge"  # one of RESIZE_MODES: see the module docstring
    crop_offset: str = "round"  # or "floor" (transformers)
    backend: str = "pil"  # or "torch" (transformers' torchvision backend)
    float_resize: bool = False  # resize the image rescaled to [0, 1] float32, not uint8 (transformers' DINOv3)

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        for name, allowed in (("resize_mode", RESIZE_MODES), ("crop_offset", CROP_OFFSETS), ("backend", BACKENDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.backend == "torch" and self.interpolation not in TORCH_INTERPOLATIONS:
            allowed = ", ".join(TORCH_INTERPOLATIONS)
            raise ValueError(f"the torch backend resizes with {allowed}, not {self.interpolation}")
        if self.float_resize and (self.backend != "torch" or self.resize_mode == "longest"):
            raise ValueError("float_resize (transformers' DINOv3 processor) needs backend 'torch', not 'longest'")
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
        if self.resize_mode == "longest":  # open_clip's ResizeKeepRatio(longest=1)
            ratio = max(height / self.resize, width / self.resize)
            return round(width / ratio), round(height / ratio)
        if width <= height:
            return self.resize, int(self.resize * height / width)
        return int(self.resize * width / height), self.resize

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the center crop in a resized image of ``width`` × ``height``
        (negative where the ``"longest"`` mode pads)."""
        if self.crop_offset == "floor":
            left, top = (width - self.crop) // 2, (height - self.crop) // 2
        else:
            left, top = int(round((width - self.crop) / 2)), int(round((height - self.crop) / 2))
        return left, top, left + self.crop, top + self.crop

    # -- serialisation

    def to_dict(self) -> dict:
        """The fields; the last three only where they are not the defaults, so records and files
        written for Pillow-based pipelines read in older versions too."""
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        for name, default in (("crop_offset", "round"), ("backend", "pil"), ("float_resize", False)):
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> PreprocessSpec:
        known = {f.name for f in fields(cls)}
        if unknown := sorted(set(d) - known):
            raise ValueError(f"unknown PreprocessSpec field(s): {', '.join(unknown)}")
        return cls(
            d["resize"], d["crop"], d["interpolation"], tuple(d["mean"]), tuple(d["std"]),
            d.get("resize_mode", "short-edge"), d.get("crop_offset", "round"), d.get("backend", "pil"),
            bool(d.get("float_resize", False)),
        )  # fmt: skip

    def __call__(self, image: Any, *, fast: bool = False) -> torch.Tensor:
        """One image → its (3, crop, crop) float32 tensor: the transform that goes with the weights.
        (Runs :func:`tinyvit.images.transforms.preprocess_one`, imported here on first use: it needs Pillow.)"""
        from tinyvit.images.transforms import preprocess_one

        return preprocess_one(image, self, fast=fast)

    def __str__(self) -> str:
        if self.resize_mode == "short-edge":
            geometry = f"short edge {self.resize}, center crop {self.crop}"
        elif self.resize_mode == "longest":
            geometry = f"long edge {self.resize}, padded to {self.crop}x{self.crop}"
        else:
            geometry = f"squash to {self.resize}x{self.resize}"
            geometry += f", center crop {self.crop}" if self.crop != self.resize else ""
        if self.crop_offset == "floor" and self.resize_mode != "longest" and "crop" in geometry:
            geometry += " (offset rounded down)"
        backend = (" (torch, on floats)" if self.float_resize else " (torch)") if self.backend == "torch" else ""
        mean = ", ".join(f"{m:g}" for m in self.mean)
        std = ", ".join(f"{v:g}" for v in self.std)
        return f"{geometry}, {self.interpolation}{backend}; mean ({mean}), std ({std})"


# ---------------------------------------------------------------------------------------------
# Other sizes: what the weights' home library does with an image the size of no crop


# How the position embedding follows another patch grid (models.vit.resample_pos_embed):
#   "bicubic"     bicubic to the new grid, no antialiasing (mmpretrain, transformers' ViT / CLIP / SigLIP /
#                 Dinov2Model, open_clip)
#   "bicubic_aa"  the same, antialiased (timm's resample_abs_pos_embed, transformers' Dinov2WithRegisters,
#                 DINOv2's own code for its register models)
#   "dinov2"      DINOv2's own code for its models without registers: bicubic with the scale factor
#                 (n + 0.1) / grid, no antialiasing; none at the trained grid of a square image
POS_EMBED_RESIZES = ("bicubic", "bicubic_aa", "dinov2")


@dataclass(frozen=True)
class SizeRule:
    """What the weights' home library does with an input of another size than the trained one.
    Not the architecture (the same ViT runs under any rule): a property of how its library feeds
    it, like the preprocessing. The defaults are timm's (``dynamic_img_size=True``)."""

    pad: bool = False  # zero-pad to whole patches (mmpretrain); False: the remainder is dropped
    resample: str = "bicubic_aa"  # how the position embedding is resampled: one of POS_EMBED_RESIZES

    def __post_init__(self) -> None:
        if self.resample not in POS_EMBED_RESIZES:
            allowed = ", ".join(POS_EMBED_RESIZES)
            raise ValueError(f"SizeRule.resample must be one of {allowed}, got {self.resample!r}")

    @property
    def any_size_graph(self) -> bool:
        """Whether one traced graph serves every input size (all but DINOv2's own rule, which
        branches on the size as its code does)."""
        return self.resample != "dinov2"

    def to_dict(self) -> dict:
        return {"pad": self.pad, "resample": self.resample}

    @classmethod
    def from_dict(cls, d: dict) -> SizeRule:
        if unknown := sorted(set(d) - {"pad", "resample"}):
            raise ValueError(f"unknown SizeRule field(s): {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def from_legacy_config(cls, config: dict) -> SizeRule:
        """The rule tinyvit 0.1 wrote into a record's config (``dynamic_img_pad``, default True;
        ``pos_embed_resize``, default ``"bicubic"``)."""
        return cls(bool(config.get("dynamic_img_pad", True)), str(config.get("pos_embed_resize", "bicubic")))


# Each layout's home library (weights.layouts): timm, transformers, mmpretrain, Google's JAX code, open_clip, DINOv2
SIZE_RULES = {
    "timm": SizeRule(False, "bicubic_aa"), "hf": SizeRule(False, "bicubic"), "mmpretrain": SizeRule(True, "bicubic"),
    "npz": SizeRule(True, "bicubic"), "open_clip": SizeRule(False, "bicubic"), "dinov2": SizeRule(False, "dinov2"),
}  # fmt: skip


def size_rule(layout: str, *, registers: bool = False, pos_embed: bool = True) -> SizeRule:
    """The size rule of weights in ``layout``: its library's. DINOv2 with registers (its own code,
    transformers' ``Dinov2WithRegisters``) resamples antialiased, with no offset. Meta's own code
    without an absolute position embedding (DINOv3: rotary) has nothing to resample: not DINOv2's
    rule, which branches on the input size."""
    if (registers and layout in ("hf", "dinov2")) or (not pos_embed and layout == "dinov2"):
        return SizeRule(False, "bicubic_aa")
    return SIZE_RULES[layout]


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
