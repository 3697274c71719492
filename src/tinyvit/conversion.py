"""Checkpoints in other layouts → timm's parameter names plus a weights record.

Conversion is key mapping and architecture inference, nothing else: :func:`read_weights` takes
what ``files.read_checkpoint`` read, renames the tensors to tinyvit's (= timm's) names, works out
the architecture from the tensors (and the checkpoint's own config where it has one), and gathers
what the checkpoint says about its class names and its preprocessing into a :class:`Weights`
record. ``loading.py`` builds a model from that in memory (checking the tensors against the
architecture); :func:`convert` checks them and writes a tinyvit safetensors file.

======================  ====================================================================
timm                    ``cls_token``, ``blocks.0.attn.qkv.weight``, … (tinyvit's own names);
                        a Hub folder's ``config.json`` (``pretrained_cfg``, ``label_names``)
hf                      transformers' on-disk names (``vit.encoder.layer.0.attention.attention
                        .query.weight``) and transformers-5 in-memory names (``vit.layers.0
                        .attention.q_proj.weight``); ``vit.`` prefix optional; ``config.json``
                        (``id2label``) and ``preprocessor_config.json``
mmpretrain              ``backbone.layers.0.attn.qkv.weight``, ``head.layers.head.weight``;
                        class names from the checkpoint's ``meta.dataset_meta.classes``
npz                     Google's JAX ``.npz`` (``Transformer/encoderblock_0/...``)
======================  ====================================================================
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from tinyvit.config import ViTConfig
from tinyvit.errors import WeightsError
from tinyvit.files import Checkpoint, read_checkpoint, save
from tinyvit.fsutil import sha256_file
from tinyvit.manifest import entries, entry
from tinyvit.model import check_state_dict
from tinyvit.preprocessing import PreprocessSpec
from tinyvit.record import LAYOUTS, Source, Weights, labels_from_mapping, parse_labels

__all__ = ["convert", "detect_layout", "read_weights", "to_timm"]

_BLOCK = r"(?:encoder\.layer|layers)\.(\d+)\."
# (pattern, timm name); "{qkv}" targets are fused from their q, k, v parts afterwards.
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "hf": [
        (r"(?:vit\.)?embeddings\.cls_token", "cls_token"),
        (r"(?:vit\.)?embeddings\.position_embeddings", "pos_embed"),
        (r"(?:vit\.)?embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
        (rf"(?:vit\.)?{_BLOCK}layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
        (rf"(?:vit\.)?{_BLOCK}layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
        (rf"(?:vit\.)?{_BLOCK}attention\.attention\.(query|key|value)\.(weight|bias)", r"blocks.\1.attn.qkv.\3{\2}"),
        (rf"(?:vit\.)?{_BLOCK}attention\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3{\2}"),
        (rf"(?:vit\.)?{_BLOCK}attention\.(?:output\.dense|o_proj)\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (rf"(?:vit\.)?{_BLOCK}(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (rf"(?:vit\.)?{_BLOCK}(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        (r"(?:vit\.)?layernorm\.(weight|bias)", r"norm.\1"),
        (r"classifier\.(weight|bias)", r"head.\1"),
    ],
    "mmpretrain": [
        (r"backbone\.cls_token", "cls_token"),
        (r"backbone\.pos_embed", "pos_embed"),
        (r"backbone\.patch_embed\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
        (r"backbone\.layers\.(\d+)\.ln1\.(weight|bias)", r"blocks.\1.norm1.\2"),
        (r"backbone\.layers\.(\d+)\.attn\.(qkv|proj)\.(weight|bias)", r"blocks.\1.attn.\2.\3"),
        (r"backbone\.layers\.(\d+)\.ln2\.(weight|bias)", r"blocks.\1.norm2.\2"),
        (r"backbone\.layers\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (r"backbone\.layers\.(\d+)\.ffn\.layers\.1\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        (r"backbone\.ln1\.(weight|bias)", r"norm.\1"),
        (r"head\.layers\.head\.(weight|bias)", r"head.\1"),
    ],
}
_QKV_PART = {"query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v"}


# ---------------------------------------------------------------------------------------------
# Reading


# ---------------------------------------------------------------------------------------------
# Layouts


def detect_layout(keys) -> str:
    keys = set(keys)
    if any(k.endswith("embedding/kernel") for k in keys):
        return "npz"
    if "backbone.cls_token" in keys or any(k.startswith("backbone.layers.") for k in keys):
        return "mmpretrain"
    if {"embeddings.cls_token", "vit.embeddings.cls_token"} & keys:
        return "hf"
    if "cls_token" in keys and "pos_embed" in keys:
        return "timm"
    shown = ", ".join(sorted(keys)[:6])
    raise WeightsError(
        f"cannot tell the checkpoint layout from its keys ({shown}, …); pass layout= one of {', '.join(LAYOUTS)}"
    )


def _rename(tensors: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename by the first matching rule; unmatched keys are kept (and reported as unexpected)."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[str, torch.Tensor]] = {}
    compiled = [(re.compile(p), r) for p, r in rules]
    for key, t in tensors.items():
        for pattern, repl in compiled:
            if m := pattern.fullmatch(key):
                new = m.expand(repl)
                if new.endswith("}"):  # a q/k/v part: fused below
                    target, part = new[:-1].split("{")
                    parts.setdefault(target, {})[_QKV_PART[part]] = t
                else:
                    out[new] = t
                break
        else:
            out[key] = t
    for target, qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise WeightsError(f"incomplete query/key/value tensors for {target}: found only {sorted(qkv)}")
        out[target] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def _from_npz(w: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Google's JAX layout → timm names; also returns the number of heads its kernels reveal."""
    if "pre_logits/kernel" in w:
        raise WeightsError("this .npz has a pre-logits (representation) layer, which tinyvit's ViT does not have")
    used: set[str] = set()

    def get(name: str) -> torch.Tensor:
        if name not in w:
            raise WeightsError(f".npz is missing {name!r}")
        used.add(name)
        return w[name]

    def dense(name: str) -> torch.Tensor:  # (in, out) kernel → (out, in) weight
        return get(name).T.contiguous()

    out = {
        "patch_embed.proj.weight": get("embedding/kernel").permute(3, 2, 0, 1).contiguous(),  # HWIO → OIHW
        "patch_embed.proj.bias": get("embedding/bias"),
        "cls_token": get("cls"),
        "pos_embed": get("Transformer/posembed_input/pos_embedding"),
        "norm.weight": get("Transformer/encoder_norm/scale"),
        "norm.bias": get("Transformer/encoder_norm/bias"),
    }
    if "head/kernel" in w:
        out["head.weight"], out["head.bias"] = dense("head/kernel"), get("head/bias")
    num_heads = 0
    i = 0
    while f"Transformer/encoderblock_{i}/LayerNorm_0/scale" in w:
        b, a = f"Transformer/encoderblock_{i}/", f"Transformer/encoderblock_{i}/MultiHeadDotProductAttention_1/"
        q = get(a + "query/kernel")  # (D, heads, Dh)
        num_heads = q.shape[1]
        out[f"blocks.{i}.norm1.weight"] = get(b + "LayerNorm_0/scale")
        out[f"blocks.{i}.norm1.bias"] = get(b + "LayerNorm_0/bias")
        out[f"blocks.{i}.attn.qkv.weight"] = torch.cat(
            [get(a + f"{n}/kernel").flatten(1).T for n in ("query", "key", "value")]
        ).contiguous()
        out[f"blocks.{i}.attn.qkv.bias"] = torch.cat(
            [get(a + f"{n}/bias").flatten() for n in ("query", "key", "value")]
        )
        out[f"blocks.{i}.attn.proj.weight"] = get(a + "out/kernel").flatten(0, 1).T.contiguous()  # (H, Dh, D)
        out[f"blocks.{i}.attn.proj.bias"] = get(a + "out/bias")
        out[f"blocks.{i}.norm2.weight"] = get(b + "LayerNorm_2/scale")
        out[f"blocks.{i}.norm2.bias"] = get(b + "LayerNorm_2/bias")
        out[f"blocks.{i}.mlp.fc1.weight"] = dense(b + "MlpBlock_3/Dense_0/kernel")
        out[f"blocks.{i}.mlp.fc1.bias"] = get(b + "MlpBlock_3/Dense_0/bias")
        out[f"blocks.{i}.mlp.fc2.weight"] = dense(b + "MlpBlock_3/Dense_1/kernel")
        out[f"blocks.{i}.mlp.fc2.bias"] = get(b + "MlpBlock_3/Dense_1/bias")
        i += 1
    out.update({k: v for k, v in w.items() if k not in used})  # leftovers: reported as unexpected
    return out, num_heads


