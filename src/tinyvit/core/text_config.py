"""The architecture of a CLIP / SigLIP text tower, as plain data (no torch needed), next to ViTConfig.

A text tower is the image tower's pre-norm transformer on token embeddings: token embedding +
learned position embedding, ``depth`` blocks (the image tower's ``Block``: same names, same graph),
a final LayerNorm on every token, one token pooled, an optional projection. What differs between
the families is four fields:

===========================  ======  ===============  =====================  ======================
family                       causal  pool             act_layer              projection
===========================  ======  ===============  =====================  ======================
OpenAI / LAION CLIP          True    "argmax" / "eos" "quick_gelu" / "gelu"  no bias (``x @ P``)
SigLIP                       False   "last"           "gelu_tanh"            with bias (``head``)
SigLIP 2 (fixed resolution)  False   "last"           "gelu_tanh"            with bias (``head``)
===========================  ======  ===============  =====================  ======================

Pooling (``pool``), as the home libraries do it:

* ``"argmax"``: the position of the largest token id (open_clip's default ``pool_type``; transformers'
  CLIP when its config's ``eos_token_id`` is the legacy 2). With CLIP's BPE the end-of-text token
  49407 is the largest id, so this is the first end token whatever the padding (``argmax`` returns
  the first maximum);
* ``"eos"``: the first position whose id is ``eos_id`` (transformers' CLIP with a real
  ``eos_token_id``; open_clip's ``pool_type="eos"``);
* ``"last"``: the last position (SigLIP: the tokenizer pads to ``context_length``, and padding is
  part of the input, which is why SigLIP must be padded to 64);
* ``"first"``: the first position (open_clip's ``pool_type="first"``).

``logit_scale`` and ``logit_bias`` are not part of the tower: the layouts hand them back as plain
floats (see ``tinyvit.weights.text_layouts``), for the record to keep.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

__all__ = ["TEXT_ACT_LAYERS", "TEXT_POOLS", "TextConfig"]

TEXT_ACT_LAYERS = ("gelu", "quick_gelu", "gelu_tanh")  # as ViTConfig's ACT_LAYERS
TEXT_POOLS = ("argmax", "eos", "last", "first")


@dataclass(frozen=True)
class TextConfig:
    vocab_size: int = 49408
    context_length: int = 77  # the position embedding's length: the longest token sequence
    embed_dim: int = 512  # the width (open_clip's ``width``, transformers' ``hidden_size``)
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    layer_norm_eps: float = 1e-5
    act_layer: str = "gelu"  # one of TEXT_ACT_LAYERS
    causal: bool = True  # CLIP's causal attention mask; False for SigLIP
    pool: str = "argmax"  # one of TEXT_POOLS (see the module docstring)
    eos_id: int | None = None  # the end-of-text id that pool="eos" looks for
    projection_dim: int = 512  # 0: no projection, the pooled feature is the output
    projection_bias: bool = False  # SigLIP's head has a bias, CLIP's text_projection has none
    qkv_bias: bool = True
    init_values: float | None = None  # LayerScale in every block (open_clip's ls_init_value)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "embed_dim", "depth", "num_heads"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"TextConfig.{name} must be a positive int, got {value!r}")
        if not isinstance(self.projection_dim, int) or self.projection_dim < 0:
            raise ValueError(f"TextConfig.projection_dim must be an int >= 0, got {self.projection_dim!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"TextConfig.embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if not self.mlp_ratio > 0 or not self.layer_norm_eps > 0:
            raise ValueError("TextConfig.mlp_ratio and layer_norm_eps must be > 0")
        for name, allowed in (("act_layer", TEXT_ACT_LAYERS), ("pool", TEXT_POOLS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TextConfig.{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.pool == "eos" and self.eos_id is None:
            raise ValueError("TextConfig: pool='eos' needs eos_id")

    @property
    def mlp_dim(self) -> int:
        return round(self.embed_dim * self.mlp_ratio)

    @property
    def output_dim(self) -> int:
        """The size of one text embedding: the projection's, or the width without one."""
        return self.projection_dim or self.embed_dim

    def to_dict(self) -> dict:
        """The fields that differ from the defaults, and always the first five."""
        d = asdict(self)
        base = {f.name for f in fields(self)[:5]}
        return {k: v for k, v in d.items() if k in base or v != getattr(_DEFAULT, k)}

    @classmethod
    def from_dict(cls, d: dict) -> TextConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TextConfig field(s): {', '.join(unknown)}")
        return cls(**d)


_DEFAULT = TextConfig()
