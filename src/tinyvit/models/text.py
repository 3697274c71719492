"""The CLIP / SigLIP text tower, in torch alone, built from the image tower's blocks.

token ids (B, T) → token embedding + position embedding → ``depth`` × ``vit.Block`` (with CLIP's
causal mask, and the padding mask where the home library passes one) → final LayerNorm on every
token → one token pooled (``TextConfig.pool``) → projection. ``TextConfig`` documents each family.

Parameter names (timm-style, as the image tower's; ``tinyvit.weights.text_layouts`` maps open_clip's
and transformers' names to these):

    token_embed.weight        (V, D)      the token embedding
    pos_embed                 (1, L, D)   the learned position embedding, L = context_length
    blocks.N.*                            exactly vit.Block's: norm1, attn.qkv (rows q, k, v), attn.proj,
                                          [ls1.gamma], norm2, mlp.fc1, mlp.fc2, [ls2.gamma]
    norm.weight / norm.bias   (D,)        the final LayerNorm
    head.weight [head.bias]   (E, D)      the projection (CLIP's ``text_projection`` transposed; SigLIP's head)

Shapes: B batch, T tokens (T <= L: shorter inputs use the first T positions, as transformers does
for a batch padded to its longest text), D width, E output dim.
"""

from __future__ import annotations

import torch
from torch import nn

from tinyvit.core.errors import TinyViTError, WeightsError
from tinyvit.core.text_config import TextConfig
from tinyvit.models.vit import Block

__all__ = ["TextConfig", "TextTransformer", "check_text_state_dict"]


class TextTransformer(nn.Module):
    """The text tower. ``forward(ids, attention_mask=None)`` → (B, E) text embeddings, not normalized."""

    def __init__(self, config: TextConfig):
        super().__init__()
        c = config
        self.config = c
        D = c.embed_dim
        self.token_embed = nn.Embedding(c.vocab_size, D)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.context_length, D))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.depth))  # type: ignore[arg-type]  # same attributes
        self.norm = nn.LayerNorm(D, eps=c.layer_norm_eps)
        self.head = nn.Linear(D, c.projection_dim, bias=c.projection_bias) if c.projection_dim else nn.Identity()

    @classmethod
    def from_state_dict(
        cls,
        config: TextConfig,
        state: dict[str, torch.Tensor],
        *,
        what: str = "the text state dict",
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> TextTransformer:
        """The tower in eval mode with ``state`` (tinyvit's names) as its parameters: built on the meta
        device and the tensors assigned, as ``VisionTransformer.from_state_dict`` does. A state dict
        that does not fit ``config`` raises :class:`WeightsError` naming ``what`` and every mismatch."""
        with torch.device("meta"):
            model = cls(config)
        check_text_state_dict(config, state, what, model)
        dtype = dtype or torch.float32
        model.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()}, strict=True, assign=True)
        return model.eval()

    @torch.no_grad()
    def init_weights(self) -> TextTransformer:
        """Random initialisation (small normal weights); not needed when weights are loaded."""
        nn.init.normal_(self.token_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.01)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                m.reset_parameters()
        for name, p in self.named_parameters():
            if name.endswith(".gamma"):
                nn.init.constant_(p, float(self.config.init_values or 0.0))
        return self

    def attn_mask(self, T: int, attention_mask: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """The boolean mask SDPA takes (True: may attend): causal (T, T) and/or padding (B, 1, 1, T)
        from ``attention_mask`` (B, T) (1 for a real token, 0 for padding), combined; None if neither."""
        mask = None
        if self.config.causal:
            mask = torch.ones(T, T, dtype=torch.bool, device=device).tril()  # (T, T)
        if attention_mask is not None:
            keys = attention_mask.to(device=device, dtype=torch.bool)[:, None, None, :]  # (B, 1, 1, T)
            mask = keys if mask is None else mask & keys  # (B, 1, T, T)
        return mask

    def forward_features(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) → every token after the final norm (B, T, D)."""
        B, T = ids.shape
        if T > self.config.context_length:
            raise TinyViTError(f"token ids of length {T}: the text tower takes at most {self.config.context_length}")
        x = self.token_embed(ids) + self.pos_embed[:, :T]  # (B, T, D)
        mask = self.attn_mask(T, attention_mask, x.device)
        for block in self.blocks:
            x, _ = block(x, attn_mask=mask)
        return self.norm(x)

    def pool(self, tokens: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Tokens (B, T, D) → the pooled token (B, D), by ``config.pool``."""
        c = self.config
        if c.pool == "last":
            return tokens[:, -1]
        if c.pool == "first":
            return tokens[:, 0]
        if c.pool == "argmax":
            index = ids.to(torch.int32).argmax(dim=-1)  # the first largest id: CLIP's end-of-text token
        else:  # "eos": the first position of the end-of-text id
            index = (ids == c.eos_id).to(torch.int32).argmax(dim=-1)
        return tokens[torch.arange(tokens.shape[0], device=tokens.device), index]

    def forward(self, ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Token ids (B, T) [and the padding mask (B, T)] → text embeddings (B, E), not normalized."""
        return self.head(self.pool(self.forward_features(ids, attention_mask), ids))


def check_text_state_dict(
    config: TextConfig, state: dict[str, torch.Tensor], what: str, model: TextTransformer | None = None
) -> None:
    """Raise WeightsError listing missing / unexpected keys, shape mismatches and non-float tensors."""
    if model is None:
        with torch.device("meta"):
            model = TextTransformer(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = []
    for title, items in (
        ("missing keys", sorted(set(expected) - set(state))),
        ("unexpected keys", sorted(set(state) - set(expected))),
        ("shape mismatches", [f"{k}: file {tuple(state[k].shape)}, model {expected[k]}"
                              for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]),
    ):  # fmt: skip
        if items:
            shown = ", ".join(items[:8]) + (f", … ({len(items)} in all)" if len(items) > 8 else "")
            problems.append(f"\n  {title}: {shown}")
    if problems:
        raise WeightsError(f"{what} does not match the text architecture {config}:" + "".join(problems))
    for name, t in state.items():
        if not t.is_floating_point():
            raise WeightsError(f"{what}: tensor {name} has non-float dtype {t.dtype}")