def to_timm(tensors: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], int | None]:
    """Rename a state dict of ``layout`` to timm's names; also the head count where it shows."""
    if layout == "timm":
        return dict(tensors), None
    if layout == "npz":
        return _from_npz(tensors)
    if layout in _RENAMES:
        return _rename(tensors, _RENAMES[layout]), None
    raise WeightsError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")


# ---------------------------------------------------------------------------------------------
# Architecture


def grid_side(num_tokens: int) -> int | None:
    """Side of the square patch grid of a position embedding with a class slot, or None."""
    side = math.isqrt(max(num_tokens - 1, 0))
    return side if side * side == num_tokens - 1 and side > 0 else None


# Heads of the standard ViT widths (ViT/DeiT Ti, S, B, L, H, g, G); the tensors do not show them.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16, 1664: 16}


def shape_summary(state: dict[str, torch.Tensor], what: str) -> dict:
    """Architecture fields that the tensor shapes determine (all but the number of heads)."""
    try:
        d, c, p, _ = state["patch_embed.proj.weight"].shape
        side = grid_side(state["pos_embed"].shape[1])
        depth = 0
        while f"blocks.{depth}.norm1.weight" in state:
            depth += 1
        mlp = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise WeightsError(f"{what}: cannot read the architecture from the tensors (missing {e})") from e
    if side is None:
        raise WeightsError(
            f"{what}: a position embedding of {state['pos_embed'].shape[1]} tokens is not a class slot plus a "
            "square grid (models without a class token are not supported)"
        )
    head = state.get("head.weight")
    return {
        "image_size": side * p,
        "patch_size": p,
        "embed_dim": d,
        "depth": depth,
        "mlp_dim": mlp,
        "num_classes": 0 if head is None else head.shape[0],
        "in_chans": c,
    }


