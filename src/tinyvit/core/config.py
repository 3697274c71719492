"""The architecture of a ViT, as plain data: no torch needed to read, compare or store it.

The fields after ``layer_norm_eps`` are the options that change the graph, with timm's names and
meanings (``timm.models.vision_transformer.VisionTransformer``); their defaults give the original
ViT. The last two say what the weights' home library does with other input sizes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ACT_LAYERS", "GLOBAL_POOLS", "POS_EMBED_RESIZES", "ViTConfig"]

ACT_LAYERS = ("gelu", "quick_gelu", "gelu_tanh")  # exact GELU; CLIP's x * sigmoid(1.702 x); GELU, tanh form
GLOBAL_POOLS = ("token", "avg", "map")  # class token; mean of the patch tokens; attention pooling (SigLIP)
# How the position embedding follows another patch grid (model.resample_pos_embed):
#   "bicubic"     bicubic to the new grid, no antialiasing (mmpretrain, transformers' ViT / CLIP / SigLIP /
#                 Dinov2Model)
#   "bicubic_aa"  the same, antialiased (timm's resample_abs_pos_embed, transformers' Dinov2WithRegisters,
#                 DINOv2's own code for its register models)
#   "dinov2"      DINOv2's own code for its models without registers: bicubic with the scale factor
#                 (n + 0.1) / grid, no antialiasing; none at the trained grid of a square image
POS_EMBED_RESIZES = ("bicubic", "bicubic_aa", "dinov2")


@dataclass(frozen=True)
class ViTConfig:
    image_size: int = 224
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    num_classes: int = 1000  # 0: no head, forward() returns the pooled feature
    in_chans: int = 3
    layer_norm_eps: float = 1e-6
    class_token: bool = True
    reg_tokens: int = 0  # register tokens after the class token (DINOv2 with registers)
    dist_token: bool = False  # DeiT's distillation token and its head (head_dist); the output is the mean of both heads
    no_embed_class: bool = False  # the position embedding covers the patches only, not the prefix tokens
    init_values: float | None = None  # LayerScale (ls1.gamma, ls2.gamma) in every block when set
    pre_norm: bool = False  # a norm before the blocks (norm_pre, CLIP); the patch projection then has no bias
    act_layer: str = "gelu"  # the MLPs' activation: one of ACT_LAYERS
    global_pool: str = "token"  # one of GLOBAL_POOLS
    fc_norm: bool = False  # the final norm after pooling (fc_norm) instead of on all tokens (norm)
    head_bias: bool = True  # False: a bias-free projection head (CLIP's)
    qkv_bias: bool = True
    dynamic_img_pad: bool = True  # other sizes: zero-pad to whole patches (mmpretrain); False: the remainder is dropped
    pos_embed_resize: str = "bicubic"  # other sizes: one of POS_EMBED_RESIZES

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "embed_dim", "depth", "num_heads", "in_chans"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ViTConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ValueError(f"ViTConfig.num_classes must be an int >= 0, got {self.num_classes!r}")
        if not isinstance(self.reg_tokens, int) or self.reg_tokens < 0:
            raise ValueError(f"ViTConfig.reg_tokens must be an int >= 0, got {self.reg_tokens!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"ViTConfig.embed_dim ({self.embed_dim}) is not divisible by num_heads ({self.num_heads})")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.image_size ({self.image_size}) is not a multiple of patch_size ({self.patch_size})"
            )
        if not self.mlp_ratio > 0 or not self.layer_norm_eps > 0:
            raise ValueError("ViTConfig.mlp_ratio and layer_norm_eps must be > 0")
        for name, allowed in (("act_layer", ACT_LAYERS), ("global_pool", GLOBAL_POOLS),
                              ("pos_embed_resize", POS_EMBED_RESIZES)):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"ViTConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("ViTConfig: global_pool='token' needs the class token")
        if self.dist_token and (not self.class_token or self.reg_tokens or self.global_pool != "token"):
            raise ValueError("ViTConfig: the distillation token goes with a class token, no registers, token pooling")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def any_size_graph(self) -> bool:
        """Whether one traced graph serves every input size (all but DINOv2's own resize rule,
        which branches on the size as its code does)."""
        return self.pos_embed_resize != "dinov2"

    @property
    def num_prefix_tokens(self) -> int:
        """Tokens before the patches: class token, distillation token, registers."""
        return int(self.class_token) + int(self.dist_token) + self.reg_tokens

    def to_dict(self) -> dict:
        """The fields that differ from the defaults, and always the first nine: records written by
        older versions (which know only those) still read, and new ones stay short."""
        d = asdict(self)
        base = {f.name for f in fields(self)[:9]}
        return {k: v for k, v in d.items() if k in base or v != getattr(_DEFAULT, k)}

    @classmethod
    def from_dict(cls, d: dict) -> ViTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s): {', '.join(unknown)}")
        return cls(**d)


_DEFAULT = ViTConfig()
