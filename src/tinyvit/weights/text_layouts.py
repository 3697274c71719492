"""Text towers: a checkpoint's text tensors, under its library's names, → tinyvit's names
(``tinyvit.models.text``), and the architecture (``TextConfig``) from the config file beside them.

==================  ============================================================================================
layout              whose names
==================  ============================================================================================
open_clip           open_clip's ``CLIP`` (and OpenAI's own checkpoints): ``token_embedding.weight``,
                    ``positional_embedding``, ``transformer.resblocks.N.{ln_1, attn.in_proj_*, attn.out_proj,
                    ln_2, mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection`` (a (D, E) matrix used as
                    ``x @ P``), ``logit_scale`` [, ``logit_bias``]; the image tower ``visual.*`` is left out
open_clip_custom    open_clip's ``CustomTextCLIP`` (its SigLIP configs, ``custom_text: true``): the same names
                    under ``text.``, ``text.text_projection.{weight,bias}`` a Linear when ``proj_bias``
hf                  transformers' ``CLIPModel`` / ``SiglipModel`` / ``Siglip2Model`` (and their text models):
                    ``text_model.embeddings.{token,position}_embedding.weight``,
                    ``text_model.encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2,
                    mlp.fc1, mlp.fc2}``, ``text_model.final_layer_norm``, CLIP's ``text_projection.weight``
                    (no bias) or SigLIP's ``text_model.head.{weight,bias}``, ``logit_scale`` [, ``logit_bias``]
==================  ============================================================================================

``logit_scale`` (stored as its log by both libraries: scores use ``logit_scale.exp()``) and SigLIP's
``logit_bias`` are not tower parameters: :func:`text_state` returns them as plain floats.
"""

from __future__ import annotations

import re

import torch

from tinyvit.core.errors import WeightsError
from tinyvit.core.text_config import TextConfig

__all__ = [
    "TEXT_LAYOUTS",
    "detect_text_layout",
    "text_config_from_hf",
    "text_config_from_open_clip",
    "text_state",
]

TEXT_LAYOUTS = ("open_clip", "open_clip_custom", "hf")