def _config_from_shapes(state: dict[str, torch.Tensor], what: str, num_heads: int | None, eps: float) -> ViTConfig:
    s = shape_summary(state, what)
    heads = num_heads or HEADS_BY_WIDTH.get(s["embed_dim"])
    if heads is None:
        raise WeightsError(
            f"{what}: the number of attention heads of a {s['embed_dim']}-wide ViT is not standard and the "
            "checkpoint does not say it; pass arch= a ViTConfig (or --arch NAME for a zoo architecture)"
        )
    return ViTConfig(
        image_size=s["image_size"], patch_size=s["patch_size"], embed_dim=s["embed_dim"], depth=s["depth"],
        num_heads=heads, mlp_ratio=s["mlp_dim"] / s["embed_dim"], num_classes=s["num_classes"],
        in_chans=s["in_chans"], layer_norm_eps=eps,
    )  # fmt: skip


def _config_from_hf(cfg: dict, what: str) -> ViTConfig:
    if cfg.get("model_type") != "vit":
        raise WeightsError(f"{what}: config.json has model_type {cfg.get('model_type')!r}, not 'vit'")
    if cfg.get("hidden_act", "gelu") != "gelu" or not cfg.get("qkv_bias", True):
        raise WeightsError(f"{what}: only exact-GELU ViTs with a qkv bias are supported")
    classifier = "ViTForImageClassification" in cfg.get("architectures", ["ViTForImageClassification"])
    hidden = cfg.get("hidden_size", 768)
    size, patch = cfg.get("image_size", 224), cfg.get("patch_size", 16)
    return ViTConfig(
        image_size=size if isinstance(size, int) else size[0],
        patch_size=patch if isinstance(patch, int) else patch[0],
        embed_dim=hidden,
        depth=cfg.get("num_hidden_layers", 12),
        num_heads=cfg.get("num_attention_heads", 12),
        mlp_ratio=cfg.get("intermediate_size", 3072) / hidden,
        num_classes=len(cfg.get("id2label", {i: i for i in range(2)})) if classifier else 0,
        in_chans=cfg.get("num_channels", 3),
        layer_norm_eps=cfg.get("layer_norm_eps", 1e-12),  # HF's default, as HF computes it
    )


