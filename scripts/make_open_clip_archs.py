"""Generate src/tinyvit/weights/open_clip_archs.json: open_clip's model configs of its ViTs, by name.

open_clip saves a model as ``torch.save(model.state_dict())`` or, while training, as
``epoch_N.pt`` (``{"epoch", "name", "state_dict": {"module.…"}, …}``), with no config beside it: its
users name the model instead (``create_model_and_transforms("ViT-B-32", pretrained="epoch_32.pt")``).
tinyvit takes the same name (``tinyvit.load(path, arch="ViT-B-32")``, ``--arch ViT-B-32``), and needs
what open_clip's config of that name says (the activation, the head width, the image size, the
preprocessing). This script copies every config whose image tower is a ViT — open_clip's own
VisionTransformer, or a timm ViT / Eva (``timm_model_name``: SigLIP, PE-Core, EVA02-CLIP; not
FastViT, ViTamin, ConvNeXt or a ResNet) —, as open_clip's registry holds it; what tinyvit cannot
run of them is refused when loading, naming it. Run in the reference venv (see
scripts/make_family_fixtures.py):

    .refs/bin/python scripts/make_open_clip_archs.py
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
from open_clip.factory import _MODEL_CONFIGS

OUT = Path(__file__).resolve().parents[1] / "src" / "tinyvit" / "weights" / "open_clip_archs.json"


def is_vit(cfg: dict) -> bool:
    vision = cfg.get("vision_cfg") or {}
    if vision.get("timm_model_name"):
        return str(vision["timm_model_name"]).startswith(("vit_", "eva"))
    return isinstance(vision.get("layers"), int) and "width" in vision


def main() -> None:
    configs = {}
    for name in sorted(open_clip.list_models()):
        cfg = json.loads(json.dumps(_MODEL_CONFIGS[name]))  # a copy, plain JSON
        if not is_vit(cfg):
            continue
        preprocess = cfg.pop("preprocess_cfg", None)  # open_clip_config.json keeps it beside model_cfg
        configs[name] = {"model_cfg": cfg, **({"preprocess_cfg": preprocess} if preprocess else {})}
    doc = {"source": f"open_clip {open_clip.__version__} model_configs (scripts/make_open_clip_archs.py)",
           "configs": configs}  # fmt: skip
    OUT.write_text(json.dumps(doc, indent=None, separators=(",", ":"), sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(configs)} of {len(open_clip.list_models())} configs")


if __name__ == "__main__":
    main()
