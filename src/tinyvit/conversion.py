"""Checkpoints in other layouts → tinyvit safetensors (timm's names + architecture metadata).

Every layout is converted here, once, by renaming (and, for q/k/v and JAX kernels, reshaping):

======================  ====================================================================
timm                    ``cls_token``, ``blocks.0.attn.qkv.weight``, … (tinyvit's own names)
hf                      transformers' on-disk names (``vit.encoder.layer.0.attention.attention
                        .query.weight``) and transformers-5 in-memory names (``vit.layers.0
                        .attention.q_proj.weight``); ``vit.`` prefix optional
mmpretrain              ``backbone.layers.0.attn.qkv.weight``, ``head.layers.head.weight``
npz                     Google's JAX ``.npz`` (``Transformer/encoderblock_0/...``)
======================  ====================================================================
"""

from __future__ import annotations

import json
import os
import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from tinyvit.errors import WeightsError
from tinyvit.model import ViTConfig
from tinyvit.preprocessing import PreprocessSpec
from tinyvit.weights import (
    META_CONFIG,
    META_LABELS,
    META_PREPROCESS,
    META_SOURCE,
    check_state_dict,
    config_from_metadata,
    grid_side,
    read_metadata,
    read_tensors,
    sha256_file,
)

__all__ = ["convert", "detect_layout", "to_timm", "read_checkpoint"]

LAYOUTS = ("timm", "hf", "mmpretrain", "npz")

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


class Checkpoint:
    """Tensors read from a source, plus what the source says about its architecture."""

    def __init__(self, tensors: Mapping, path: Path, *, config: ViTConfig | None = None, hf_config: dict | None = None):
        self.tensors = dict(tensors)
        self.path = path
        self.config = config  # from tinyvit metadata
        self.hf_config = hf_config  # an HF config.json next to the weights


def _torch_load(path: Path) -> dict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightsError(
            f"{str(path)!r}: refused to unpickle it with weights_only=True (it holds objects other "
            f"than tensors and plain containers, which could run code): {e}"
        ) from e
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise WeightsError(f"{str(path)!r}: not a readable PyTorch checkpoint ({e})") from e
    # Training checkpoints wrap the weights: mmpretrain {'meta', 'state_dict'}, others {'model'}.
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{str(path)!r}: holds no state dict (got {type(obj).__name__})")
    if all(str(k).startswith("module.") for k in obj):  # saved from a DistributedDataParallel wrapper
        obj = {k.removeprefix("module."): v for k, v in obj.items()}
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(f"{str(path)!r}: entries that are not tensors: {', '.join(map(str, not_tensors[:5]))}")
    return obj


def _read_hf_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise WeightsError(f"{str(path)!r}: unreadable config.json ({e})") from e
    return cfg if isinstance(cfg, dict) else None


