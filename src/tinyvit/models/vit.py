"""The Vision Transformer, in one file (only torch needed).

A pre-norm ViT (Dosovitskiy et al., 2021) with the options of the ViTs people run today, as
config flags that change the graph (timm's ``VisionTransformer`` is the reference, and parameter
names are exactly timm's, so timm's safetensors load with ``strict=True``; other layouts are
converted to these names in ``conversion.py``):

* prefix tokens: a class token, DeiT's distillation token, DINOv2's registers; a position
  embedding with or without their slots (``no_embed_class``);
* LayerScale (DeiT III, DINOv2), a norm before the blocks (CLIP), GELU / QuickGELU / tanh-GELU;
* pooling: the class token, the mean of the patch tokens (with ``fc_norm``), or attention pooling
  with a learned query (SigLIP's MAP head); a classifier or a projection head (CLIP, no bias);
* the ViTs of 2025–26 (timm's ``Eva`` and AIMv2 options, under timm's ``Eva`` names once the
  loader has fused its q/k/v pieces): rotary position embeddings on the patch tokens' queries and
  keys (:class:`Rope`: EVA02 / PE / RoPE-ViT axial, RoPE-ViT's learned mixed frequencies, DINOv3's),
  with or without an absolute position embedding; SwiGLU MLPs and sub-LN norms inside the MLP and
  the attention (EVA02); RMSNorm and a norm after the patch projection (AIMv2); no output biases.

One forward pass serves every input size, eagerly and when exported, as the weights' home library
does it (the model's :class:`~tinyvit.images.spec.SizeRule`): the image is padded to whole patches
or its remainder dropped, and the position embedding always resampled to the input's patch grid
(:func:`resample_pos_embed`). Both are exact no-ops at the trained size, so there is no branch on
the shape and ``torch.export`` traces the same code that runs eagerly — except under DINOv2's own
rule, which skips the resampling for a square image at the trained grid, as DINOv2's code does.

Shapes: B batch, C channels, D embed dim, (h, w) patch grid, N = h * w patches, P prefix tokens,
T = P + N tokens (prefix first), H heads, Dh = D / H, L = depth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import WeightsError
from tinyvit.images.spec import SizeRule

if TYPE_CHECKING:
    from tinyvit.weights.record import Weights

__all__ = ["SizeRule", "Trace", "ViTConfig", "VisionTransformer", "check_state_dict", "resample_pos_embed"]


def resample_pos_embed(
    pos_embed: torch.Tensor,
    grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix: int = 1,
    mode: str = "bicubic",
    square_image: bool = True,
) -> torch.Tensor:
    """(1, P + g_h * g_w, D) → (1, P + h * w, D): the grid part resampled to the new grid (in
    float32), the ``P = num_prefix`` leading slots kept. ``mode`` (``SizeRule.resample``):

    * ``"bicubic"``: bicubic to the new size, half-pixel centres, no antialiasing (mmpretrain,
      transformers); ``"bicubic_aa"``: the same, antialiased (timm). At the same grid both are the
      identity, bit for bit (weights (0, 1, 0, 0) at every position), so callers need not branch;
    * ``"dinov2"``: DINOv2's own rule, bicubic with the scale factor ``(n + 0.1) / g`` (which, not
      the size, places the samples; not the identity at the same grid). DINOv2 skips it for a
      square image at the trained grid (``square_image``): the one rule that branches on the size,
      as DINOv2's code does.
    """
    if mode == "dinov2" and square_image and tuple(new_grid) == tuple(grid):
        return pos_embed
    prefix, grid_pos = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid_pos = grid_pos.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2).float()  # (1, D, g_h, g_w)
    if mode == "dinov2":
        scale = ((new_grid[0] + 0.1) / grid[0], (new_grid[1] + 0.1) / grid[1])
        resized = F.interpolate(grid_pos, scale_factor=scale, mode="bicubic", align_corners=False)
    else:
        resized = F.interpolate(grid_pos, size=new_grid, mode="bicubic", align_corners=False,
                                antialias=mode == "bicubic_aa")  # fmt: skip
    resized = resized.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, h * w, D)
    return torch.cat((prefix, resized), dim=1)


def make_norm(config: ViTConfig, dim: int) -> nn.Module:
    """The model's norm over ``dim`` features: LayerNorm, or RMSNorm (``norm_layer="rmsnorm"``)."""
    if getattr(config, "norm_layer", "layernorm") == "rmsnorm":
        return nn.RMSNorm(dim, eps=config.layer_norm_eps)
    return nn.LayerNorm(dim, eps=config.layer_norm_eps)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens, one strided convolution (then a norm, AIMv2)."""

    def __init__(self, config: ViTConfig, pad: bool = False):
        super().__init__()
        p = config.patch_size
        self.patch_size = p
        self.pad = pad
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p, bias=not config.pre_norm)
        self.norm = make_norm(config, config.embed_dim) if config.embed_norm else nn.Identity()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        # Sizes that are not a multiple of the patch: zero padding at the bottom and right to whole
        # patches (mmpretrain's "corner" padding), or the remainder left out by the convolution
        # (timm, transformers, DINOv2). Zero-width at a multiple of the patch.
        p = self.patch_size
        if self.pad:
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        x = self.proj(x)  # (B, D, h, w)
        grid = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), grid  # (B, N, D)


# ---------------------------------------------------------------------------------------------
# Rotary position embeddings: timm's tables (timm.layers.pos_embed_sincos), the same operations in
# the same order, in float32. A table is (N, 2 Dh): sin then cos of each patch's angles, laid out
# for interleaved pairs (x0, x1), (x2, x3), … or for halves (DINOv3's rotate-half).


def _grid_coords(shape: list, indexing: str, ref: list | None, offset: float, centred: bool) -> torch.Tensor:
    """(h, w, 2) patch coordinates, channels (row, col) for "ij" or (col, row) for "xy": indices
    plus ``offset``, rescaled to span ``ref`` (EVA02), or DINOv3's patch centres in [-1, 1]."""
    if indexing == "xy":
        shape, ref = shape[::-1], ref[::-1] if ref is not None else None
    if centred:
        axes = [(torch.arange(0.5, s, dtype=torch.float32) + offset) / s for s in shape]
    else:
        axes = [torch.arange(s, dtype=torch.int64).to(torch.float32) + offset for s in shape]
    if ref is not None:
        axes = [t / s * r for t, s, r in zip(axes, shape, ref, strict=True)]
    grid = torch.stack(torch.meshgrid(axes, indexing=indexing), dim=-1)  # (h, w, 2)
    return 2.0 * grid - 1.0 if centred else grid


