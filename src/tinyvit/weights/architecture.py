"""The architecture of a checkpoint, from its tensors (under timm's names) and the config its
library published beside it: what the shapes show (sizes, prefix tokens, LayerScale, norms,
heads), and what only the config can say (heads, norm eps, activation, pooling), per layout.
What neither says is asked for (``arch=`` / ``--arch``), never guessed.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import WeightsError
from tinyvit.weights.files import Checkpoint
from tinyvit.weights.manifest import entry
from tinyvit.weights.record import SIZE_RULES

__all__ = ["HEADS_BY_WIDTH", "infer_config", "refuse_unsupported"]

# Heads of the standard ViT widths (Ti, S, B, L, H, SigLIP so400m, g, DINOv2 g, bigG); tensors do not show them.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1536: 24, 1664: 16}
# timm 1.0.31 registers these with act_layer='gelu_tanh' (SigLIP 2); its "*quickgelu*" ones with quick_gelu
TIMM_GELU_TANH = frozenset({
    "vit_base_patch32_siglip_256", "vit_large_patch16_siglip_512", "vit_so400m_patch16_siglip_256",
    "vit_so400m_patch16_siglip_384", "vit_so400m_patch16_siglip_512", "vit_giantopt_patch16_siglip_256",
    "vit_giantopt_patch16_siglip_384", "vit_base_patch32_siglip_gap_256", "vit_large_patch16_siglip_gap_512",
    "vit_so400m_patch16_siglip_gap_256", "vit_so400m_patch16_siglip_gap_384", "vit_so400m_patch16_siglip_gap_512",
    "vit_giantopt_patch16_siglip_gap_256", "vit_giantopt_patch16_siglip_gap_384",
})  # fmt: skip
HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh"}
HF_EPS = {"vit": 1e-12, "dinov2": 1e-6, "dinov2_with_registers": 1e-6, "clip": 1e-5, "siglip": 1e-6}
# Parts of key names (as their libraries save them) that show a family outside timm's
# VisionTransformer, which rotary position embeddings, SwiGLU MLPs or EVA blocks make
_ROTARY = "rotary position embeddings (EVA02, DINOv3, Perception Encoder)"
_UNSUPPORTED = [
    (lambda part: part.startswith("rope") or part in ("freqs", "periods", "storage_tokens"), _ROTARY),
    (lambda part: part in ("gamma_1", "gamma_2", "fc1_g", "fc1_x", "q_bias"), f"EVA-style blocks with {_ROTARY}"),
    (lambda part: part in ("w12", "w3", "weights_in", "weights_out"), "SwiGLU MLPs (DINOv2 giant)"),
]
_ROTARY_ARCHS = ("eva", "vit_pe_", "dinov3", "rope")  # timm names of rotary families (timm.models.eva)


def refuse_unsupported(keys, what: str, timm_architecture: str | None = None, hf_model_type: str | None = None) -> None:
    """One line naming the keys (or the timm architecture, or transformers' model type) that show a
    family tinyvit's ViT does not implement. Runs on the keys as saved, before the layout is told."""
    for is_marker, family in _UNSUPPORTED:
        shown = [k for k in keys if any(is_marker(part) for part in k.split("."))]
        if shown:
            more = f", … ({len(shown)} in all)" if len(shown) > 3 else ""
            raise WeightsError(f"{what}: {family} are not supported (keys {', '.join(shown[:3])}{more})")
    if timm_architecture and any(m in timm_architecture for m in _ROTARY_ARCHS):
        raise WeightsError(f"{what}: timm architecture {timm_architecture!r} uses {_ROTARY}, which are not supported")
    if hf_model_type and any(m in hf_model_type for m in ("dinov3", "eva", "perception")):
        raise WeightsError(f"{what}: config.json model_type {hf_model_type!r} uses {_ROTARY}, which are not supported")


def _shapes(state: dict[str, torch.Tensor], what: str, no_embed_class: bool | None) -> dict[str, Any]:
    """The fields the tensor shapes determine: sizes, prefix tokens, which optional parts exist."""
    try:
        d, c, p, _ = state["patch_embed.proj.weight"].shape
        length = state["pos_embed"].shape[1]
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{what}: cannot read the architecture from the tensors (missing {e})") from e
    depth = 0
    while f"blocks.{depth}.norm1.weight" in state:
        depth += 1
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = int("cls_token" in state) + int("dist_token" in state) + reg
    side, no_embed_class = _grid(length, prefix, no_embed_class)
    if side is None:
        raise WeightsError(
            f"{what}: a position embedding of {length} tokens is not a square patch grid, with or without the "
            f"{prefix} prefix token(s) the checkpoint has"
        )
    head = state.get("head.weight")
    return {
        "image_size": side * p, "patch_size": p, "embed_dim": d, "depth": depth, "mlp_ratio": mlp / d,
        "num_classes": 0 if head is None else head.shape[0], "in_chans": c,
        "class_token": "cls_token" in state, "dist_token": "dist_token" in state, "reg_tokens": reg,
        "no_embed_class": no_embed_class, "init_values": 1.0 if "blocks.0.ls1.gamma" in state else None,
        "pre_norm": "norm_pre.weight" in state, "fc_norm": "fc_norm.weight" in state,
        "head_bias": head is None or "head.bias" in state, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "global_pool": "map" if "attn_pool.latent" in state else ("token" if "cls_token" in state else "avg"),
    }  # fmt: skip


def _grid(length: int, prefix: int, no_embed_class: bool | None) -> tuple[int | None, bool]:
    """(side of the square grid, whether the embedding leaves out the prefix slots)."""
    for leaves_out in ((no_embed_class,) if no_embed_class is not None else (False, True)):
        n = length if leaves_out else length - prefix
        side = math.isqrt(max(n, 0))
        if side > 0 and side * side == n:
            return side, bool(leaves_out)
    return None, False


def _timm_options(cfg: dict, what: str) -> dict[str, Any]:
    """What timm's config.json says beyond the tensors (``architecture``, ``model_args``)."""
    args = cfg.get("model_args") or {}
    arch = str(cfg.get("architecture", ""))
    pool = args.get("global_pool", cfg.get("global_pool", None))
    if pool not in (None, "token", "avg", "map"):
        raise WeightsError(f"{what}: timm global_pool={pool!r} is not supported (token, avg and map are)")
    for flag, ok in (("qk_norm", (None, False)), ("final_norm", (None, True)), ("class_token", (None, True, False))):
        if args.get(flag) not in ok:
            raise WeightsError(f"{what}: timm model_args {flag}={args.get(flag)!r} is not supported by tinyvit's ViT")
    act = args.get("act_layer")
    if act is None:
        act = "quick_gelu" if "quickgelu" in arch else "gelu_tanh" if arch.split(".")[0] in TIMM_GELU_TANH else "gelu"
    out = {"num_heads": args.get("num_heads"), "act_layer": act, "no_embed_class": args.get("no_embed_class")}
    if pool is not None:
        out["global_pool"] = pool
    return out


def _hf_options(cfg: dict, what: str) -> dict[str, Any]:
    """What transformers' config.json says: heads, eps, activation (a CLIPModel's or SiglipModel's
    image tower is its ``vision_config``)."""
    kind = str(cfg.get("model_type"))
    vision = cfg.get("vision_config") if kind in ("clip", "siglip") else cfg
    kind = kind.removesuffix("_vision_model")
    if kind not in HF_EPS or not isinstance(vision, dict):
        known = "vit, dinov2, dinov2_with_registers, clip, clip_vision_model, siglip, siglip_vision_model"
        raise WeightsError(f"{what}: config.json model_type {cfg.get('model_type')!r} is not one of {known}")
    act = vision.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu")
    if act not in HF_ACTS or not vision.get("qkv_bias", True) or vision.get("use_swiglu_ffn"):
        raise WeightsError(f"{what}: config.json hidden_act={act!r}, qkv_bias={vision.get('qkv_bias', True)!r}, "
                           f"use_swiglu_ffn={vision.get('use_swiglu_ffn', False)!r}: not supported")  # fmt: skip
    out = {
        "num_heads": vision.get("num_attention_heads"), "layer_norm_eps": vision.get("layer_norm_eps", HF_EPS[kind]),
        "act_layer": HF_ACTS[act],
    }  # fmt: skip
    if kind == "dinov2_with_registers":
        out["pos_embed_resize"] = "bicubic_aa"
    return out


def _open_clip_options(cfg: dict, what: str) -> dict[str, Any]:
    """open_clip's model_cfg: heads from ``width / head_width``, QuickGELU, its LayerNorm (eps 1e-5)."""
    model_cfg = cfg.get("model_cfg") or {}
    vision = model_cfg.get("vision_cfg") or {}
    options = ("timm_model_name", "attentional_pool", "attn_pooler_queries", "no_ln_pre", "final_ln_after_pool")
    unsupported = [k for k in options if vision.get(k)]
    if unsupported or vision.get("pool_type", "tok") != "tok":
        raise WeightsError(f"{what}: open_clip vision_cfg {unsupported or 'pool_type'} is not supported")
    width = vision.get("width", 768)
    return {
        "num_heads": width // vision.get("head_width", 64), "layer_norm_eps": 1e-5,
        "act_layer": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
    }  # fmt: skip


def _options(ckpt: Checkpoint, layout: str, npz_heads: int | None, what: str) -> dict[str, Any]:
    """The fields only a config (or the layout's convention) can give."""
    pad, resize = SIZE_RULES[layout]
    out: dict[str, Any] = {"dynamic_img_pad": pad, "pos_embed_resize": resize, "layer_norm_eps": 1e-6}
    if layout == "timm" and ckpt.timm_config is not None:
        out |= _timm_options(ckpt.timm_config, what)
    elif layout == "hf":
        if ckpt.hf_config is None:
            out["layer_norm_eps"] = 1e-12  # transformers' ViT default, as it computes it
        else:
            out |= _hf_options(ckpt.hf_config, what)
    elif layout == "open_clip":
        if ckpt.open_clip_config is None:
            raise WeightsError(f"{what}: an open_clip checkpoint needs its open_clip_config.json beside it")
        out |= _open_clip_options(ckpt.open_clip_config, what)
    elif layout == "dinov2" and "register_tokens" in ckpt.tensors:
        out["pos_embed_resize"] = "bicubic_aa"  # DINOv2's register models: offset 0, antialiased
    elif layout == "npz":
        out["num_heads"] = npz_heads
    return out


def infer_config(
    ckpt: Checkpoint,
    state: dict[str, torch.Tensor],
    layout: str,
    *,
    npz_heads: int | None = None,
    arch: str | ViTConfig | dict | None = None,
) -> ViTConfig:
    """The checkpoint's :class:`ViTConfig`: ``arch`` (a config; a zoo name whose heads and eps are
    taken with the shapes of the tensors; or a dict of the fields nothing else states, such as
    ``{"num_heads": 6}``), else a tinyvit file's own record, else the tensors and the published
    config."""
    what = repr(str(ckpt.path))
    if isinstance(arch, ViTConfig):
        return arch
    if ckpt.record is not None and arch is None:
        return ckpt.record.config
    options = _options(ckpt, layout, npz_heads, what)
    if isinstance(arch, dict):
        options |= arch
        arch = None
    shapes = _shapes(state, what, options.pop("no_embed_class", None))
    if arch is not None:  # a zoo architecture, as the tensors and this layout's library have it
        pad, resize = SIZE_RULES[layout]
        return replace(entry(arch).arch, num_classes=shapes["num_classes"], image_size=shapes["image_size"],
                       dynamic_img_pad=pad, pos_embed_resize=resize)  # fmt: skip
    if layout == "timm" and shapes["pre_norm"]:
        options["layer_norm_eps"] = 1e-5  # timm registers every pre-norm ViT (CLIP) with LayerNorm eps 1e-5
    heads = options.pop("num_heads", None) or HEADS_BY_WIDTH.get(shapes["embed_dim"])
    if heads is None:
        raise WeightsError(
            f"{what}: the number of attention heads of a {shapes['embed_dim']}-wide ViT is not standard and the "
            "checkpoint does not say it; pass arch= a ViTConfig (or --arch NAME for a zoo architecture)"
        )
    if options.get("global_pool") == "token" and not shapes["class_token"]:
        options.pop("global_pool")
    try:
        return ViTConfig(**{**shapes, **options, "num_heads": heads})
    except ValueError as e:
        raise WeightsError(f"{what}: {e}") from e