def _check_timm_config(cfg: dict, what: str) -> int | None:
    """Refuse timm variants this ViT does not implement; the head count where the config gives it."""
    args = cfg.get("model_args") or {}
    pool = args.get("global_pool", cfg.get("global_pool", "token"))
    if pool not in ("token", None, ""):
        raise WeightsError(f"{what}: timm global_pool={pool!r}; only class-token ViTs are supported")
    for flag in ("class_token", "no_embed_class", "qk_norm", "reg_tokens", "init_values", "fc_norm"):
        value = args.get(flag)
        if value not in (None, False, 0) and not (flag == "class_token" and value is True):
            raise WeightsError(f"{what}: timm model_args {flag}={value!r} is not supported by tinyvit's ViT")
    return args.get("num_heads")


def _zoo_arch(arch: str, shapes: dict) -> ViTConfig:
    """A zoo architecture, with the class count and image size the tensors show (a fine-tune)."""
    base = entry(arch).arch
    return replace(base, num_classes=shapes["num_classes"], image_size=shapes["image_size"])


def infer_config(ckpt: Checkpoint, state: dict[str, torch.Tensor], layout: str, *, npz_heads: int | None,
                 arch: str | ViTConfig | None) -> ViTConfig:  # fmt: skip
    what = repr(str(ckpt.path))
    if isinstance(arch, ViTConfig):
        return arch
    if arch is not None:
        return _zoo_arch(arch, shape_summary(state, what))
    if ckpt.record is not None:
        return ckpt.record.config
    if layout == "hf" and ckpt.hf_config is not None:
        return _config_from_hf(ckpt.hf_config, what)
    if layout == "npz":
        return _config_from_shapes(state, what, npz_heads, eps=1e-6)
    heads = _check_timm_config(ckpt.timm_config, what) if layout == "timm" and ckpt.timm_config else None
    eps = 1e-12 if layout == "hf" else 1e-6  # HF's default; timm's and mmpretrain's
    return _config_from_shapes(state, what, heads, eps)


def zoo_weights(config: ViTConfig, layout: str) -> Weights | None:
    """The zoo weights with exactly this architecture published in this layout (a checkpoint in a
    library's layout was evaluated with that library's pipeline), if any."""
    for e in entries().values():
        if e.arch == config:
            return next((w for w in e.weights if w.source.layout == layout), e.weights[0])
    return None


# ---------------------------------------------------------------------------------------------
# What the checkpoint says: class names and preprocessing


_HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def preprocess_from_hf(cfg: dict, what: str) -> PreprocessSpec:
    """transformers' ViTImageProcessor config: squash to size × size, rescale, normalize."""
    kind = str(cfg.get("image_processor_type", "ViTImageProcessor"))
    if not kind.startswith("ViTImageProcessor"):
        raise WeightsError(f"{what}: preprocessor_config.json is a {kind}; only ViTImageProcessor is supported")
    size = cfg.get("size", {"height": 224, "width": 224})
    if isinstance(size, int):
        size = {"height": size, "width": size}
    if not cfg.get("do_resize", True) or size.get("height") != size.get("width") or not size.get("height"):
        raise WeightsError(f"{what}: preprocessor_config.json must resize to a square (got size={size})")
    resample = cfg.get("resample", 2)
    interpolation = _HF_RESAMPLE.get(resample) if isinstance(resample, int) else str(resample).lower()
    factor = cfg.get("rescale_factor", 1 / 255) if cfg.get("do_rescale", True) else 1.0
    mean = cfg.get("image_mean", [0.5] * 3) if cfg.get("do_normalize", True) else [0.0] * 3
    std = cfg.get("image_std", [0.5] * 3) if cfg.get("do_normalize", True) else [1.0] * 3
    # (x * factor - m) / s == (x - m / factor) / (s / factor): mean and std in pixel values
    try:
        return PreprocessSpec(
            resize=size["height"], crop=size["height"], interpolation=str(interpolation),
            mean=tuple(m / factor for m in mean), std=tuple(s / factor for s in std), resize_mode="squash",
        )  # fmt: skip
    except ValueError as e:
        raise WeightsError(f"{what}: unsupported preprocessor_config.json ({e})") from e


def preprocess_from_timm(cfg: dict, what: str) -> PreprocessSpec:
    """timm's ``pretrained_cfg`` → its evaluation transform (``transforms_imagenet_eval``)."""
    pre = cfg.get("pretrained_cfg") or {}
    size = (pre.get("test_input_size") or pre.get("input_size") or [3, 224, 224])[1:]
    if size[0] != size[1]:
        raise WeightsError(f"{what}: timm input_size {size} is not square")
    crop_pct = pre.get("test_crop_pct") or pre.get("crop_pct") or 0.875
    mode = pre.get("crop_mode") or "center"
    if mode not in ("center", "squash"):
        raise WeightsError(f"{what}: timm crop_mode {mode!r} is not supported (center and squash are)")
    mean, std = pre.get("mean", (0.485, 0.456, 0.406)), pre.get("std", (0.229, 0.224, 0.225))
    try:
        return PreprocessSpec(
            resize=math.floor(size[0] / crop_pct), crop=size[0], interpolation=pre.get("interpolation") or "bicubic",
            mean=tuple(255 * m for m in mean), std=tuple(255 * s for s in std),
            resize_mode="short-edge" if mode == "center" else "squash",
        )  # fmt: skip
    except ValueError as e:
        raise WeightsError(f"{what}: unsupported timm pretrained_cfg ({e})") from e


def _categories(ckpt: Checkpoint, layout: str, config: ViTConfig, zoo: Weights | None) -> tuple[str, ...] | None:
    what = repr(str(ckpt.path))
    if ckpt.record is not None:
        return ckpt.record.categories
    if layout == "hf" and ckpt.hf_config is not None and "id2label" in ckpt.hf_config and config.num_classes:
        return labels_from_mapping(ckpt.hf_config["id2label"], f"{what} config.json id2label")
    if layout == "timm" and ckpt.timm_config is not None and ckpt.timm_config.get("label_names"):
        return parse_labels(ckpt.timm_config["label_names"])
    if ckpt.classes is not None:
        return ckpt.classes
    return zoo.categories if zoo is not None else None