def _layout(x: torch.Tensor, half: bool) -> torch.Tensor:
    """(..., Dh / 2) per-frequency values → (..., Dh): halves [f0, f1, …, f0, f1, …] or pairs [f0, f0, f1, f1, …]."""
    return torch.cat([x, x], dim=-1) if half else x.repeat_interleave(2, -1)


def _tracing() -> bool:
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)
    return torch.compiler.is_compiling() or exporting() or torch.jit.is_tracing() or torch.jit.is_scripting()


class Rope(nn.Module):
    """The rotary tables of a patch grid (timm's ``rope_type``): ``"cat"`` (EVA02, PE, RoPE-ViT axial:
    index coordinates × bands ``1 / T ** (i / (Dh / 4))``), ``"dinov3"`` (patch centres in [-1, 1],
    angles ``2π c / T ** (4 i / Dh)``), ``"mixed"`` (RoPE-ViT: learned per-block, per-head 2-D
    frequencies ``freqs`` (2, L, H, Dh / 2)). Computed once per grid and kept (eagerly); inside a
    traced or exported graph they are computed from the input's grid, so one graph serves any size."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        self.config = config
        self.head_dim = config.embed_dim // config.num_heads
        mixed = config.rope_type == "mixed"
        self.freqs = nn.Parameter(torch.zeros(2, config.depth, config.num_heads, self.head_dim // 2)) if mixed else None
        self._tables: dict[tuple, torch.Tensor] = {}

    def forward(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        """(N, 2 Dh) for the grid's patches; (L, H, N, 2 Dh) for ``"mixed"`` (one table per block and head)."""
        if _tracing():
            return self.table(grid, device)
        f = self.freqs
        key = (tuple(grid), device, None if f is None else (id(f), f._version))
        table = self._tables.get(key)  # (one lookup, one store: safe with threads serving the model)
        if table is None:
            if len(self._tables) >= 16:
                self._tables.clear()
            table = self._tables[key] = self.table(grid, device)
        return table

    def table(self, grid: tuple[int, int], device: torch.device) -> torch.Tensor:
        c, nb = self.config, self.head_dim // 4
        if c.rope_type == "dinov3":
            periods = c.rope_temperature ** (2.0 * torch.arange(nb, dtype=torch.float32) / (self.head_dim // 2))
            coords = _grid_coords(list(grid), c.rope_grid_indexing, None, c.rope_grid_offset, True).flatten(0, 1)
            angles = (2 * math.pi * coords[:, :, None] / periods[None, None, :]).flatten(1)  # (N, Dh / 2)
        elif c.rope_type == "mixed":
            t = _grid_coords(list(grid), c.rope_grid_indexing, None, 0.0, False).reshape(-1, 2)  # (N, 2)
            t, freqs = t.to(device), self.freqs.float()  # freqs: (2, L, H, Dh / 2)
            angles = t[:, 0, None] * freqs[0].unsqueeze(-2) + t[:, 1, None] * freqs[1].unsqueeze(-2)  # (L, H, N, Dh/2)
        else:
            bands = 1.0 / (c.rope_temperature ** (torch.arange(nb, dtype=torch.int64).to(torch.float32) / nb))
            ref = None if c.ref_feat_shape is None else [c.ref_feat_shape] * 2
            coords = _grid_coords(list(grid), c.rope_grid_indexing, ref, c.rope_grid_offset, False)
            angles = (coords.unsqueeze(-1) * bands).flatten(-2).flatten(0, -2)  # (N, Dh / 2)
        half = c.rope_rotate_half and c.rope_type != "mixed"
        table = torch.cat([_layout(angles.sin(), half), _layout(angles.cos(), half)], dim=-1)
        return table.to(device)


def apply_rope(x: torch.Tensor, table: torch.Tensor, num_prefix: int, half: bool) -> torch.Tensor:
    """Queries or keys (B, H, T, Dh) with the patch tokens rotated by ``table`` ((N, 2 Dh) or
    (H, N, 2 Dh)); the prefix tokens have no position and stay as they are."""
    sin, cos = table.chunk(2, dim=-1)
    patches = x[:, :, num_prefix:]  # (B, H, N, Dh)
    if half:
        x1, x2 = patches.chunk(2, dim=-1)
        rotated = torch.cat([-x2, x1], dim=-1)
    else:
        rotated = torch.stack([-patches[..., 1::2], patches[..., ::2]], dim=-1).reshape(patches.shape)
    patches = (patches * cos + rotated * sin).to(x.dtype)
    return torch.cat([x[:, :, :num_prefix], patches], dim=2)


# ---------------------------------------------------------------------------------------------
# Blocks


def add_branch(
    layer: nn.Module, x: torch.Tensor, residual: torch.Tensor | None, scale: nn.Module | None
) -> torch.Tensor:
    """``residual + scale(layer(x))``: a block's branch ends in a linear layer, scaled (LayerScale)
    and added to the residual stream, as timm computes it. A layer that adds the residual itself
    (``adds_residual``: models/_linear.py's prepacked layer, inside its GEMM) is handed it where
    nothing scales its output first (no LayerScale, or one folded into its weights)."""
    if residual is not None and isinstance(scale, nn.Identity) and getattr(layer, "adds_residual", False):
        return layer(x, residual)
    y = layer(x) if scale is None else scale(layer(x))
    return y if residual is None else residual + y


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        self.num_prefix = getattr(config, "num_prefix_tokens", 0)
        self.rotate_half = getattr(config, "rope_rotate_half", False) and getattr(config, "rope_type", "") != "mixed"
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.qkv_bias)  # rows: q, k, v
        inner = getattr(config, "scale_attn_inner", False)
        self.norm = make_norm(config, config.embed_dim) if inner else nn.Identity()  # EVA02-CLIP's sub-LN
        self.proj = nn.Linear(config.embed_dim, config.embed_dim, bias=getattr(config, "proj_bias", True))

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
        scale: nn.Module | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``attn_mask``: as SDPA takes it, (T, T) or broadcastable to (B, H, T, T), bool (True: may
        attend) or float (added to the scores); the text towers' causal and padding masks.
        ``rope``: the rotary table of the patch grid (:class:`Rope`), applied to q and k.
        ``residual``, ``scale``: the block's, for ``residual + scale(output)`` (:func:`add_branch`)."""
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, Dh)
        if rope is not None:
            q = apply_rope(q, rope, self.num_prefix, self.rotate_half).type_as(v)
            k = apply_rope(k, rope, self.num_prefix, self.rotate_half).type_as(v)
        attn = None
        if need_weights:
            # SDPA never materialises the probabilities, so compute them explicitly when asked.
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else (
                    scores + attn_mask)  # fmt: skip
            attn = scores.softmax(dim=-1)
            x = attn @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, H, T, Dh)
        x = x.transpose(1, 2).reshape(B, T, D)
        return add_branch(self.proj, self.norm(x), residual, scale), attn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


