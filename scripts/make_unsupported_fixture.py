"""Generate tests/fixtures/unsupported.json: how checkpoints of ViT families that tinyvit refuses
look on disk (rotary position embeddings: DINOv3, EVA02, Perception Encoder), as their libraries
save them — key names and shapes, and the config file beside them — so that a test can check the
refusal names the keys that show it. Run in the reference environment (see
scripts/make_family_fixtures.py):

    .refs/bin/python scripts/make_unsupported_fixture.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import timm
import torch
import transformers

OUT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "unsupported.json"
SMALL = dict(embed_dim=64, depth=2, num_heads=4, num_classes=0)


def timm_case(name: str, **overrides) -> dict:
    model = timm.create_model(name, pretrained=False, **{**SMALL, **overrides}).eval()
    with tempfile.TemporaryDirectory() as tmp:
        timm.models.save_for_hf(model, tmp, safe_serialization=True)
        config = json.loads((Path(tmp) / "config.json").read_text())
    keys = {k: list(v.shape) for k, v in model.state_dict().items()}
    return {"library": f"timm {timm.__version__}", "architecture": name, "config.json": config, "keys": keys}


def hf_dinov3_case() -> dict | None:
    if not hasattr(transformers, "DINOv3ViTConfig"):
        return None
    config = transformers.DINOv3ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                          intermediate_size=256, image_size=32, patch_size=8)  # fmt: skip
    model = transformers.DINOv3ViTModel(config)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        from safetensors import safe_open

        with safe_open(Path(tmp) / "model.safetensors", "pt") as f:
            keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
        config_json = json.loads((Path(tmp) / "config.json").read_text())
    return {"library": f"transformers {transformers.__version__}", "config.json": config_json, "keys": keys}


def main() -> None:
    torch.manual_seed(0)
    cases = {
        "timm_dinov3": timm_case("vit_base_patch16_dinov3", img_size=32),
        "timm_eva02": timm_case("eva02_tiny_patch14_224", img_size=28, patch_size=14),
        "timm_pe_core": timm_case("vit_pe_core_base_patch16_224", img_size=32),
    }
    hf = hf_dinov3_case()
    if hf is not None:
        cases["hf_dinov3"] = hf
    OUT.write_text(json.dumps({"generated_by": "scripts/make_unsupported_fixture.py", "cases": cases}, indent=1))
    for name, case in cases.items():
        print(name, case["library"], len(case["keys"]), "keys:", [k for k in case["keys"] if "blocks.1" not in k][:12])


if __name__ == "__main__":
    main()