def _preprocess(ckpt: Checkpoint, layout: str, zoo: Weights | None) -> PreprocessSpec | None:
    what = repr(str(ckpt.path))
    if ckpt.record is not None:
        return ckpt.record.preprocess
    if layout == "hf" and ckpt.hf_preprocessor is not None:
        return preprocess_from_hf(ckpt.hf_preprocessor, what)
    if layout == "timm" and ckpt.timm_config is not None and ckpt.timm_config.get("pretrained_cfg"):
        return preprocess_from_timm(ckpt.timm_config, what)
    return zoo.preprocess if zoo is not None and zoo.source.layout == layout else None


def read_weights(
    src: str | os.PathLike,
    *,
    layout: str = "auto",
    arch: str | ViTConfig | None = None,
    labels: str | os.PathLike | Sequence[str] | None = None,
    preprocess: PreprocessSpec | None = None,
) -> tuple[dict[str, torch.Tensor], Weights]:
    """A checkpoint's tensors under tinyvit's names and its weights record (the class names
    checked against the head; the tensors are checked against the architecture where a model is
    built, and by :func:`convert`).

    The architecture comes from ``arch`` (a :class:`ViTConfig`, or a zoo name whose head count and
    norm eps are taken, with the class count and image size of the tensors), else from the file's
    own record or config, else from the tensors. ``labels`` (a list, a file or ``"imagenet-1k"``) and
    ``preprocess`` override what the checkpoint says.
    """
    ckpt = read_checkpoint(src)
    what = repr(str(ckpt.path))
    if layout == "auto":
        layout = ckpt.record.source.layout if ckpt.record is not None else detect_layout(ckpt.tensors)
    state, npz_heads = to_timm(ckpt.tensors, layout if ckpt.record is None else "timm")
    config = infer_config(ckpt, state, layout, npz_heads=npz_heads, arch=arch)
    zoo = zoo_weights(config, layout)
    categories = parse_labels(labels) if labels is not None else _categories(ckpt, layout, config, zoo)
    if categories is not None and len(categories) != config.num_classes:
        raise WeightsError(f"{what}: {len(categories)} class names for a head of {config.num_classes} classes")
    if ckpt.record is not None:
        source = ckpt.record.source
    else:
        source = Source(kind="file", layout=layout, filename=ckpt.path.name, path=str(ckpt.path))
    base = ckpt.record or Weights(config=config, preprocess=None, categories=None, source=source)
    record = replace(
        base,
        config=config,
        categories=categories if config.num_classes else None,
        preprocess=preprocess or _preprocess(ckpt, layout, zoo),
        source=source,
    )
    return state, record


# ---------------------------------------------------------------------------------------------
# Writing


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    layout: str = "auto",
    arch: str | ViTConfig | None = None,
    labels: str | os.PathLike | Sequence[str] | None = None,
    preprocess: PreprocessSpec | None = None,
) -> Path:
    """Convert a timm / Hugging Face / mmpretrain / JAX checkpoint to a tinyvit safetensors file,
    whose header carries the weights record, so ``tinyvit.load(dst)`` needs nothing else.

    ``arch``, ``labels`` and ``preprocess``: see :func:`read_weights`. The record's source keeps
    the original file's name, layout and SHA-256.
    """
    dst = Path(dst)
    if dst.is_dir():
        raise WeightsError(f"{str(dst)!r} is a folder; give the output file's path")
    if dst.suffix != ".safetensors":
        raise WeightsError(f"{str(dst)!r}: the output is a safetensors file; name it *.safetensors")
    state, record = read_weights(src, layout=layout, arch=arch, labels=labels, preprocess=preprocess)
    check_state_dict(record.config, state, f"{str(src)!r} ({record.source.layout} layout)")
    source = record.source
    if source.kind == "file" and source.sha256 is None:
        weights_file = _weights_file(Path(src))
        if weights_file is not None:
            source = replace(source, sha256=sha256_file(weights_file))
    return save(dst, state, replace(record, source=source))


def _weights_file(src: Path) -> Path | None:
    if src.is_file():
        return src
    return next((src / n for n in ("model.safetensors", "pytorch_model.bin") if (src / n).is_file()), None)
