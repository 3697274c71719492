"""The architecture of a checkpoint, from its tensors (under timm's names) and what states the rest:
the config its library published beside it, the library's own definition of its architectures,
or the user (``arch=`` / ``--arch``). What the shapes show (sizes, prefix tokens, LayerScale,
norms, heads) is read from them; what they cannot show — the number of attention heads above all —
is never guessed: without a statement, loading stops with one line that says what to pass.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, fields
from importlib import resources
from typing import Any

import torch

from tinyvit.core.config import ViTConfig
from tinyvit.core.errors import WeightsError
from tinyvit.weights.files import Checkpoint
from tinyvit.weights.manifest import entries, entry
from tinyvit.weights.record import LAYOUTS

__all__ = ["ArchArg", "infer_config", "parse_arch", "refuse_unsupported", "timm_architecture"]

ArchArg = ViTConfig | str | dict | None  # a config; a zoo or timm architecture name; fields ("num_heads=6" or a dict)

# Heads the widths of the standard ViTs have (Ti, S, B, L, H): named in refusals, never taken silently
USUAL_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
# Libraries that define their architectures by size, so that a checkpoint's shapes name one of them:
# DINOv2's own code (vit_small / base / large / giant2: one width each) and mmpretrain's
# VisionTransformer arch_zoo (by width and depth)
DINOV2_HEADS = {384: 6, 768: 12, 1024: 16, 1536: 24}
MMPRETRAIN_HEADS = {(768, 8): 8, (768, 12): 12, (1024, 24): 16, (1280, 32): 16, (192, 12): 3, (384, 12): 6}
HF_ACTS = {"gelu": "gelu", "quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu_tanh"}
HF_EPS = {"vit": 1e-12, "dinov2": 1e-6, "dinov2_with_registers": 1e-6, "clip": 1e-5, "siglip": 1e-6}
# facebookresearch/dinov3's released ViTs (dinov3/hub/backbones.py), in what their tensors cannot show:
# LayerNorm "layernormbf16" (eps 1e-5, its RMSNorm's too); rotary coordinates normalised "separate"ly
DINOV3_EPS = 1e-5
# Parts of key names (as their libraries save them) that show a family tinyvit's ViT does not load
_UNSUPPORTED = [
    (lambda part: part in ("w12", "weights_in", "weights_out"), "SwiGLU MLPs in DINOv2's own layout (giant)"),
    (lambda part: part in ("q_norm", "k_norm"), "query / key norms (qk_norm)"),
    (lambda part: part == "cls_norm", "class-token norms apart from the patch norm (DINOv3 untie_cls_and_patch_norms)"),
]  # fmt: skip
# transformers model types of families out of reach, and why (a one-line refusal each)
_HF_REFUSED = {
    "siglip2": "SigLIP 2 NaFlex (variable resolution over patch sequences) is not supported; its fixed-resolution "
    "weights (timm vit_*_siglip_*.v2_webli) are",
    "aimv2_vision_model": "transformers' AIMv2 layout is not supported; timm's aimv2_* folders are",
    "aimv2": "transformers' AIMv2 layout is not supported; timm's aimv2_* folders are",
}
# ViTConfig fields timm's Eva architectures state (timm_archs.json) and its model_args may override
_EVA_FIELDS = (
    "use_rot_pos_emb", "rope_type", "rope_temperature", "rope_grid_offset", "rope_grid_indexing", "rope_rotate_half",
    "ref_feat_shape", "attn_pool_num_heads", "pool_include_prefix", "layer_norm_eps",
)  # fmt: skip


def refuse_unsupported(keys, what: str, timm_architecture: str | None = None, hf_model_type: str | None = None) -> None:
    """One line naming the keys (or the timm architecture, or transformers' model type) that show a
    family tinyvit's ViT does not implement. Runs on the keys as saved, before the layout is told."""
    for is_marker, family in _UNSUPPORTED:
        shown = [k for k in keys if any(is_marker(part) for part in k.split("."))]
        if shown:
            more = f", … ({len(shown)} in all)" if len(shown) > 3 else ""
            raise WeightsError(f"{what}: {family} are not supported (keys {', '.join(shown[:3])}{more})")
    refused = _timm_refusals().get((timm_architecture or "").split(".", 1)[0])
    if refused:
        raise WeightsError(f"{what}: timm architecture {timm_architecture!r} is not supported: {refused}")
    reason = _HF_REFUSED.get(str(hf_model_type)) or _HF_REFUSED.get(str(hf_model_type).removesuffix("_vision_model"))
    if reason:
        raise WeightsError(f"{what}: config.json model_type {hf_model_type!r}: {reason}")


@functools.cache
def _timm_refusals() -> dict[str, str]:
    """timm architectures of the families tinyvit loads (Eva's) with an option its ViT does not have."""
    text = (resources.files("tinyvit.weights") / "timm_archs.json").read_text(encoding="utf-8")
    return json.loads(text).get("refused", {})


@functools.cache
def _timm_archs() -> dict[str, dict[str, Any]]:
    """timm's registered VisionTransformer architectures: heads, activation, pooling (timm_archs.json,
    made by scripts/make_timm_archs.py from timm's own registry)."""
    text = (resources.files("tinyvit.weights") / "timm_archs.json").read_text(encoding="utf-8")
    return json.loads(text)["architectures"]


def timm_architecture(name: str) -> dict[str, Any] | None:
    """What timm's registry says of an architecture (``vit_base_patch16_224``, a tag allowed)."""
    return _timm_archs().get(name.split(".", 1)[0])


# ---------------------------------------------------------------------------------------------
# What the tensors show


def _shapes(state: dict[str, torch.Tensor], what: str, no_embed_class: bool | None) -> dict[str, Any]:
    """The fields the tensor shapes determine: sizes, prefix tokens, which optional parts exist. A
    checkpoint without an absolute position embedding (rotary only) does not show its trained size,
    which changes nothing in its graph: 224 px (to whole patches) unless a config states it."""
    try:
        d, c, p, _ = state["patch_embed.proj.weight"].shape
        mlp = state.get("blocks.0.mlp.fc1_g.weight", state.get("blocks.0.mlp.fc1.weight"))
        mlp = mlp if mlp is not None else state["blocks.0.mlp.fc1.weight"]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{what}: cannot read the architecture from the tensors (missing {e})") from e
    depth = 0
    while f"blocks.{depth}.norm1.weight" in state:
        depth += 1
    reg = state["reg_token"].shape[1] if "reg_token" in state else 0
    prefix = int("cls_token" in state) + int("dist_token" in state) + reg
    side = max(224 // p, 1)
    if "pos_embed" in state:
        length = state["pos_embed"].shape[1]
        side, no_embed_class = _grid(length, prefix, no_embed_class)
        if side is None:
            raise WeightsError(
                f"{what}: a position embedding of {length} tokens is not a square patch grid, with or without the "
                f"{prefix} prefix token(s) the checkpoint has"
            )
    head = state.get("head.weight")
    return {
        "image_size": side * p, "patch_size": p, "embed_dim": d, "depth": depth,
        "mlp_ratio": mlp.shape[0] / d, "num_classes": 0 if head is None else head.shape[0], "in_chans": c,
        "class_token": "cls_token" in state, "dist_token": "dist_token" in state, "reg_tokens": reg,
        "no_embed_class": bool(no_embed_class), "init_values": 1.0 if "blocks.0.ls1.gamma" in state else None,
        "pre_norm": "norm_pre.weight" in state, "fc_norm": "fc_norm.weight" in state,
        "head_bias": head is None or "head.bias" in state, "qkv_bias": "blocks.0.attn.qkv.bias" in state,
        "global_pool": "map" if "attn_pool.latent" in state else ("token" if "cls_token" in state else "avg"),
        **_block_parts(state),
    }  # fmt: skip


def _block_parts(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The parts of the newer families that show in the tensors: RMSNorm (norms without bias), a
    norm after the patch projection, output biases, SwiGLU, sub-LN norms, the position embeddings."""
    rmsnorm = "blocks.0.norm1.weight" in state and "blocks.0.norm1.bias" not in state
    return {
        "norm_layer": "rmsnorm" if rmsnorm else "layernorm", "embed_norm": "patch_embed.norm.weight" in state,
        "proj_bias": "blocks.0.attn.proj.bias" in state, "swiglu_mlp": "blocks.0.mlp.fc1_g.weight" in state,
        "scale_mlp": "blocks.0.mlp.norm.weight" in state, "scale_attn_inner": "blocks.0.attn.norm.weight" in state,
        "use_abs_pos_emb": "pos_embed" in state,
        **({"use_rot_pos_emb": True, "rope_type": "mixed"} if "rope.freqs" in state else {}),
    }  # fmt: skip


def _grid(length: int, prefix: int, no_embed_class: bool | None) -> tuple[int | None, bool]:
    """(side of the square grid, whether the embedding leaves out the prefix slots)."""
    for leaves_out in ((no_embed_class,) if no_embed_class is not None else (False, True)):
        n = length if leaves_out else length - prefix
        side = math.isqrt(max(n, 0))
        if side > 0 and side * side == n:
            return side, bool(leaves_out)
    return None, False


# ---------------------------------------------------------------------------------------------
# What the published configs say


def _timm_options(cfg: dict, what: str) -> dict[str, Any]:
    """What timm's config.json says beyond the tensors: ``model_args``, and what timm's registry
    builds the named ``architecture`` with (for its Eva class: the rotary embedding and pooling)."""
    args = cfg.get("model_args") or {}
    arch = str(cfg.get("architecture", ""))
    registered = timm_architecture(arch) or {}
    pool = args.get("global_pool", cfg.get("global_pool", registered.get("global_pool")))
    if pool not in (None, "token", "avg", "map"):
        raise WeightsError(f"{what}: timm global_pool={pool!r} is not supported (token, avg and map are)")
    for flag, ok in (("qk_norm", (None, False)), ("final_norm", (None, True)), ("class_token", (None, True, False))):
        if args.get(flag) not in ok:
            raise WeightsError(f"{what}: timm model_args {flag}={args.get(flag)!r} is not supported by tinyvit's ViT")
    out = {"num_heads": args.get("num_heads", registered.get("num_heads")),
           "no_embed_class": args.get("no_embed_class")}  # fmt: skip
    act = args.get("act_layer", registered.get("act_layer"))
    if act is not None:
        out["act_layer"] = act
    if pool is not None:
        out["global_pool"] = pool
    out |= {k: args.get(k, registered.get(k)) for k in _EVA_FIELDS if args.get(k, registered.get(k)) is not None}
    if isinstance(out.get("ref_feat_shape"), (list, tuple)):
        out["ref_feat_shape"] = _square(out["ref_feat_shape"], "ref_feat_shape", what)
    input_size = (cfg.get("pretrained_cfg") or {}).get("input_size")  # (C, H, W)
    size = args.get("img_size") or (input_size[1:] if input_size else None)
    if size and registered.get("use_rot_pos_emb"):  # rotary-only weights do not show their trained size
        out["image_size"] = _square(size, "img_size", what)
    return out


def _square(value: Any, name: str, what: str) -> int:
    """An int, or a (n, n) pair → n; a rectangle is refused."""
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise WeightsError(f"{what}: timm {name}={list(value)} is not square, which tinyvit's ViT needs")
        value = value[0]
    return int(value)


def _hf_options(cfg: dict, what: str) -> dict[str, Any]:
    """What transformers' config.json says: heads, eps, activation (a CLIPModel's or SiglipModel's
    image tower is its ``vision_config``)."""
    kind = str(cfg.get("model_type"))
    if kind == "dinov3_vit":
        return _hf_dinov3_options(cfg, what)
    vision = cfg.get("vision_config") if kind in ("clip", "siglip") else cfg
    kind = kind.removesuffix("_vision_model")
    if kind not in HF_EPS or not isinstance(vision, dict):
        known = "vit, dinov2, dinov2_with_registers, clip, clip_vision_model, siglip, siglip_vision_model"
        raise WeightsError(f"{what}: config.json model_type {cfg.get('model_type')!r} is not one of {known}")
    act = vision.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu")
    if act not in HF_ACTS or not vision.get("qkv_bias", True) or vision.get("use_swiglu_ffn"):
        raise WeightsError(f"{what}: config.json hidden_act={act!r}, qkv_bias={vision.get('qkv_bias', True)!r}, "
                           f"use_swiglu_ffn={vision.get('use_swiglu_ffn', False)!r}: not supported")  # fmt: skip
    return {
        "num_heads": vision.get("num_attention_heads"), "layer_norm_eps": vision.get("layer_norm_eps", HF_EPS[kind]),
        "act_layer": HF_ACTS[act],
    }  # fmt: skip


def _hf_dinov3_options(cfg: dict, what: str) -> dict[str, Any]:
    """transformers' ``DINOv3ViTModel``: DINOv3's rotary embedding (``rope_theta``), class-token
    pooling (``pooler_output``), the gated MLP's SiLU or the plain MLP's GELU."""
    act = cfg.get("hidden_act", "gelu")
    if cfg.get("use_gated_mlp"):
        act = "gelu" if act == "silu" else act  # the gated MLP is SwiGLU (shown by its tensors)
    if act not in HF_ACTS:
        raise WeightsError(f"{what}: config.json hidden_act={act!r} is not supported")
    size = cfg.get("image_size", 224)
    return {
        "num_heads": cfg.get("num_attention_heads"), "layer_norm_eps": cfg.get("layer_norm_eps", 1e-5),
        "act_layer": HF_ACTS[act], "use_rot_pos_emb": True, "rope_type": "dinov3",
        "rope_temperature": float(cfg.get("rope_theta", 100.0)), "rope_rotate_half": True, "global_pool": "token",
        "image_size": _square(size, "image_size", what),
    }  # fmt: skip


def _meta_dinov3_options(tensors: dict[str, torch.Tensor], what: str) -> dict[str, Any]:
    """facebookresearch/dinov3's ``DinoVisionTransformer``: the heads and the rotary base read off
    ``rope_embed.periods`` (``Dh / 4`` of them, ``base ** (4 i / Dh)``); the eps every released ViT
    has (which tensors cannot show: ``arch="layer_norm_eps=1e-6"`` for a ``norm_layer="layernorm"`` one)."""
    saved, proj = tensors["rope_embed.periods"], tensors.get("patch_embed.proj.weight")
    periods, n = saved.double().flatten(), saved.numel()
    if proj is None:
        return {}  # the tensors' reading names what is missing
    width = proj.shape[0]
    if unset := [k for k, t in tensors.items() if k.endswith("qkv.bias_mask") and not torch.isfinite(t).all()]:
        raise WeightsError(f"{what}: {unset[0]} is not finite (a model saved before init_weights): DINOv3's own "
                           "code would give NaN too")  # fmt: skip
    if n == 0 or width % (4 * n):
        raise WeightsError(f"{what}: {n} rotary periods (rope_embed.periods, head_dim / 4 of them) do not divide a "
                           f"{width}-wide embedding into heads")  # fmt: skip
    raw = float(periods[-1] ** (n / (n - 1))) if n > 1 else 100.0  # periods[i] = base ** (i / n)
    steps, rtol = torch.arange(n, dtype=torch.float64) / n, 8 * torch.finfo(saved.dtype).eps
    fits = [b for b in (float(f"{raw:.3g}"), float(f"{raw:.6g}"), raw) if torch.allclose(periods, b**steps, rtol=rtol)]
    if not fits:
        shown = ", ".join(f"{p:.4g}" for p in periods[:4].tolist())
        raise WeightsError(f"{what}: rope_embed.periods ({shown}, …) are not base ** (4 i / head_dim): rotary "
                           "embeddings from min_period / max_period are not supported")  # fmt: skip
    return {
        "num_heads": width // (4 * n), "layer_norm_eps": DINOV3_EPS, "use_rot_pos_emb": True, "rope_type": "dinov3",
        "rope_temperature": fits[0], "rope_rotate_half": True, "global_pool": "token",
    }  # fmt: skip


def _open_clip_options(cfg: dict, what: str) -> dict[str, Any]:
    """open_clip's model_cfg: heads from ``width / head_width`` (open_clip's default head width:
    64), QuickGELU, its LayerNorm (eps 1e-5); a timm model as the tower: what timm's registry
    says of it, with open_clip's pooling."""
    model_cfg = cfg.get("model_cfg") or {}
    vision = model_cfg.get("vision_cfg") or {}
    if vision.get("timm_model_name"):
        return _open_clip_timm_options(vision, what)
    options = ("attentional_pool", "attn_pooler_queries", "no_ln_pre", "final_ln_after_pool")
    unsupported = [k for k in options if vision.get(k)]
    if unsupported or vision.get("pool_type", "tok") != "tok":
        raise WeightsError(f"{what}: open_clip vision_cfg {unsupported or 'pool_type'} is not supported")
    width = vision.get("width", 768)
    return {
        "num_heads": width // vision.get("head_width", 64), "layer_norm_eps": 1e-5,
        "act_layer": "quick_gelu" if model_cfg.get("quick_gelu") else "gelu",
    }  # fmt: skip


def _open_clip_timm_options(vision: dict, what: str) -> dict[str, Any]:
    """open_clip's ``TimmModel`` tower (``timm_model_name``): the architecture as timm registers it,
    pooled by ``timm_pool``; a linear ``timm_proj`` shows in the tensors, an MLP one is refused."""
    name = str(vision["timm_model_name"])
    registered = timm_architecture(name)
    refused = _timm_refusals().get(name)
    if registered is None or refused:
        why = f": {refused}" if refused else " (not a timm ViT tinyvit knows)"
        raise WeightsError(f"{what}: open_clip's timm tower {name!r} is not supported{why}")
    pool = vision.get("timm_pool", "avg")
    proj = vision.get("timm_proj")
    if pool not in ("token", "avg", "map") or proj not in (None, "linear", "none"):
        raise WeightsError(f"{what}: open_clip timm_pool={pool!r} / timm_proj={proj!r} is not supported")
    out = {k: v for k, v in registered.items() if v is not None} | {"global_pool": pool}
    if isinstance(out.get("ref_feat_shape"), list):
        out["ref_feat_shape"] = _square(out["ref_feat_shape"], "ref_feat_shape", what)
    return out


def _options(ckpt: Checkpoint, layout: str, npz_heads: int | None, what: str) -> dict[str, Any]:
    """The fields only a config (or the layout's own convention) can give."""
    out: dict[str, Any] = {"layer_norm_eps": 1e-6}
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
    elif layout == "npz":
        out["num_heads"] = npz_heads
    elif layout == "dinov2" and "rope_embed.periods" in ckpt.tensors:  # DINOv3's own
        out |= _meta_dinov3_options(ckpt.tensors, what)
    return out


def _library_heads(layout: str, shapes: dict[str, Any]) -> int | None:
    """Heads where the layout's library defines its architectures by size (DINOv2's own code,
    mmpretrain's arch_zoo), so that the shapes name one of them."""
    if layout == "dinov2":
        return DINOV2_HEADS.get(shapes["embed_dim"])
    if layout == "mmpretrain":
        return MMPRETRAIN_HEADS.get((shapes["embed_dim"], shapes["depth"]))
    return None


# ---------------------------------------------------------------------------------------------
# The user's statement: arch=


def parse_arch(arch: ArchArg) -> ViTConfig | dict[str, Any] | None:
    """``arch=`` as given → a config, or the fields it states. A string is a zoo model name, a timm
    architecture name, or fields (``"num_heads=6"``, ``"num_heads=6,global_pool=avg"``)."""
    if arch is None or isinstance(arch, ViTConfig):
        return arch
    if isinstance(arch, dict):
        known = {f.name for f in fields(ViTConfig)}
        if unknown := sorted(set(arch) - known):
            raise WeightsError(f"arch: unknown field(s) {', '.join(unknown)} (fields of ViTConfig: {', '.join(known)})")
        return dict(arch)
    if not isinstance(arch, str):
        raise WeightsError(f"arch: expected a ViTConfig, a name or fields, not {type(arch).__name__}")
    if "=" in arch:
        return parse_arch(dict(_field(part) for part in arch.split(",") if part.strip()))
    registered = timm_architecture(arch)
    if registered is not None and arch.lower() not in {n.lower() for n in entries()}:
        return {k: v for k, v in registered.items() if v is not None}
    zoo = asdict(entry(arch).arch)  # a zoo name (or an unknown one: UnknownModelError with the closest names)
    return {k: v for k, v in zoo.items() if k not in ("num_classes", "image_size")}  # those: the tensors'


def _field(part: str) -> tuple[str, Any]:
    key, _, text = (s.strip() for s in part.partition("="))
    for convert in (int, float):
        try:
            return key, convert(text)
        except ValueError:
            continue
    lowered = text.lower()
    return key, {"true": True, "false": False, "none": None}.get(lowered, text)


def _refusal(what: str, shapes: dict[str, Any]) -> WeightsError:
    d = shapes["embed_dim"]
    usual = f"are {USUAL_HEADS[d]} in the common ViTs, but not always" if d in USUAL_HEADS else "is not standard"
    same = [n for n, e in entries().items() if (e.arch.embed_dim, e.arch.depth, e.arch.patch_size) ==
            (d, shapes["depth"], shapes["patch_size"])]  # fmt: skip
    named = f"a zoo name with these shapes ({', '.join(same[:3])}), " if same else ""
    return WeightsError(
        f"{what}: the checkpoint does not say how many attention heads its blocks have, and tensors cannot show "
        f"it (heads of a {d}-wide ViT {usual}); pass arch= {named}a timm architecture name, or "
        "{'num_heads': N} (CLI: --arch NAME or --arch num_heads=N)"
    )


def infer_config(
    ckpt: Checkpoint, state: dict[str, torch.Tensor], layout: str, *, npz_heads: int | None = None, arch: ArchArg = None
) -> ViTConfig:
    """The checkpoint's :class:`ViTConfig`: ``arch`` (a config; a zoo or timm architecture whose
    heads, eps and activation are taken with the shapes of the tensors; or the fields nothing else
    states, such as ``{"num_heads": 6}``), else a tinyvit file's own record, else the tensors and
    what states the rest (the published config, the library's definition). The heads are never
    guessed: without a statement, a :class:`WeightsError` says what to pass."""
    what = repr(str(ckpt.path))
    if layout not in LAYOUTS:
        raise WeightsError(f"{what}: unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    stated = parse_arch(arch)
    if isinstance(stated, ViTConfig):
        return stated
    if ckpt.record is not None and stated is None:
        return ckpt.record.config
    options = _options(ckpt, layout, npz_heads, what) | (stated or {})
    shapes = _shapes(state, what, options.pop("no_embed_class", None))
    if layout == "timm" and shapes["pre_norm"] and "layer_norm_eps" not in (stated or {}):
        options["layer_norm_eps"] = 1e-5  # timm registers every pre-norm ViT (CLIP) with LayerNorm eps 1e-5
    heads = options.pop("num_heads", None) or _library_heads(layout, shapes)
    if heads is None:
        raise _refusal(what, shapes)
    if options.get("global_pool") == "token" and not shapes["class_token"]:
        options.pop("global_pool")
    try:
        return ViTConfig(**{**shapes, **options, "num_heads": heads})
    except ValueError as e:
        raise WeightsError(f"{what}: {e}") from e

