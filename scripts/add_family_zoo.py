"""Write the ViT families' zoo entries into weights_manifest.json (maintainers; offline).

Every value comes from a reference, not from memory: architectures, parameter counts, GMACs,
preprocessing (timm's data config) and Hub repositories from ``zoo_facts`` in
tests/fixtures/families.json (made with timm 1.0.31 by scripts/make_family_fixtures.py); ImageNet
accuracy, where timm publishes one, from timm's results/results-imagenet.csv (ACC below, copied
from huggingface/pytorch-image-models at aa4b5850, 2026-08-08). Revisions and SHA-256 stay null
until scripts/pin_manifest.py pins them where the Hub can be reached. Re-running it rewrites the
same entries.

    python scripts/add_family_zoo.py
"""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from pin_manifest import dump_manifest  # noqa: E402

fx = json.load(open(f"{ROOT}/tests/fixtures/families.json"))["zoo_facts"]
man = json.load(open(f"{ROOT}/weights_manifest.json"))
TIMM_CSV = "timm results-imagenet.csv"
# timm results-imagenet.csv (huggingface/pytorch-image-models@aa4b5850, 2026-08-08): top1, top5
ACC = {
    "deit_base_distilled_patch16_224.fb_in1k": (83.384, 96.492),
    "deit_small_distilled_patch16_224.fb_in1k": (81.204, 95.378),
    "deit3_base_patch16_224.fb_in22k_ft_in1k": (85.728, 97.746),
    "deit3_base_patch16_224.fb_in1k": (83.8, 96.584),
    "deit3_small_patch16_224.fb_in22k_ft_in1k": (83.082, 96.774),
    "deit3_small_patch16_224.fb_in1k": (81.382, 95.454),
}


def arch_of(facts, overrides=None):
    a = facts["architecture"]
    act = {"GELU": "gelu", "QuickGELU": "quick_gelu"}[a["act_layer"]]
    d = {
        "image_size": a["img_size"][0], "patch_size": a["patch_size"][0], "embed_dim": a["embed_dim"],
        "depth": a["depth"], "num_heads": a["num_heads"], "mlp_ratio": a["mlp_ratio"], "num_classes": a["num_classes"],
        "in_chans": 3, "layer_norm_eps": a["norm_eps"],
    }
    extra = {
        "class_token": a["class_token"], "reg_tokens": a["reg_tokens"], "dist_token": a["dist_token"],
        "no_embed_class": a["no_embed_class"], "init_values": 1.0 if a["init_values_layerscale"] else None,
        "pre_norm": a["pre_norm"], "act_layer": act, "global_pool": a["global_pool"] or "token",
        "fc_norm": a["fc_norm"], "head_bias": "bias=True" in a["head"] or a["num_classes"] == 0,
        "qkv_bias": a["qkv_bias"],
    }
    defaults = {"class_token": True, "reg_tokens": 0, "dist_token": False, "no_embed_class": False, "init_values": None,
                "pre_norm": False, "act_layer": "gelu", "global_pool": "token", "fc_norm": False, "head_bias": True,
                "qkv_bias": True}
    d |= {k: v for k, v in extra.items() if v != defaults[k]}
    return d | (overrides or {})


def preprocess_of(facts):
    p = facts["pretrained_cfg"]
    size = p["input_size"][1]
    return {"resize": math.floor(size / p["crop_pct"]), "crop": size, "interpolation": p["interpolation"],
            "mean": [255 * m for m in p["mean"]], "std": [255 * s for s in p["std"]]}


def source(timm_name, tag_name, note=None):
    f = fx[timm_name]
    top1, top5 = ACC.get(f["pretrained_cfg"]["hf_hub_id"].removeprefix("timm/"), (None, None))
    s = {
        "tag": tag_name, "kind": "hub", "repo_id": f["pretrained_cfg"]["hf_hub_id"], "filename": "model.safetensors",
        "revision": None, "sha256": None, "layout": "timm", "preprocess": preprocess_of(f), "top1": top1,
        "top5": top5, "metrics_source": TIMM_CSV if top1 is not None else None,
        "license": f["pretrained_cfg"]["license"].capitalize(),
    }  # fmt: skip
    if note:
        s["note"] = note
    return s


def model(name, description, timm_names, aliases, labels, output, notes):
    first = fx[timm_names[0][0]]
    return name, {
        "description": description,
        "aliases": aliases,
        "arch": arch_of(first),
        "params": first["param_count"],
        "gmacs": round(first["gmacs"], 2),
        "gmacs_source": "timm 1.0.31, multiply-accumulates of matmuls and convolutions (make_family_fixtures.py)",
        "labels": labels,
        "output": output,
        "license": "Apache-2.0",
        "sources": [source(t, tag, (notes or {}).get(tag)) for t, tag in timm_names],
    }


