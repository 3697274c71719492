"""Generate src/tinyvit/weights/timm_archs.json: what timm's registry says about each of its
``VisionTransformer`` and ``Eva`` architectures that the tensors of a checkpoint cannot show.

A timm Hub folder's ``config.json`` names the architecture (``"architecture":
"vit_base_patch16_224"``) but not, for the registered ones, the arguments timm builds it with:
the number of attention heads, the activation, the pooling. This script asks timm itself: every
registered model whose class is ``VisionTransformer`` is built on the meta device (no weights) and
its modules are read. Each entry holds ViTConfig fields (heads, activation, pooling; for the Eva
class — DINOv3, EVA02, PE, RoPE-ViT — its norm eps, rotary embedding and attention pool too); an Eva
architecture with an option tinyvit's ViT does not have is listed under ``refused`` with the reason.
Run in the reference venv (see scripts/make_family_fixtures.py):

    .refs/bin/python scripts/make_timm_archs.py
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import timm
import torch
from timm.layers import QuickGELU
from timm.layers.pos_embed_sincos import RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed
from timm.models.eva import Eva, EvaBlock
from timm.models.vision_transformer import VisionTransformer

OUT = Path(__file__).resolve().parents[1] / "src" / "tinyvit" / "weights" / "timm_archs.json"


def _act(model: VisionTransformer) -> str:
    """tinyvit's name of the MLP's activation (ViTConfig.act_layer), or timm's class name of one
    tinyvit's ViT does not have (AIMv2's SwiGLU: SiLU)."""
    act = model.blocks[0].mlp.act
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, torch.nn.GELU):
        return "gelu_tanh" if act.approximate == "tanh" else "gelu"
    return {"GELUTanh": "gelu_tanh"}.get(type(act).__name__, type(act).__name__)


def _eva_refusal(model: Eva) -> str | None:
    """Why tinyvit's ViT cannot run this Eva architecture, or None."""
    block, rope = model.blocks[0], model.rope
    attn = block.attn
    if not isinstance(block, EvaBlock):
        return "post-norm blocks"
    dinov3_rope = isinstance(rope, RotaryEmbeddingDinoV3)
    checks = [
        (not isinstance(attn.q_norm, torch.nn.Identity), "query / key norms (qk_norm)"),
        (getattr(attn, "gate", None) is not None, "gated attention"),
        (getattr(attn, "num_kv_groups", 1) != 1, "grouped-query attention"),
        (attn.head_dim * attn.num_heads != model.embed_dim, "a head width other than embed_dim / num_heads"),
        ((block.gamma_1 is None) != (block.gamma_2 is None), "LayerScale on the attention branch only"),
        (rope is not None and not isinstance(rope, (RotaryEmbeddingCat, RotaryEmbeddingDinoV3, RotaryEmbeddingMixed)),
         f"rotary embedding {type(rope).__name__}"),
        (isinstance(rope, RotaryEmbeddingCat) and getattr(rope, "grid_type", "index") != "index", "pixel-grid RoPE"),
        (dinov3_rope and (rope.min_period is not None or rope.normalize_coords != "separate"),
         "DINOv3 RoPE with min/max periods or shared normalisation"),
        (model.global_pool not in ("token", "avg", "map"), f"global_pool {model.global_pool!r}"),
        (model.attn_pool is not None and model.attn_pool.mlp.fc1.out_features != block.mlp.fc2.in_features,
         "an attention pool MLP of another width than the blocks'"),
        (type(block.norm1).__name__ != "LayerNorm", f"norm {type(block.norm1).__name__}"),
    ]  # fmt: skip
    return next((why for failed, why in checks if failed), None)


def _eva_entry(model: Eva) -> dict:
    """The ViTConfig fields an Eva architecture is built with, beyond its tensors."""
    rope = model.rope
    out = {"num_heads": model.blocks[0].attn.num_heads, "act_layer": "gelu", "global_pool": model.global_pool,
           "layer_norm_eps": model.blocks[0].norm1.eps}  # fmt: skip
    if model.attn_pool is not None:
        out |= {"attn_pool_num_heads": model.attn_pool.num_heads, "pool_include_prefix": True}
    if rope is None:
        return out
    kind = {RotaryEmbeddingCat: "cat", RotaryEmbeddingDinoV3: "dinov3", RotaryEmbeddingMixed: "mixed"}[type(rope)]
    out |= {"use_rot_pos_emb": True, "rope_type": kind, "rope_temperature": float(rope.temperature),
            "rope_grid_indexing": rope.grid_indexing}  # fmt: skip
    if kind != "mixed":
        out |= {"rope_grid_offset": float(rope.grid_offset), "rope_rotate_half": bool(rope.rotate_half)}
    ref = getattr(rope, "ref_feat_shape", None)
    if ref is not None:
        out["ref_feat_shape"] = int(ref[0]) if ref[0] == ref[1] else list(ref)
    return out


def _vit_entry(model: VisionTransformer) -> dict:
    """The ViTConfig fields a VisionTransformer architecture is built with, beyond its tensors (an
    RMSNorm's eps; a SwiGLU MLP has no activation to state)."""
    out = {"num_heads": model.blocks[0].attn.num_heads, "global_pool": model.global_pool}
    if not hasattr(model.blocks[0].mlp, "fc1_g"):
        out["act_layer"] = _act(model)
    if type(model.blocks[0].norm1).__name__ == "RmsNorm":
        out["layer_norm_eps"] = model.blocks[0].norm1.eps
    return out


def main() -> None:
    warnings.filterwarnings("ignore")
    archs, refused = {}, {}
    for name in timm.list_models():
        with torch.device("meta"):
            try:
                model = timm.create_model(name, pretrained=False)
            except Exception as e:  # noqa: BLE001 - a registered model that cannot be built here is skipped, reported
                print(f"skipped {name}: {type(e).__name__}: {e}")
                continue
        if type(model) is Eva:
            why = _eva_refusal(model)
            if why:
                refused[name] = why
            else:
                archs[name] = _eva_entry(model)
            continue
        block = model.blocks[0] if type(model) is VisionTransformer and len(model.blocks) else None
        if block is None or not hasattr(block, "attn") or not hasattr(block, "mlp"):
            continue  # not timm's plain VisionTransformer (parallel blocks, other classes)
        archs[name] = _vit_entry(model)
    source = json.dumps(f"timm {timm.__version__} registry (scripts/make_timm_archs.py)")
    rows = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(archs.items()))
    no = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in sorted(refused.items()))
    text = f'{{"source": {source},\n "architectures": {{\n{rows}\n}},\n "refused": {{\n{no}\n}}}}\n'
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}: {len(archs)} architectures, {len(refused)} refused")


if __name__ == "__main__":
    main()