_OC_BLOCK = r"transformer\.resblocks\.(\d+)\."
_HF_BLOCK = r"text_model\.encoder\.layers\.(\d+)\."
# (pattern, tinyvit name); "{q}"/"{k}"/"{v}" targets are fused into one qkv afterwards; "" drops the key.
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "open_clip": [
        (r"token_embedding\.weight", "token_embed.weight"),
        (r"positional_embedding", "pos_embed"),
        (rf"{_OC_BLOCK}ln_(1|2)\.(weight|bias)", r"blocks.\1.norm\2.\3"),
        (rf"{_OC_BLOCK}attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),  # rows q, k, v as ours
        (rf"{_OC_BLOCK}attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (rf"{_OC_BLOCK}ls_(1|2)\.gamma", r"blocks.\1.ls\2.gamma"),
        (rf"{_OC_BLOCK}mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (rf"{_OC_BLOCK}mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        (r"ln_final\.(weight|bias)", r"norm.\1"),
        (r"text_projection", "head.weight"),  # (D, E) used as x @ P: transposed below
        (r"text_projection\.(weight|bias)", r"head.\1"),  # a Linear (proj_bias)
        (r"attn_mask", ""),  # the causal mask buffer, when a checkpoint kept it
    ],
    "hf": [
        (r"text_model\.embeddings\.token_embedding\.weight", "token_embed.weight"),
        (r"text_model\.embeddings\.position_embedding\.weight", "pos_embed"),
        (r"text_model\.embeddings\.position_ids", ""),  # an index buffer older checkpoints kept
        (rf"{_HF_BLOCK}layer_norm(1|2)\.(weight|bias)", r"blocks.\1.norm\2.\3"),
        (rf"{_HF_BLOCK}self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3{\2}"),
        (rf"{_HF_BLOCK}self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (rf"{_HF_BLOCK}mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
        (r"text_model\.final_layer_norm\.(weight|bias)", r"norm.\1"),
        (r"text_model\.head\.(weight|bias)", r"head.\1"),  # SigLIP
        (r"text_projection\.weight", "head.weight"),  # CLIP: a Linear without bias
    ],
}
_LOGITS = ("logit_scale", "logit_bias")


def detect_text_layout(keys) -> str | None:
    """The layout of a checkpoint's text tower from its key names; None when it has none."""
    keys = set(keys)
    if "text_model.embeddings.token_embedding.weight" in keys:
        return "hf"
    if "text.token_embedding.weight" in keys:
        return "open_clip_custom"
    if "token_embedding.weight" in keys:
        return "open_clip"
    return None


def _text_keys(keys, layout: str) -> dict[str, str]:
    """Checkpoint key → the key the renames see, for the keys of the text tower (others left out)."""
    if layout == "open_clip_custom":
        return {k: k.removeprefix("text.") for k in keys if k.startswith("text.")}
    if layout == "open_clip":
        return {k: k for k in keys if not k.startswith("visual.") and k not in _LOGITS
                and not k.startswith(("input_resolution", "context_length", "vocab_size"))}  # fmt: skip
    return {k: k for k in keys if k.startswith(("text_model.", "text_projection."))}


def _rename(name: str, rules: list[tuple[str, str]], what: str) -> str:
    for pattern, target in rules:
        m = re.fullmatch(pattern, name)
        if m:
            return m.expand(target) if target else ""
    raise WeightsError(f"{what}: text tensor {name} has no place in the text tower")


def text_state(
    tensors: dict[str, torch.Tensor], layout: str, *, what: str = "the checkpoint"
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """A checkpoint's tensors (text and image, under ``layout``'s names) → the text tower's state
    dict under tinyvit's names, and ``{"logit_scale": log scale, "logit_bias": bias}`` (those present)
    as floats. The image tower's tensors are ignored; an unknown text tensor raises WeightsError."""
    if layout not in TEXT_LAYOUTS:
        raise WeightsError(f"{what}: unknown text layout {layout!r} (one of {', '.join(TEXT_LAYOUTS)})")
    rules = _RENAMES["hf" if layout == "hf" else "open_clip"]
    state: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}  # fused target → {q, k, v}
    for key, name in _text_keys(tensors, layout).items():
        target = _rename(name, rules, what)
        if not target:
            continue
        m = re.fullmatch(r"(.*)\{(q|k|v)\}", target)
        if m:
            parts.setdefault(m.group(1), {})[m.group(2)] = tensors[key]
        elif name == "text_projection":
            state[target] = tensors[key].t()  # (D, E) → (E, D), as a Linear's weight
        elif target == "pos_embed":
            state[target] = tensors[key].unsqueeze(0)  # (L, D) → (1, L, D)
        else:
            state[target] = tensors[key]
    for target, qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise WeightsError(f"{what}: {target} has only the {', '.join(sorted(qkv))} part(s) of q, k, v")
        state[target] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)  # rows q, k, v
    logits = {k: float(tensors[k].reshape(-1)[0]) for k in _LOGITS if k in tensors}
    return state, logits


def _act(name: str, what: str) -> str:
    acts = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
    if name not in acts:
        raise WeightsError(f"{what}: text activation {name!r} is not supported (one of {', '.join(acts)})")
    return acts[name]


_OC_UNSUPPORTED = ("hf_model_name", "embed_cls", "block_type", "qk_norm", "scaled_cosine_attn", "scale_heads",
                   "scale_attn_inner", "scale_attn", "scale_fc", "final_ln_after_pool")  # fmt: skip


def text_config_from_open_clip(config: dict, *, what: str = "open_clip_config.json") -> TextConfig:
    """open_clip's config (an ``open_clip_config.json`` as a dict, or its ``model_cfg``) → TextConfig,
    with open_clip's defaults (``CLIPTextCfg``) for what it leaves out."""
    model_cfg = config.get("model_cfg", config)
    text = model_cfg.get("text_cfg")
    if not isinstance(text, dict):
        raise WeightsError(f"{what}: no text_cfg (an image-only config has no text tower)")
    used = [k for k in _OC_UNSUPPORTED if text.get(k)]
    if used:
        raise WeightsError(f"{what}: text_cfg uses {', '.join(used)}, which tinyvit's text tower does not support")
    pool = text.get("pool_type", "argmax")
    if pool == "none" or text.get("proj_type", "linear") not in ("linear", "none"):
        raise WeightsError(f"{what}: text pool_type {pool!r} / proj_type {text.get('proj_type')!r} not supported")
    gelu = "gelu_tanh" if (text.get("act_kwargs") or {}).get("approximate") == "tanh" else "gelu"
    with_proj = text.get("proj_type", "linear") == "linear"
    return TextConfig(
        vocab_size=text.get("vocab_size", 49408),
        context_length=text.get("context_length", 77),
        embed_dim=text.get("width", 512),
        depth=text.get("layers", 12),
        num_heads=text.get("heads", 8),
        mlp_ratio=float(text.get("mlp_ratio", 4.0)),
        layer_norm_eps=float((text.get("norm_kwargs") or {}).get("eps", 1e-5)),
        act_layer="quick_gelu" if model_cfg.get("quick_gelu") else gelu,
        causal=not text.get("no_causal_mask", False),
        pool=pool,
        eos_id=text.get("eos_id", 2) if pool == "eos" else None,
        projection_dim=model_cfg["embed_dim"] if with_proj else 0,
        projection_bias=bool(text.get("proj_bias", False)) and with_proj,
        init_values=text.get("ls_init_value"),
    )


# transformers' defaults for what a saved config.json leaves out (it writes only what differs from them)
HF_TEXT_DEFAULTS = {
    "clip": dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                 num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5,
                 eos_token_id=49407, projection_dim=512),
    "siglip": dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                   num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                   layer_norm_eps=1e-6, projection_size=None),
}  # fmt: skip
HF_TEXT_DEFAULTS["siglip2"] = HF_TEXT_DEFAULTS["siglip"]