QUICKGELU = (
    "QuickGELU, the activation the weights were trained with (timm's {} uses GELU; its notes say to use the "
    "quickgelu variant for the original results)"
)
# name, description, [(timm name in zoo_facts, tag)], aliases (name -> tag), labels, output, notes per tag
FAMILIES = [
    ("deit-base-distilled-p16-224",
     "DeiT-B/16 distilled (a distillation token and its head; the output is the mean of both heads), ImageNet-1k",
     [("deit_base_distilled_patch16_224.fb_in1k", "fb_in1k")],
     {"deit_base_distilled_patch16_224": "fb_in1k", "deit_base_distilled_patch16_224.fb_in1k": "fb_in1k"},
     "imagenet-1k", "classes", None),
    ("deit-small-distilled-p16-224", "DeiT-S/16 distilled, ImageNet-1k",
     [("deit_small_distilled_patch16_224", "fb_in1k")],
     {"deit_small_distilled_patch16_224": "fb_in1k", "deit_small_distilled_patch16_224.fb_in1k": "fb_in1k"},
     "imagenet-1k", "classes", None),
    ("deit3-base-p16-224", "DeiT III B/16 (LayerScale, position embedding without the class slot)",
     [("deit3_base_patch16_224.fb_in22k_ft_in1k", "fb_in22k_ft_in1k")],
     {"deit3_base_patch16_224.fb_in22k_ft_in1k": "fb_in22k_ft_in1k"}, "imagenet-1k", "classes", None),
    ("deit3-small-p16-224", "DeiT III S/16, ImageNet-1k", [("deit3_small_patch16_224", "fb_in1k")],
     {"deit3_small_patch16_224": "fb_in1k", "deit3_small_patch16_224.fb_in1k": "fb_in1k"},
     "imagenet-1k", "classes", None),
]
for size, width, hub in (("small", "S", "s"), ("base", "B", "b"), ("large", "L", "l")):
    timm = f"vit_{size}_patch14_dinov2"
    FAMILIES.append((f"dinov2-{size}", f"DINOv2 ViT-{width}/14 at 518 px: image embeddings (self-supervised, LVD-142M)",
                     [(f"{timm}.lvd142m", "lvd142m")],
                     {timm: "lvd142m", f"{timm}.lvd142m": "lvd142m", f"dinov2_vit{hub}14": "lvd142m"},
                     None, "embedding", None))  # fmt: skip
for size, width, hub in (("small", "S", "s"), ("base", "B", "b")):
    timm = f"vit_{size}_patch14_reg4_dinov2"
    FAMILIES.append((f"dinov2-{size}-reg4", f"DINOv2 ViT-{width}/14 with 4 registers at 518 px: image embeddings",
                     [(f"{timm}.lvd142m", "lvd142m")],
                     {timm: "lvd142m", f"{timm}.lvd142m": "lvd142m", f"dinov2_vit{hub}14_reg": "lvd142m"},
                     None, "embedding", None))  # fmt: skip
for patch in (16, 32):
    timm = f"vit_base_patch{patch}_clip_224.openai"
    FAMILIES.append((f"clip-vit-base-p{patch}",
                     f"OpenAI CLIP ViT-B/{patch} image tower: 512-d image embeddings (QuickGELU, as trained)",
                     [(f"vit_base_patch{patch}_clip_quickgelu_224.openai", "openai")],
                     {f"vit_base_patch{patch}_clip_quickgelu_224.openai": "openai", timm: "openai"},
                     None, "embedding", {"openai": QUICKGELU.format(timm)}))  # fmt: skip
FAMILIES += [
    ("siglip-base-p16-224", "SigLIP B/16 image tower (attention-pooling head, no class token): image embeddings",
     [("vit_base_patch16_siglip_224.webli", "webli")], {"vit_base_patch16_siglip_224.webli": "webli"},
     None, "embedding", None),
    ("siglip-gap-base-p16-224", "SigLIP B/16 image tower with average pooling: image embeddings",
     [("vit_base_patch16_siglip_gap_224.webli", "webli")], {"vit_base_patch16_siglip_gap_224.webli": "webli"},
     None, "embedding", None),
]
entries = [model(*family) for family in FAMILIES]
for name, m in entries:
    man["models"][name] = m
open(f"{ROOT}/weights_manifest.json", "w").write(dump_manifest(man))
print("models:", list(man["models"]))
