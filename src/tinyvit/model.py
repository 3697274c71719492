"""The Vision Transformer, in one file (only torch needed).

Pre-norm ViT with a class token and a learned absolute position embedding (Dosovitskiy et al.,
2021). Parameter names are exactly timm's, so timm's safetensors load with ``strict=True`` and no
renaming; other checkpoint layouts are converted to these names in ``conversion.py``.

One forward pass serves every input size, eagerly and when exported: the image is always
zero-padded to whole patches and the position embedding always resampled to the patch grid of
the input (:func:`resample_pos_embed`). Both are exact no-ops at the trained size, so there is no
branch on the shape, and ``torch.export`` traces the same code that runs eagerly.

Shapes: B batch, C channels, D embed dim, (h, w) patch grid, N = h * w patches, T = N + 1 tokens
(class token first), H heads, Dh = D / H.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from tinyvit.config import ViTConfig
from tinyvit.errors import WeightsError

if TYPE_CHECKING:
    from tinyvit.record import Weights

__all__ = ["Intermediates", "ViTConfig", "VisionTransformer", "check_state_dict", "count_macs", "resample_pos_embed"]


def resample_pos_embed(
    pos_embed: torch.Tensor, grid: tuple[int, int], new_grid: tuple[int, int], num_prefix: int = 1
) -> torch.Tensor:
    """(1, P + g_h * g_w, D) → (1, P + h * w, D): the grid part resized bicubically (in float32, no
    antialiasing, half-pixel centres: mmpretrain's rule), the ``P = num_prefix`` leading slots kept.

    At the same grid the bicubic weights are (0, 1, 0, 0) at every position, so the result equals
    the input bit for bit: callers need not branch on the size.
    """
    prefix, grid_pos = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    grid_pos = grid_pos.reshape(1, grid[0], grid[1], -1).permute(0, 3, 1, 2)  # (1, D, g_h, g_w)
    grid_pos = F.interpolate(grid_pos.float(), size=new_grid, mode="bicubic", align_corners=False)
    grid_pos = grid_pos.flatten(2).transpose(1, 2).to(pos_embed.dtype)  # (1, h * w, D)
    return torch.cat((prefix, grid_pos), dim=1)


class PatchEmbed(nn.Module):
    """Non-overlapping patches → tokens, one strided convolution."""

    def __init__(self, config: ViTConfig):
        super().__init__()
        p = config.patch_size
        self.patch_size = p
        self.proj = nn.Conv2d(config.in_chans, config.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        # Zero padding at the bottom and right to whole patches (mmpretrain's "corner" padding), so
        # any input size gives mmpretrain's result; zero-width at a multiple of the patch.
        p = self.patch_size
        x = F.pad(x, (0, -x.shape[-1] % p, 0, -x.shape[-2] % p))
        x = self.proj(x)  # (B, D, h, w)
        grid = (x.shape[-2], x.shape[-1])
        return x.flatten(2).transpose(1, 2), grid  # (B, N, D)


class Attention(nn.Module):
    def __init__(self, config: ViTConfig):
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.embed_dim // config.num_heads
        self.qkv = nn.Linear(config.embed_dim, 3 * config.embed_dim)  # rows: q, then k, then v
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

    def forward(self, x: torch.Tensor, need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        y, attn = self.attn(self.norm1(x), need_weights)
        x = x + y
        x = x + self.mlp(self.norm2(x))
        return x, attn


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
        self.config = config
        self.weights: Weights | None = None
        D = config.embed_dim
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, D))
        self.pos_embed = nn.Parameter(torch.zeros(1, config.grid_size**2 + 1, D))  # cls slot first
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.norm = nn.LayerNorm(D, eps=config.layer_norm_eps)
        self.head = nn.Linear(D, config.num_classes) if config.num_classes else nn.Identity()

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
        nn.init.normal_(self.cls_token, std=1e-6)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.Conv2d)):
                m.reset_parameters()
        return self

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images (B, C, H, W) → the tokens that enter the first block (B, T, D), and the grid."""
        x, grid = self.patch_embed(x)  # (B, N, D)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)  # (B, T, D)
        g = self.config.grid_size
        return x + resample_pos_embed(self.pos_embed, (g, g), grid, num_prefix=1), grid

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
        """Images (B, C, H, W) → all tokens after the final norm (B, T, D)."""
        return self.forward_intermediates(x, blocks=()).tokens

    def forward_head(self, tokens: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, D) → logits (B, num_classes), or the class-token feature (B, D)."""
        x = tokens[:, 0]
        return x if pre_logits else self.head(x)

    def extract_feat(self, x: torch.Tensor) -> torch.Tensor:
        """Images → class-token feature (B, D): mmpretrain's ``extract_feat``."""
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
    t, d, m = n + 1, config.embed_dim, config.mlp_dim
    patch = n * d * config.in_chans * config.patch_size**2
    block = t * d * (3 * d + d + 2 * m) + 2 * t * t * d  # qkv, proj, mlp; q·k and attn·v
    return patch + config.depth * block + d * config.num_classes