def read_checkpoint(src: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint: a safetensors / .pth / .bin / .npz file, or an HF save_pretrained folder."""
    path = Path(src)
    if not path.exists():
        raise WeightsError(f"{str(path)!r}: no such file or folder")
    if path.is_dir():
        hf_config = _read_hf_config(path / "config.json")
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                break
        else:
            if (path / "model.safetensors.index.json").is_file():
                index = json.loads((path / "model.safetensors.index.json").read_text(encoding="utf-8"))
                tensors: dict = {}
                for shard in sorted(set(index["weight_map"].values())):
                    tensors.update(read_tensors(path / shard))
                return Checkpoint(tensors, path, hf_config=hf_config)
            raise WeightsError(f"{str(path)!r}: folder holds no model.safetensors or pytorch_model.bin")
        ckpt = read_checkpoint(path / name)
        ckpt.hf_config = ckpt.hf_config or hf_config
        return ckpt
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {k: torch.from_numpy(np.ascontiguousarray(npz[k])) for k in npz.files}
        except (OSError, ValueError, EOFError) as e:
            raise WeightsError(f"{str(path)!r}: not a readable .npz file ({e})") from e
        return Checkpoint(arrays, path)
    if path.suffix == ".safetensors":
        meta = read_metadata(path)
        return Checkpoint(
            read_tensors(path),
            path,
            config=config_from_metadata(meta, repr(str(path))),
            hf_config=_read_hf_config(path.parent / "config.json"),
        )
    return Checkpoint(_torch_load(path), path, hf_config=_read_hf_config(path.parent / "config.json"))


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
        raise WeightsError(f"{what}: position embedding of {state['pos_embed'].shape[1]} tokens is not a square grid")
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


def _zoo_config(state: dict[str, torch.Tensor], what: str) -> tuple[str, ViTConfig]:
    from tinyvit.manifest import entries

    shapes = shape_summary(state, what)
    matches = []
    for name, e in entries().items():
        a = e.arch
        fields = {**{k: getattr(a, k) for k in shapes if k != "mlp_dim"}, "mlp_dim": a.mlp_dim}
        if fields == shapes:
            matches.append((name, a))
    if len(matches) != 1:
        raise WeightsError(
            f"{what}: the file does not say its architecture and its shapes {shapes} match "
            f"{len(matches)} zoo models; pass arch= (a zoo name or a ViTConfig)"
        )
    return matches[0]


def resolve_arch(arch: str | ViTConfig | None) -> tuple[str | None, ViTConfig | None]:
    if arch is None or isinstance(arch, ViTConfig):
        return None, arch
    from tinyvit.manifest import entry

    return arch, entry(arch).arch


# ---------------------------------------------------------------------------------------------
# Writing


def _owned(t: torch.Tensor) -> torch.Tensor:
    """Contiguous and owning exactly its storage, as safetensors requires."""
    t = t.detach().contiguous()
    if t.untyped_storage().nbytes() != t.numel() * t.element_size():
        t = t.clone()
    return t


def save(dst: Path, state: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary file beside it, then a rename."""
    from safetensors.torch import save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        save_file({k: _owned(v) for k, v in state.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    layout: str = "auto",
    arch: str | ViTConfig | None = None,
    preprocess: PreprocessSpec | None = None,
    source_sha256: str | None = None,
) -> Path:
    """Convert a timm / Hugging Face / mmpretrain / JAX checkpoint to a tinyvit safetensors file.

    ``arch`` (a zoo name or a :class:`ViTConfig`) is needed only when the source does not carry
    its architecture and its shapes match no single zoo model. The output's metadata holds the
    architecture and, when known, the preprocessing, so ``tinyvit.load(dst)`` needs nothing else.
    ``source_sha256``: the source file's SHA-256 when the caller has already computed it.
    """
    dst = Path(dst)
    if dst.is_dir():
        raise WeightsError(f"{str(dst)!r} is a folder; give the output file's path")
    ckpt = read_checkpoint(src)
    what = repr(str(ckpt.path))
    if layout == "auto":
        layout = detect_layout(ckpt.tensors)
    state, npz_heads = to_timm(ckpt.tensors, layout)

    arch_name, config = resolve_arch(arch)
    if config is None:
        if ckpt.config is not None:
            config = ckpt.config
        elif ckpt.hf_config is not None and layout == "hf":
            config = _config_from_hf(ckpt.hf_config, what)
        elif npz_heads:
            s = shape_summary(state, what)
            config = ViTConfig(
                image_size=s["image_size"], patch_size=s["patch_size"], embed_dim=s["embed_dim"],
                depth=s["depth"], num_heads=npz_heads, mlp_ratio=s["mlp_dim"] / s["embed_dim"],
                num_classes=s["num_classes"], in_chans=s["in_chans"],
            )  # fmt: skip
        else:
            arch_name, config = _zoo_config(state, what)
    check_state_dict(config, state, f"{what} ({layout} layout)")

    if arch_name is None:
        arch_name = _zoo_name_of(config)
    if preprocess is None and arch_name is not None:
        preprocess = _zoo_preprocess(arch_name, layout)
    metadata = {
        "format": "pt",
        META_CONFIG: json.dumps(config.to_dict()),
        META_SOURCE: json.dumps(
            {"layout": layout, "file": ckpt.path.name, "sha256": source_sha256 or _source_sha(ckpt.path)}
        ),
    }
    if preprocess is not None:
        metadata[META_PREPROCESS] = json.dumps(preprocess.to_dict())
    if arch_name is not None:
        metadata[META_LABELS] = _zoo_labels(arch_name)
    return save(dst, state, metadata)


def _zoo_name_of(config: ViTConfig) -> str | None:
    from tinyvit.manifest import entries

    return next((name for name, e in entries().items() if e.arch == config), None)


def _zoo_preprocess(name: str, layout: str) -> PreprocessSpec | None:
    """The preprocessing of the zoo model's weights published in this layout, if any: a
    checkpoint in a library's layout was evaluated with that library's pipeline."""
    from tinyvit.manifest import entry

    return next((s.preprocess for s in entry(name).sources if s.layout == layout), None)


def _zoo_labels(name: str) -> str:
    from tinyvit.manifest import entry

    return entry(name).labels


def _source_sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None
