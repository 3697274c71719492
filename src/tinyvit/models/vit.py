"""The Vision Transformer, in one file (only torch needed).

A pre-norm ViT (Dosovitskiy et al., 2021) with the options of the ViTs people run today, as
config flags that change the graph (timm's ``VisionTransformer`` is the reference, and parameter
names are exactly timm's, so timm's safetensors load with ``strict=True``; other layouts are
converted to these names in ``conversion.py``):

* prefix tokens: a class token, DeiT's distillation token, DINOv2's registers; a position
  embedding with or without their slots (``no_embed_class``);
* LayerScale (DeiT III, DINOv2), a norm before the blocks (CLIP), GELU / QuickGELU / tanh-GELU;
* pooling: the class token, the mean of the patch tokens (with ``fc_norm``), or attention pooling
  with a learned query (SigLIP's MAP head); a classifier or a projection head (CLIP, no bias).

One forward pass serves every input size, eagerly and when exported: the image is padded to
whole patches (or its remainder dropped, as the weights' home library does) and the position
embedding always resampled to the input's patch grid (:func:`resample_pos_embed`). Both are exact
no-ops at the trained size, so there is no branch on the shape, and ``torch.export`` traces the
same code that runs eagerly.

Shapes: B batch, C channels, D embed dim, (h, w) patch grid, N = h * w patches, P prefix tokens,
T = P + N tokens (prefix first), H heads, Dh = D / H.
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

if TYPE_CHECKING:
    from tinyvit.weights.record import Weights

__all__ = ["Intermediates", "ViTConfig", "VisionTransformer", "check_state_dict", "count_macs", "resample_pos_embed"]


def resample_pos_embed(
    pos_embed: torch.Tensor,
    grid: tuple[int, int],
    new_grid: tuple[int, int],
    num_prefix: int = 1,
    mode: str = "bicubic",
    square_image: bool = True,
) -> torch.Tensor:
    """(1, P + g_h * g_w, D) → (1, P + h * w, D): the grid part resampled to the new grid (in
    float32), the ``P = num_prefix`` leading slots kept. ``mode`` (``ViTConfig.pos_embed_resize``):

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


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens, one strided convolution."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.patch_size = p
        self.pad = config.dynamic_img_pad
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p, bias=not config.pre_norm)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        # Sizes that are not a multiple of the patch: zero padding at the bottom and right to whole
        # patches (mmpretrain's "corner" padding), or the remainder left out by the convolution
        # (timm, transformers, DINOv2). Zero-width at a multiple of the patch.
        p = self.patch_size
        if self.pad:
            x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        x = self.proj(x)  # (B, D, h, w)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim, bias=config.qkv_bias)  # rows: q, k, v
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, Dh)
        attn = None
        if need_weights:
            # SDPA never materialises the probabilities, so compute them explicitly when asked.
            attn = ((q * self.head_dim**-0.5) @ k.transpose(-2, -1)).softmax(dim=-1)  # (B, H, T, T)
            x = attn @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh)
        x = x.transpose(1, 2).reshape(B, T, D)
        return self.proj(x), attn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP was trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def activation(name: str) -> nn.Module:
    if name == "quick_gelu":
        return QuickGELU()
    return nn.GELU(approximate="tanh" if name == "gelu_tanh" else "none")


class Mlp(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim)
        self.act = activation(config.act_layer)
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


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
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.ls1 = LayerScale(config) if scaled else nn.Identity()
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)
        self.ls2 = LayerScale(config) if scaled else nn.Identity()

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), need_weights)
        x = x + self.ls1(y)
        x = x + self.ls2(self.mlp(self.norm2(x)))
        return x, attn


