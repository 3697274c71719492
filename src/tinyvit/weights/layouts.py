"""Key maps: a checkpoint's tensors, under the names its library gives them, → timm's names
(tinyvit's own). One table of renames per layout, plus the few reshapes a layout needs; nothing
here decides the architecture (``architecture.py``) or reads files (``files.py``).

=============  ==========================================================================================
layout         whose names
=============  ==========================================================================================
timm           timm's ``VisionTransformer`` (tinyvit's own): ``cls_token``, ``blocks.0.attn.qkv.weight``, …; and its
               ``Eva`` (DINOv3, EVA02, PE, RoPE-ViT), whose few other names are folded in: ``gamma_1`` →
               ``ls1.gamma``, ``q_bias`` / ``v_bias`` or ``q_proj`` / ``k_proj`` / ``v_proj`` → one ``qkv`` (k bias
               0), a packed SwiGLU ``mlp.fc1`` (rows: gate, then value) → ``mlp.fc1_g`` / ``mlp.fc1_x``
hf             transformers' ViT, DINOv2 (with registers), DINOv3, CLIP and SigLIP vision towers, on disk
               (``vit.encoder.layer.0.attention.attention.query.weight``) or as transformers 5 keeps them
               in memory (``…attention.q_proj.weight``); a ``CLIPModel`` / ``SiglipModel``'s text tower is
               left out
mmpretrain     ``backbone.layers.0.attn.qkv.weight``, ``head.layers.head.weight``
npz            Google's JAX ``.npz`` (``Transformer/encoderblock_0/...``)
open_clip      open_clip's CLIP: the image tower ``visual.*`` (``visual.transformer.resblocks.0…``), or a timm
               model as the tower (``visual.trunk.*``: PE-Core, EVA02-CLIP; timm's names, its head the
               projection, or ``visual.head.proj``); the text tower is left out
dinov2         Meta's own code: facebookresearch/dinov2's checkpoints (``mask_token``, ``register_tokens``,
               ``ls1.gamma``), and facebookresearch/dinov3's ``DinoVisionTransformer`` (``dinov3_vits16_pretrain_
               lvd1689m-*.pth``: ``storage_tokens``, ``rope_embed.periods``, SwiGLU ``mlp.w1`` / ``w2`` / ``w3``, the
               key bias masked by ``qkv.bias_mask``, the training-only ``local_cls_norm``)
=============  ==========================================================================================
"""

from __future__ import annotations

import re

import torch

from tinyvit.core.errors import WeightsError
from tinyvit.weights.record import LAYOUTS

__all__ = ["detect_layout", "to_timm"]