class Mlp(nn.Module):
    """fc2(norm(act(fc1(x)))); the norm only with ``inner_norm`` (EVA02's sub-LN, ``scale_mlp``)."""

    def __init__(self, config: ViTConfig, inner_norm: bool = False, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim, bias=bias)
        self.act = activation(config.act_layer)
        self.norm = make_norm(config, config.mlp_dim) if inner_norm else nn.Identity()
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, scale: nn.Module | None = None
                ) -> torch.Tensor:  # fmt: skip
        return add_branch(self.fc2, self.norm(self.act(self.fc1(x))), residual, scale)


class SwiGLU(nn.Module):
    """fc2(norm(silu(fc1_g(x)) * fc1_x(x))): EVA02's, DINOv3 S+ / H+'s and AIMv2's MLP (timm's names)."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        D, M, bias = config.embed_dim, config.mlp_dim, config.proj_bias
        self.fc1_g = nn.Linear(D, M, bias=bias)
        self.fc1_x = nn.Linear(D, M, bias=bias)
        self.act = nn.SiLU()
        self.norm = make_norm(config, M) if config.scale_mlp else nn.Identity()
        self.fc2 = nn.Linear(M, D, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None, scale: nn.Module | None = None
                ) -> torch.Tensor:  # fmt: skip
        return add_branch(self.fc2, self.norm(self.act(self.fc1_g(x)) * self.fc1_x(x)), residual, scale)


def make_mlp(config: ViTConfig) -> nn.Module:
    if getattr(config, "swiglu_mlp", False):
        return SwiGLU(config)
    return Mlp(config, getattr(config, "scale_mlp", False), getattr(config, "proj_bias", True))


class LayerScale(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((config.embed_dim,), float(config.init_values or 0.0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        scaled = config.init_values is not None
        self.norm1 = make_norm(config, config.embed_dim)
        self.attn = Attention(config)
        self.ls1 = LayerScale(config) if scaled else nn.Identity()
        self.norm2 = make_norm(config, config.embed_dim)
        self.mlp = make_mlp(config)
        self.ls2 = LayerScale(config) if scaled else nn.Identity()

    def forward(
        self,
        x: torch.Tensor,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
        rope: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x, attn = self.attn(self.norm1(x), need_weights, attn_mask, rope, residual=x, scale=self.ls1)  # x + ls1(attn)
        x = self.mlp(self.norm2(x), residual=x, scale=self.ls2)  # x + ls2(mlp(norm2(x)))
        return x, attn


class AttentionPool(nn.Module):
    """SigLIP's MAP head (timm's ``AttentionPoolLatent``): one learned query attends over the
    tokens, then a residual MLP: y = attn(latent, x); y + mlp(norm(y))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        D = config.embed_dim
        self.num_heads = config.attn_pool_num_heads or config.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, D))
        self.q = nn.Linear(D, D, bias=config.qkv_bias)
        self.kv = nn.Linear(D, 2 * D, bias=config.qkv_bias)  # rows: k, then v
        self.proj = nn.Linear(D, D)
        self.norm = make_norm(config, D)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        H = self.num_heads
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, 1, H, D // H).transpose(1, 2)  # (B, H, 1, Dh)
        k, v = self.kv(x).reshape(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        y = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, D))
        return (y + self.mlp(self.norm(y)))[:, 0]  # (B, D)