class AttentionPool(nn.Module):
    """SigLIP's MAP head (timm's ``AttentionPoolLatent``): one learned query attends over the
    tokens, then a residual MLP: y = attn(latent, x); y + mlp(norm(y))."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        D = config.embed_dim
        self.num_heads = config.num_heads
        self.latent = nn.Parameter(torch.zeros(1, 1, D))
        self.q = nn.Linear(D, D, bias=config.qkv_bias)
        self.kv = nn.Linear(D, 2 * D, bias=config.qkv_bias)  # rows: k, then v
        self.proj = nn.Linear(D, D)
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        H = self.num_heads
        q = self.q(self.latent.expand(B, -1, -1)).reshape(B, 1, H, D // H).transpose(1, 2)  # (B, H, 1, Dh)
        k, v = self.kv(x).reshape(B, N, 2, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, N, Dh)
        y = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, 1, D))
        return (y + self.mlp(self.norm(y)))[:, 0]  # (B, D)


@dataclass
class Intermediates:
    """What :meth:`VisionTransformer.forward_intermediates` gives."""

    tokens: torch.Tensor  # (B, T, D): all tokens after the final norm (what forward_features gives)
    grid: tuple[int, int]  # (h, w): the patch grid of the input
    hidden: list[torch.Tensor]  # per kept block: its output tokens (B, T, D), before the final norm
    attention: list[torch.Tensor]  # per kept block, when asked: attention probabilities (B, H, T, T)


class VisionTransformer(nn.Module):
    """The ViT. ``weights`` is the record of the weights it carries (architecture, preprocessing,
    class names, source), attached by the loader; None for a bare architecture."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        c = config
        self.config = c
        self.weights: Weights | None = None
        D = c.embed_dim
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D)) if c.class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, D)) if c.dist_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, c.reg_tokens, D)) if c.reg_tokens else None
        slots = c.grid_size**2 + (0 if c.no_embed_class else c.num_prefix_tokens)
        self.pos_embed = nn.Parameter(torch.zeros(1, slots, D))  # prefix slots first, then the grid row by row
        self.norm_pre = nn.LayerNorm(D, eps=c.layer_norm_eps) if c.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))
        self.norm = nn.Identity() if c.fc_norm else nn.LayerNorm(D, eps=c.layer_norm_eps)
        self.attn_pool = AttentionPool(c) if c.global_pool == "map" else None
        self.fc_norm = nn.LayerNorm(D, eps=c.layer_norm_eps) if c.fc_norm else nn.Identity()
        self.head = nn.Linear(D, c.num_classes, bias=c.head_bias) if c.num_classes else nn.Identity()
        self.head_dist = nn.Linear(D, c.num_classes) if c.dist_token and c.num_classes else None

    @classmethod
    def from_state_dict(
        cls,
        config: ViTConfig,
        state: dict[str, torch.Tensor],
        *,
        what: str = "the state dict",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> VisionTransformer:
        """The model in eval mode with ``state`` (timm's names) as its parameters, built on the meta
        device (no random initialisation) and the tensors assigned, not copied: memory-mapped
        tensors stay so unless a device or dtype change needs a copy. A state dict that does not fit
        ``config`` raises :class:`WeightsError` naming ``what`` and every mismatch."""
        with torch.device("meta"):
            model = cls(config)
        check_state_dict(config, state, what, model)
        dtype = dtype or torch.float32
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
        return model.eval()

    @torch.no_grad()
    def init_weights(self) -> VisionTransformer:
        """Random initialisation (timm's scheme); not needed when weights are loaded."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for token in (self.cls_token, self.dist_token, self.reg_token):
            if token is not None:
                nn.init.normal_(token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.Conv2d)):
                m.reset_parameters()
            elif isinstance(m, LayerScale):
                nn.init.constant_(m.gamma, float(self.config.init_values or 0.0))
            elif isinstance(m, AttentionPool):
                nn.init.trunc_normal_(m.latent, std=self.config.embed_dim**-0.5)
        return self

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) → the tokens that enter the first block (B, T, D), and the grid."""
        c = self.config
        square = c.pos_embed_resize != "dinov2" or x.shape[-2] == x.shape[-1]  # only DINOv2's rule asks
        x, grid = self.patch_embed(x)  # (B, N, D)
        pos = resample_pos_embed(
            self.pos_embed, (c.grid_size, c.grid_size), grid, 0 if c.no_embed_class else c.num_prefix_tokens,
            c.pos_embed_resize, square,
        )  # fmt: skip
        tokens = (self.cls_token, self.dist_token, self.reg_token)
        prefix = [t.expand(x.shape[0], -1, -1) for t in tokens if t is not None]
        if c.no_embed_class:  # the prefix tokens have no position: add, then prepend them
            x = torch.cat([*prefix, x + pos], dim=1)
        else:
            x = torch.cat([*prefix, x], dim=1) + pos  # (B, T, D)
        return self.norm_pre(x), grid

    def forward_intermediates(
        self, x: torch.Tensor, *, blocks: Sequence[int] | None = None, attention: bool = False
    ) -> Intermediates:
        """Images (B, C, H, W) → the final tokens and what the blocks computed on the way.

        ``blocks``: the blocks whose outputs (and, with ``attention=True``, attention
        probabilities) to keep, by index (negative: from the end); None keeps every block's.
        """
        keep = set(range(self.config.depth)) if blocks is None else {i % self.config.depth for i in blocks}
        x, grid = self.embed(x)
        hidden, attentions = [], []
        for i, block in enumerate(self.blocks):
            x, attn = block(x, need_weights=attention and i in keep)
            if i in keep:
                hidden.append(x)
                if attention:
                    attentions.append(attn)
        return Intermediates(self.norm(x), grid, hidden, attentions)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → all tokens after the final norm (B, T, D), prefix tokens first."""
        return self.forward_intermediates(x, blocks=()).tokens

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) → one feature per image (B, D), by ``config.global_pool``."""
        P = self.config.num_prefix_tokens
        if self.attn_pool is not None:
            return self.attn_pool(tokens[:, P:])
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


def count_macs(config: ViTConfig, image_size: int | None = None) -> int:
    """Multiply-accumulates of one forward pass at ``image_size`` (default: the config's)."""
    size = image_size or config.image_size
    n = math.ceil(size / config.patch_size) ** 2
    t, d, m = n + config.num_prefix_tokens, config.embed_dim, config.mlp_dim
    patch = n * d * config.in_chans * config.patch_size**2
    block = t * d * (3 * d + d + 2 * m) + 2 * t * t * d  # qkv, proj, mlp; q·k and attn·v
    pool = n * 2 * d * d + 2 * d * d + 2 * n * d + 2 * d * m if config.global_pool == "map" else 0
    heads = 2 if config.dist_token else 1
    return patch + config.depth * block + pool + heads * d * config.num_classes
