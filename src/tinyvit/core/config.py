"""The architecture of a ViT, as plain data: no torch needed to read, compare or store it.

The fields after ``layer_norm_eps`` are the options that change the graph, with timm's names and
meanings (``timm.models.vision_transformer.VisionTransformer``); their defaults give the original
ViT. What the weights' home library does with images of another size is not the architecture: it
travels with the preprocessing (:class:`tinyvit.images.spec.SizeRule`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["ACT_LAYERS", "GLOBAL_POOLS", "NORM_LAYERS", "ROPE_TYPES", "ViTConfig", "count_macs"]

ACT_LAYERS = ("gelu", "quick_gelu", "gelu_tanh")  # exact GELU; CLIP's x * sigmoid(1.702 x); GELU, tanh form
GLOBAL_POOLS = ("token", "avg", "map")  # class token; mean of the patch tokens; attention pooling (SigLIP)
NORM_LAYERS = ("layernorm", "rmsnorm")  # every norm of the model: LayerNorm, or RMSNorm (AIMv2)
# Rotary position embeddings (timm's Eva ``rope_type``): EVA02's / PE's / RoPE-ViT axial "cat" (index grid,
# optionally rescaled to ref_feat_shape), RoPE-ViT's learned per-block "mixed" frequencies (rope.freqs), DINOv3's
# "dinov3" (patch centres normalised to [-1, 1], periods rope_temperature ** (4 i / Dh))
ROPE_TYPES = ("cat", "mixed", "dinov3")


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
    # -- the ViTs of 2025-26 (timm's Eva and AIMv2 options, timm's names)
    norm_layer: str = "layernorm"  # one of NORM_LAYERS, for every norm (eps: layer_norm_eps)
    embed_norm: bool = False  # a norm after the patch projection (patch_embed.norm, AIMv2)
    proj_bias: bool = True  # biases of the attention output projection and of the MLPs (False: AIMv2)
    swiglu_mlp: bool = False  # SwiGLU MLPs: fc2(norm(silu(fc1_g(x)) * fc1_x(x))), mlp_dim wide
    scale_mlp: bool = False  # a norm inside the MLP before fc2 (mlp.norm, EVA02's sub-LN)
    scale_attn_inner: bool = False  # a norm on the attention output before proj (attn.norm, EVA02-CLIP)
    use_abs_pos_emb: bool = True  # the learned absolute position embedding (pos_embed)
    use_rot_pos_emb: bool = False  # rotary position embeddings on the patch tokens' queries and keys
    rope_type: str = "cat"  # one of ROPE_TYPES
    rope_temperature: float = 10000.0
    rope_grid_offset: float = 0.0  # added to the patch coordinates
    rope_grid_indexing: str = "ij"  # "ij": (row, column) coordinate order; "xy": (column, row)
    rope_rotate_half: bool = False  # rotate halves (DINOv3) instead of interleaved pairs
    ref_feat_shape: int | None = None  # "cat": coordinates rescaled so that any grid spans this one (EVA02, PE)
    attn_pool_num_heads: int | None = None  # heads of the attention pool (default: num_heads)
    pool_include_prefix: bool = False  # attention pooling over the prefix tokens too (timm's Eva)

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
        for name, allowed in (("act_layer", ACT_LAYERS), ("global_pool", GLOBAL_POOLS), ("norm_layer", NORM_LAYERS),
                              ("rope_type", ROPE_TYPES), ("rope_grid_indexing", ("ij", "xy"))):  # fmt: skip
            if getattr(self, name) not in allowed:
                raise ValueError(f"ViTConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.global_pool == "token" and not self.class_token:
            raise ValueError("ViTConfig: global_pool='token' needs the class token")
        if self.use_rot_pos_emb and (self.embed_dim // self.num_heads) % 4:
            raise ValueError("ViTConfig: rotary position embeddings need embed_dim / num_heads divisible by 4")
        if self.dist_token and (not self.class_token or self.reg_tokens or self.global_pool != "token"):
            raise ValueError("ViTConfig: the distillation token goes with a class token, no registers, token pooling")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

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
        d = {k: v for k, v in d.items() if k not in _SIZE_RULE_FIELDS}  # read by SizeRule.from_legacy_config
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ViTConfig field(s): {', '.join(unknown)}")
        return cls(**d)


_DEFAULT = ViTConfig()
# Written into records by tinyvit 0.1 (as config fields); now SizeRule's (images/spec.py)
_SIZE_RULE_FIELDS = ("dynamic_img_pad", "pos_embed_resize")


def count_macs(config: ViTConfig, image_size: int | None = None, *, pad: bool = False) -> int:
    """Multiply-accumulates of one forward pass at ``image_size`` (default: the config's); ``pad``:
    a remainder of a patch is zero-padded to a whole one (mmpretrain) rather than dropped (timm)."""
    size = image_size or config.image_size
    side = -(-size // config.patch_size) if pad else size // config.patch_size
    n = side**2
    t, d, m = n + config.num_prefix_tokens, config.embed_dim, config.mlp_dim
    patch = n * d * config.in_chans * config.patch_size**2
    mlp = (3 if config.swiglu_mlp else 2) * m  # SwiGLU: fc1_g, fc1_x, fc2
    block = t * d * (3 * d + d + mlp) + 2 * t * t * d  # qkv, proj, mlp; q·k and attn·v
    pool = n * 2 * d * d + 2 * d * d + 2 * n * d + 2 * d * m if config.global_pool == "map" else 0
    heads = 2 if config.dist_token else 1
    return patch + config.depth * block + pool + heads * d * config.num_classes