@dataclass
class Trace:
    """What :meth:`VisionTransformer.forward_trace` gives."""

    tokens: torch.Tensor  # (B, T, D): all tokens after the final norm (what forward_features gives)
    grid: tuple[int, int]  # (h, w): the patch grid of the input
    hidden: list[torch.Tensor]  # per kept block: its output tokens (B, T, D), before the final norm
    attention: list[torch.Tensor]  # per kept block, when asked: attention probabilities (B, H, T, T)


class VisionTransformer(nn.Module):
    """The ViT. ``size_rule``: what its weights' home library does with other input sizes (timm's
    by default). ``weights`` is the record of the weights it carries (architecture, preprocessing,
    class names, source), attached by the loader; None for a bare architecture."""

    def __init__(self, config: ViTConfig, size_rule: SizeRule | None = None):
        super().__init__()
        c = config
        self.config = c
        self.size_rule = size_rule or SizeRule()
        self.weights: Weights | None = None
        D = c.embed_dim
        self.patch_embed = PatchEmbed(c, pad=self.size_rule.pad)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if c.dist_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.reg_tokens, D)) if c.reg_tokens else None
        slots = c.grid_size**2 + (0 if c.no_embed_class else c.num_prefix_tokens)
        # prefix slots first, then the grid row by row
        self.pos_embed = nn.Parameter(torch.zeros(1, slots, D)) if c.use_abs_pos_emb else None
        self.rope = Rope(c) if c.use_rot_pos_emb else None
        self.norm_pre = make_norm(c, D) if c.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = nn.Identity() if c.fc_norm else make_norm(c, D)
        self.attn_pool = AttentionPool(c) if c.global_pool == "map" else None
        self.fc_norm = make_norm(c, D) if c.fc_norm else nn.Identity()
        self.head = nn.Linear(D, c.num_classes, bias=c.head_bias) if c.num_classes else nn.Identity()
        self.head_dist = nn.Linear(D, c.num_classes) if c.dist_token and c.num_classes else None

    @classmethod
    def from_state_dict(
        cls,
        config: ViTConfig,
        state: dict[str, torch.Tensor],
        *,
        size_rule: SizeRule | None = None,
        what: str = "the state dict",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> VisionTransformer:
        """The model in eval mode with ``state`` (timm's names) as its parameters, built on the meta
        device (no random initialisation) and the tensors assigned, not copied: memory-mapped
        tensors stay so unless a device or dtype change needs a copy. A state dict that does not fit
        ``config`` raises :class:`WeightsError` naming ``what`` and every mismatch."""
        with torch.device("meta"):
            model = cls(config, size_rule)
        check_state_dict(config, state, what, model)
        dtype = dtype or torch.float32
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
        return model.eval()

    @torch.no_grad()
    def init_weights(self) -> VisionTransformer:
        """Random initialisation (timm's scheme); not needed when weights are loaded."""
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.rope is not None and self.rope.freqs is not None:
            nn.init.normal_(self.rope.freqs, std=0.1)
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm, nn.Conv2d)):
                m.reset_parameters()
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.gamma, float(self.config.init_values or 0.0))
            elif isinstance(m, AttentionPool):
                nn.init.trunc_normal_(m.latent, std=self.config.embed_dim**-0.5)
        return self

    def prepare_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) → the tokens that enter the first block (B, T, D), and the grid."""
        c, rule = self.config, self.size_rule
        square = rule.resample != "dinov2" or x.shape[-2] == x.shape[-1]  # only DINOv2's rule asks
        x, grid = self.patch_embed(x)  # (B, N, D)
        tokens = (self.cls_token, self.dist_token, self.reg_token)
        prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
        if self.pos_embed is None:  # rotary positions only (DINOv3, RoPE-ViT): applied in the attention
            return self.norm_pre(torch.cat([*prefix, x], dim=1)), grid
        pos = resample_pos_embed(
            self.pos_embed, (c.grid_size, c.grid_size), grid, 0 if c.no_embed_class else c.num_prefix_tokens,
            rule.resample, square,
        )  # fmt: skip
        if c.no_embed_class:  # the prefix tokens have no position: add, then prepend them
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos  # (B, T, D)
        return self.norm_pre(x), grid

    def forward_trace(
        self, x: torch.Tensor, *, blocks: Sequence[int] | None = None, attention: bool = False
    ) -> Trace:
        """Images (B, C, H, W) → the final tokens and what the blocks computed on the way.

        ``blocks``: the blocks whose outputs (and, with ``attention=True``, attention
        probabilities) to keep, by index (negative: from the end); None keeps every block's.
        """
        keep = set(range(self.config.depth)) if blocks is None else {i % self.config.depth for i in blocks}
        x, grid = self.prepare_tokens(x)
        rope = self.rope(grid, x.device) if self.rope is not None else None  # (N, 2 Dh), "mixed": (L, H, N, 2 Dh)
        per_block = rope is not None and self.config.rope_type == "mixed"
        hidden, attentions = [], []
        for i, block in enumerate(self.blocks):
            x, attn = block(x, need_weights=attention and i in keep, rope=rope[i] if per_block else rope)
            if i in keep:
                hidden.append(x)
                if attention:
                    attentions.append(attn)
        return Trace(self.norm(x), grid, hidden, attentions)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → all tokens after the final norm (B, T, D), prefix tokens first."""
        return self.forward_trace(x, blocks=()).tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) → one feature per image (B, D), by ``config.global_pool``."""
        P = self.config.num_prefix_tokens
        if self.attn_pool is not None:  # over the patch tokens (timm's VisionTransformer), or all (its Eva)
            return self.attn_pool(tokens if self.config.pool_include_prefix else tokens[:, P:])
        if self.config.global_pool == "avg":
            return tokens[:, P:].mean(dim=1)
        return tokens[:, 0]

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) → the head's output (B, num_classes), or the pooled feature before the
        head (B, D). With a distillation token: the mean of the class and distillation tokens'."""
        if self.config.dist_token:
            cls, dist = tokens[:, 0], tokens[:, 1]
            if pre_logits or self.head_dist is None:
                return (cls + dist) / 2
            return (self.head(cls) + self.head_dist(dist)) / 2
        x = self.fc_norm(self.pool(tokens))
        return x if pre_logits else self.head(x)

    def extract_feat(self, x: torch.Tensor) -> torch.Tensor:
        """Images → the pooled feature before the head (B, D) (mmpretrain's name; timm's pre-logits)."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def check_state_dict(
    config: ViTConfig, state: dict[str, torch.Tensor], what: str, model: VisionTransformer | None = None
) -> None:
    """Raise WeightsError listing missing / unexpected keys, shape mismatches and non-float tensors
    (against ``model``, the meta model of ``config``, when the caller has built it already)."""
    if model is None:
        with torch.device("meta"):
            model = VisionTransformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: file {tuple(state[k].shape)}, model {expected[k]}"
        for k in sorted(set(expected) & set(state))
        if tuple(state[k].shape) != expected[k]
    ]
    if not (missing or unexpected or mismatched):
        for name, t in state.items():
            if not t.is_floating_point():
                raise WeightsError(f"{what}: tensor {name} has non-float dtype {t.dtype}")
        return

    def listing(title: str, items: list[str]) -> str:
        shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
        return f"\n  {title}: {shown}"

    msg = f"{what} does not match the architecture {config}:"
    if missing:
        msg += listing("missing keys", missing)
    if unexpected:
        msg += listing("unexpected keys", unexpected)
    if mismatched:
        msg += listing("shape mismatches", mismatched)
    raise WeightsError(msg)

