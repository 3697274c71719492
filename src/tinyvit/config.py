"""The architecture of a ViT, as plain data: no torch needed to read, compare or store it."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ViTConfig"]


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0: no head, forward() returns the class-token feature
    in_chans: int = 3
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"ViTConfig.num_classes must be an int >= 0, got {self.num_classes!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViTConfig.embed_dim ({self.embed_dim}) is not divisible by num_heads ({self.num_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size})"
            )
        if not self.mlp_ratio > 0 or not self.layer_norm_eps > 0:
            raise ValueError("ViTConfig.mlp_ratio and layer_norm_eps must be > 0")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s): {', '.join(unknown)}")
        return cls(**d)
