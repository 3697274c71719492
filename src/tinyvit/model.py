"""The Vision Transformer, in one file.

Pre-norm ViT with a class token and a learned absolute position embedding (Dosovitskiy et al.,
2021). Parameter names are exactly timm's, so timm's safetensors load with ``strict=True`` and no
renaming; other checkpoint layouts are converted to these names in ``convert.py``.

Shapes: B batch, C channels, D embed dim, N patches, T = N + 1 tokens (class token first),
H heads, Dh = D / H.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tinyvit.config import ViTConfig
from tinyvit.record import Weights

__all__ = ["ViTConfig", "VisionTransformer", "count_macs"]


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens, one strided convolution."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.patch_size = p
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        # Sizes that are not a multiple of the patch are zero-padded at the bottom and right
        # (mmpretrain's "corner" padding), so any input size gives mmpretrain's result.
        pad_h, pad_w = -x.shape[-2] % self.patch_size, -x.shape[-1] % self.patch_size
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        x = self.proj(x)  # (B, D, h, w)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D), N = h * w


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)  # rows: q, then k, then v
        self.proj = nn.Linear(config.embed_dim, config.embed_dim)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, H, T, Dh)
        attn = None
        if return_attention:
            # SDPA never materialises the probabilities, so compute them explicitly when asked.
            attn = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)  # (B, H, T, T)
            attn = attn.softmax(dim=-1)
            x = attn @ v
        else:
            x = F.scaled_dot_product_attention(q, k, v)  # (B, H, T, Dh)
        x = x.transpose(1, 2).reshape(B, T, D)
        return self.proj(x), attn


class Mlp(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.embed_dim, config.mlp_dim)
        self.act = nn.GELU()  # exact (erf) GELU, as the weights were trained
        self.fc2 = nn.Linear(config.mlp_dim, config.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.attn = Attention(config)
        self.norm2 = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)
        self.mlp = Mlp(config)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), return_attention)
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x, attn


class VisionTransformer(nn.Module):
    """The ViT. ``weights`` is the record of the weights it carries (architecture,
    preprocessing, class names, source); None for a bare architecture."""

    def __init__(self, config: ViTConfig, weights: Weights | None = None):
        super().__init__()
        if weights is not None and weights.config != config:
            raise ValueError(f"the weights record is for {weights.config}, not {config}")
        self.config = config
        self.weights: Weights | None = weights
        D = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, D))  # cls slot first
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.head = nn.Linear(D, config.num_classes) if config.num_classes else nn.Identity()

    @torch.no_grad()
    def init_weights(self) -> VisionTransformer:
        """Random initialisation (timm's scheme); not needed when weights are loaded."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.Conv2d)):
                m.reset_parameters()
        return self

    def position_embedding(self, grid: tuple[int, int]) -> torch.Tensor:
        """(1, T, D) position embedding for a patch grid (h, w).

        For another grid than the trained one the grid part is resized bicubically (in float32)
        and the class slot kept, as mmpretrain does, so other input sizes give its results.
        """
        g = self.config.grid_size
        if grid == (g, g):
            return self.pos_embed
        cls_pos, grid_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid_pos = grid_pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid_pos = F.interpolate(grid_pos.float(), size=grid, mode="bicubic", align_corners=False)
        grid_pos = grid_pos.flatten(2).transpose(1, 2).to(self.pos_embed.dtype)  # (1, h*w, D)
        return torch.cat((cls_pos, grid_pos), dim=1)

    def forward_features(
        self, x: torch.Tensor, *, return_attention: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Images (B, C, H, W) → all tokens after the final norm (B, T, D).

        With ``return_attention=True`` also returns each block's attention probabilities,
        a list of ``depth`` tensors (B, H, T, T).
        """
        x, grid = self.patch_embed(x)  # (B, N, D)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (B, T, D)
        x = x + self.position_embedding(grid)
        attentions = []
        for block in self.blocks:
            x, attn = block(x, return_attention)
            if return_attention:
                attentions.append(attn)
        x = self.norm(x)
        return (x, attentions) if return_attention else x

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) → logits (B, num_classes), or the class-token feature (B, D)."""
        x = tokens[:, 0]
        return x if pre_logits else self.head(x)

    def extract_feat(self, x: torch.Tensor) -> torch.Tensor:
        """Images → class-token feature (B, D): mmpretrain's ``extract_feat``."""
        return self.forward_head(self.forward_features(x), pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def count_macs(config: ViTConfig, image_size: int | None = None) -> int:
    """Multiply-accumulates of one forward pass at ``image_size`` (default: the config's)."""
    size = image_size or config.image_size
    n = math.ceil(size / config.patch_size) ** 2
    t, d, m = n + 1, config.embed_dim, config.mlp_dim
    patch = n * d * config.in_chans * config.patch_size**2
    block = t * d * (3 * d + d + 2 * m) + 2 * t * t * d  # qkv, proj, mlp; q·k and attn·v
    return patch + config.depth * block + d * config.num_classes