_BLOCK = r"(?:encoder\.layer|encoder\.layers|layers|(?:model\.)?layer)\.(\d+)\."
_HF = r"(?:vit\.|dinov2\.|vision_model\.)?"  # the base model's prefix, when a task model saved it
# (pattern, timm name) — the first match wins; "{q}"/"{k}"/"{v}" targets are fused into one qkv afterwards.
_RENAMES: dict[str, list[tuple[str, str]]] = {
    "hf": [
        (rf"{_HF}embeddings\.cls_token", "cls_token"),
        (rf"{_HF}embeddings\.class_embedding", "cls_token"),  # CLIP: (D,), reshaped below
        (rf"{_HF}embeddings\.register_tokens", "reg_token"),
        (rf"{_HF}embeddings\.(?:position_embeddings|position_embedding\.weight)", "pos_embed"),
        (rf"{_HF}embeddings\.(?:patch_embeddings\.projection|patch_embedding|patch_embeddings)\.(weight|bias)",
         r"patch_embed.proj.\1"),  # fmt: skip
        (rf"{_HF}pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),
        (rf"{_HF}{_BLOCK}(?:layernorm_before|norm1|layer_norm1)\.(weight|bias)", r"blocks.\1.norm1.\2"),
        (rf"{_HF}{_BLOCK}(?:layernorm_after|norm2|layer_norm2)\.(weight|bias)", r"blocks.\1.norm2.\2"),
        (rf"{_HF}{_BLOCK}attention\.attention\.(query|key|value)\.(weight|bias)", r"blocks.\1.attn.qkv.\3{\2}"),
        (rf"{_HF}{_BLOCK}(?:attention|self_attn)\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3{\2}"),
        (rf"{_HF}{_BLOCK}(?:attention\.output\.dense|attention\.o_proj|self_attn\.out_proj)\.(weight|bias)",
         r"blocks.\1.attn.proj.\2"),  # fmt: skip
        (rf"{_HF}{_BLOCK}layer_scale(1|2)\.lambda1", r"blocks.\1.ls\2.gamma"),
        (rf"{_HF}{_BLOCK}(?:intermediate\.dense|mlp\.fc1)\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (rf"{_HF}{_BLOCK}(?:output\.dense|mlp\.fc2)\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        # DINOv3: up / down, and the gated MLP's gate (then up is fc1_x: see _reshape)
        (rf"{_HF}{_BLOCK}mlp\.up_proj\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (rf"{_HF}{_BLOCK}mlp\.gate_proj\.(weight|bias)", r"blocks.\1.mlp.fc1_g.\2"),
        (rf"{_HF}{_BLOCK}mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        (rf"{_HF}(?:layernorm|post_layernorm|norm)\.(weight|bias)", r"norm.\1"),
        (rf"{_HF}head\.probe", "attn_pool.latent"),  # SigLIP's MAP head; in_proj is split below
        (rf"{_HF}head\.attention\.in_proj_(weight|bias)", r"attn_pool.in_proj.\1"),
        (rf"{_HF}head\.attention\.out_proj\.(weight|bias)", r"attn_pool.proj.\1"),
        (rf"{_HF}head\.layernorm\.(weight|bias)", r"attn_pool.norm.\1"),
        (rf"{_HF}head\.mlp\.(fc1|fc2)\.(weight|bias)", r"attn_pool.mlp.\1.\2"),
        (r"(?:classifier|visual_projection)\.(weight|bias)", r"head.\1"),
        (r"(?:vit\.|dinov2\.)?(?:embeddings\.mask_token|pooler\..*)", ""),  # unused at inference: dropped
        (r"(?:text_model\..*|text_projection\..*|logit_scale|logit_bias)", ""),  # the text tower
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
    "open_clip": [
        (r"visual\.class_embedding", "cls_token"),  # (D,), reshaped below
        (r"visual\.positional_embedding", "pos_embed"),  # (T, D)
        (r"visual\.conv1\.(weight|bias)", r"patch_embed.proj.\1"),
        (r"visual\.ln_pre\.(weight|bias)", r"norm_pre.\1"),
        (r"visual\.transformer\.resblocks\.(\d+)\.ln_1\.(weight|bias)", r"blocks.\1.norm1.\2"),
        (r"visual\.transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)", r"blocks.\1.attn.qkv.\2"),
        (r"visual\.transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
        (r"visual\.transformer\.resblocks\.(\d+)\.ls_(1|2)\.gamma", r"blocks.\1.ls\2.gamma"),
        (r"visual\.transformer\.resblocks\.(\d+)\.ln_2\.(weight|bias)", r"blocks.\1.norm2.\2"),
        (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
        (r"visual\.transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
        (r"visual\.ln_post\.(weight|bias)", r"norm.\1"),
        (r"visual\.proj", "head.weight"),  # (D, E), used as x @ proj: transposed below
        (r"(?!visual\.).*", ""),  # the text tower, logit_scale: dropped
    ],
    "dinov2": [
        (r"register_tokens", "reg_token"),
        (r"mask_token", ""),  # for masked training only: dropped
        # DINOv3's DinoVisionTransformer (its key bias masks are applied and dropped first: _mask_key_bias)
        (r"storage_tokens", "reg_token"),  # after the class token, as timm's registers
        (r"rope_embed\.periods", ""),  # the rotary periods: read by architecture.py, tinyvit computes them
        (r"local_cls_norm\.(weight|bias)", ""),  # untie_global_and_local_cls_norm: local crops in training only
        (r"blocks\.(\d+)\.mlp\.w1\.(weight|bias)", r"blocks.\1.mlp.fc1_g.\2"),  # SwiGLUFFN: w3(silu(w1 x) * w2 x)
        (r"blocks\.(\d+)\.mlp\.w2\.(weight|bias)", r"blocks.\1.mlp.fc1_x.\2"),
        (r"blocks\.(\d+)\.mlp\.w3\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    ],
}
_QKV_PART = {"query": "q", "key": "k", "value": "v", "q": "q", "k": "k", "v": "v"}


def detect_layout(keys) -> str:
    """The layout whose names ``keys`` are, or a :class:`WeightsError` showing some of them."""
    keys = set(keys)
    if any(k.endswith("embedding/kernel") for k in keys):
        return "npz"
    if "backbone.cls_token" in keys or any(k.startswith("backbone.layers.") for k in keys):
        return "mmpretrain"
    if "visual.conv1.weight" in keys or any(k.startswith("visual.trunk.") for k in keys):
        return "open_clip"
    if ("mask_token" in keys and "pos_embed" in keys) or "rope_embed.periods" in keys:
        return "dinov2"  # DINOv2's own checkpoints; DINOv3's (its RopePositionEmbedding's persistent periods)
    hf_markers = (
        "embeddings.cls_token", "embeddings.patch_embedding.weight", "embeddings.patch_embeddings.projection.weight",
        "embeddings.patch_embeddings.weight",
    )  # fmt: skip
    if any(k.removeprefix(p) in hf_markers for k in keys for p in ("vit.", "dinov2.", "vision_model.", "")):
        return "hf"
    if "patch_embed.proj.weight" in keys and ("pos_embed" in keys or any(k.startswith("blocks.") for k in keys)):
        return "timm"  # (rotary families may have no absolute position embedding)
    shown = ", ".join(sorted(keys)[:6])
    raise WeightsError(
        f"cannot tell the checkpoint layout from its keys ({shown}, …); pass layout= one of {', '.join(LAYOUTS)}"
    )


def _rename(tensors: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    """Rename by the first matching rule (an empty name drops the tensor); unmatched keys are kept
    (and reported as unexpected); q / k / v parts are fused into one qkv, rows in that order."""
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
                elif new:
                    out[new] = t
                break
        else:
            out[key] = t
    for target, qkv in parts.items():
        if target.endswith("bias") and set(qkv) == {"q", "v"}:  # no key bias (DINOv3, EVA): a zero one, as theirs
            qkv["k"] = torch.zeros_like(qkv["q"])
        if set(qkv) != {"q", "k", "v"}:
            raise WeightsError(f"incomplete query/key/value tensors for {target}: found only {sorted(qkv)}")
        out[target] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


def _reshape(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """The reshapes some layouts need after renaming: a (D,) class embedding and a (T, D) position
    embedding get their batch dims, open_clip's projection (D, E) becomes a Linear weight (E, D),
    SigLIP's packed attention-pool input projection splits into q and kv."""
    if "cls_token" in state and state["cls_token"].ndim == 1:
        state["cls_token"] = state["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in state and state["pos_embed"].ndim == 2:
        state["pos_embed"] = state["pos_embed"].unsqueeze(0)
    if layout == "open_clip" and "head.weight" in state:
        state["head.weight"] = state["head.weight"].T.contiguous()
    for part in ("weight", "bias"):
        packed = state.pop(f"attn_pool.in_proj.{part}", None)
        if packed is not None:
            d = packed.shape[0] // 3
            state[f"attn_pool.q.{part}"], state[f"attn_pool.kv.{part}"] = packed[:d], packed[d:]
    for key in [k for k in state if k.endswith(".mlp.fc1_g.weight")]:  # a gated MLP: its up projection is fc1_x
        for part in ("weight", "bias"):
            if (up := state.pop(key.replace("fc1_g.weight", f"fc1.{part}"), None)) is not None:
                state[key.replace("fc1_g.weight", f"fc1_x.{part}")] = up
    return state


_EVA = [  # timm's Eva names that differ from its VisionTransformer's (the first match wins)
    (r"blocks\.(\d+)\.gamma_(1|2)", r"blocks.\1.ls\2.gamma"),
    (r"blocks\.(\d+)\.attn\.(q|v)_bias", r"blocks.\1.attn.qkv.bias{\2}"),
    (r"blocks\.(\d+)\.attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.qkv.\3{\2}"),
]


def _from_eva(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's Eva names → its VisionTransformer's (a no-op for those): LayerScale ``gamma_1`` /
    ``gamma_2``, the q / v biases (k's is a fixed 0) or separate q / k / v projections fused into one
    ``qkv``, and a packed SwiGLU (``GluMlp``: ``fc1`` rows gate then value, twice ``fc2``'s width)
    split into ``fc1_g`` / ``fc1_x``."""
    if not any(re.fullmatch(p, k) for k in tensors for p, _ in _EVA) and "blocks.0.mlp.fc1.weight" not in tensors:
        return dict(tensors)
    state = _rename(tensors, _EVA)
    i = 0
    while (fc1 := state.get(f"blocks.{i}.mlp.fc1.weight")) is not None:
        fc2 = state.get(f"blocks.{i}.mlp.fc2.weight")
        if fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]:  # GluMlp(gate_last=False): act(x1) * x2
            for part in ("weight", "bias"):
                if (t := state.pop(f"blocks.{i}.mlp.fc1.{part}", None)) is not None:
                    state[f"blocks.{i}.mlp.fc1_g.{part}"], state[f"blocks.{i}.mlp.fc1_x.{part}"] = t.chunk(2, dim=0)
        i += 1
    return state


def _mask_key_bias(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv3's ``LinearKMaskedBias``: its qkv layer adds ``bias * bias_mask`` (the mask zeroes the
    key third), so that product is the bias; the mask goes (architecture.py refuses one that is not
    finite, as a model saved before ``init_weights`` has)."""
    out = dict(tensors)
    for key in [k for k in tensors if k.endswith(".attn.qkv.bias_mask")]:
        mask, bias = out.pop(key), key.removesuffix("_mask")
        if bias in out:
            out[bias] = out[bias] * mask.to(out[bias].dtype)
    return out


def fold_register_positions(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """DINOv2's register models (its own code, and transformers') add the position embedding to the
    class token and the patches, then insert the registers, which get none. In timm's terms
    (``no_embed_class``): the class slot's position goes into the class token, the embedding keeps
    the grid only — the same sums, in the same order."""
    state["cls_token"] = state["cls_token"] + state["pos_embed"][:, :1]
    state["pos_embed"] = state["pos_embed"][:, 1:]
    return state


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


def _from_open_clip_trunk(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """open_clip's ``TimmModel`` image tower: the timm model under ``visual.trunk.`` (its head, when
    it has one, is the projection), or a bias-free ``visual.head.proj`` after it; the rest dropped."""
    trunk = {k.removeprefix("visual.trunk."): v for k, v in tensors.items() if k.startswith("visual.trunk.")}
    head = {k.removeprefix("visual.head.proj."): v for k, v in tensors.items() if k.startswith("visual.head.proj.")}
    others = sorted(k for k in tensors if k.startswith("visual.head.") and not k.startswith("visual.head.proj."))
    if others or (head and "head.weight" in trunk):
        raise WeightsError(f"open_clip timm tower: an MLP or second projection head is not supported ({others[:3]})")
    trunk |= {f"head.{part}": t for part, t in head.items()}
    return _from_eva(trunk)


def to_timm(tensors: dict[str, torch.Tensor], layout: str) -> tuple[dict[str, torch.Tensor], int | None]:
    """Rename a state dict of ``layout`` to timm's names; also the head count where it shows."""
    if layout == "timm":
        return _from_eva(tensors), None
    if layout == "npz":
        return _from_npz(tensors)
    if layout not in _RENAMES:
        raise WeightsError(f"unknown layout {layout!r}; choose one of auto, {', '.join(LAYOUTS)}")
    if layout == "open_clip" and any(k.startswith("visual.trunk.") for k in tensors):
        return _from_open_clip_trunk(tensors), None
    if layout == "dinov2":
        tensors = _mask_key_bias(tensors)
    state = _reshape(_rename(tensors, _RENAMES[layout]), layout)
    if "reg_token" in state and state["reg_token"].shape[1] == 0:  # transformers' DINOv3 keeps a (1, 0, D) one
        del state["reg_token"]
    if "reg_token" in state and "pos_embed" in state and layout in ("hf", "dinov2"):
        state = fold_register_positions(state)
    return state, None