def text_config_from_hf(config: dict, *, what: str = "config.json") -> TextConfig:
    """transformers' ``config.json`` of a ``CLIPModel`` / ``SiglipModel`` / ``Siglip2Model`` (or of
    their text models: ``clip_text_model``, ``siglip_text_model``…) → TextConfig."""
    model_type = str(config.get("model_type", ""))
    family = model_type.removesuffix("_text_model")
    if family not in HF_TEXT_DEFAULTS:
        raise WeightsError(f"{what}: model_type {model_type!r} has no text tower tinyvit knows (clip, siglip, siglip2)")
    text = {**HF_TEXT_DEFAULTS[family], **(config.get("text_config") or ({} if "text_config" in config else config))}
    width = text["hidden_size"]
    if family == "clip":
        eos = text["eos_token_id"]
        # CLIPModel projects to its own projection_dim; CLIPTextModelWithProjection to the text config's
        projection = config.get("projection_dim", 512) if "text_config" in config else text["projection_dim"]
        graph = dict(act_layer=_act(text["hidden_act"], what), causal=True, pool="argmax" if eos == 2 else "eos",
                     eos_id=None if eos == 2 else eos, projection_dim=projection, projection_bias=False)  # fmt: skip
    else:
        graph = dict(act_layer=_act(text["hidden_act"], what), causal=False, pool="last",
                     projection_dim=text["projection_size"] or width, projection_bias=True)  # fmt: skip
    return TextConfig(
        vocab_size=text["vocab_size"],
        context_length=text["max_position_embeddings"],
        embed_dim=width,
        depth=text["num_hidden_layers"],
        num_heads=text["num_attention_heads"],
        mlp_ratio=text["intermediate_size"] / width,
        layer_norm_eps=float(text["layer_norm_eps"]),
        **graph,
    )
