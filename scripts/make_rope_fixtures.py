"""Generate tests/fixtures/rope.{json,safetensors} (issue #26): the ViTs of 2025–26.

Reference outputs for the families timm builds with its ``Eva`` class (DINOv3, EVA02, Perception
Encoder, RoPE-ViT: rotary position embeddings, SwiGLU / sub-LN MLPs, q/v biases, LayerScale,
registers, attention pooling), AIMv2 (timm's ``VisionTransformer`` with RMSNorm and SwiGLU) and
transformers' ``DINOv3ViTModel``, and open_clip's PE-Core / EVA02-CLIP folders whose image tower
is a timm model (``visual.trunk.*``), computed by those libraries themselves.

As in scripts/make_family_fixtures.py (whose helpers this script uses): every model is small
(embed 64, depth 2, 4 heads; 32 px with patch 8 or 56 px with patch 14, a 4x4 grid; batch 2); its
weights are ``tests/refdata.py`` ``fill(name, shape)`` under the checkpoint's own on-disk names,
written the way its library writes them (``save_for_hf`` / ``save_pretrained``) and read back
through that library's own loading path; inputs are ``refdata.make_input``. The fixture stores
names, shapes, side files (verbatim) and outputs, at the trained size and two others (timm: the
model created with ``dynamic_img_size=True``, as its users must for other sizes). And the real photos of
tests/fixtures/photos through each case's home preprocessing, read from the folder as its users
read it (timm's ``create_transform(**resolve_model_data_config(model))``, transformers'
``DINOv3ViTImageProcessor.from_pretrained(folder)``, open_clip's ``image_transform_v2`` of the
model's ``preprocess_cfg``), into the model: their pixels (hashes) and the model's outputs.

    .refs/bin/python scripts/make_rope_fixtures.py

See tests/fixtures/ROPE.md for the fixture format.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import numpy as np  # noqa: E402
import torch  # noqa: E402
from make_family_fixtures import (  # noqa: E402
    BATCH,
    OTHER_P8,
    OTHER_P14,
    OUT,
    PHOTO_NAMES,
    Fixture,
    buffers_of,
    filled_state,
    inputs,
    key_table,
    make_input,
    open_rgb,
    safetensors_keys,
    to_pixels,
)
from safetensors.torch import save_file  # noqa: E402

SMALL = dict(embed_dim=64, depth=2, num_heads=4)
P8 = dict(img_size=32, patch_size=8)  # 4x4 grid
P14 = dict(img_size=56, patch_size=14)  # 4x4 grid

TIMM_CASES = {
    # name: (family, architecture, create_model overrides, what the case covers)
    "timm_dinov3": (
        "dinov3", "vit_small_patch16_dinov3", dict(**P8, **SMALL, num_classes=0),
        "DINOv3 rotary (centred, normalised coords, periods 100^(4i/Dh), rotate-half), 4 registers, no abs pos, "
        "LayerScale gamma_1/gamma_2, qkv without bias, LayerNorm 1e-5, avg pool with norm (timm's default)",
    ),
    "timm_dinov3_qkvb": (
        "dinov3", "vit_small_patch16_dinov3_qkvb", dict(**P8, **SMALL, num_classes=0, global_pool="token"),
        "q_bias / v_bias (k bias fixed 0), class-token pooling (upstream DINOv3's)",
    ),
    "timm_dinov3_splus": (
        "dinov3", "vit_small_plus_patch16_dinov3", dict(**P8, **SMALL, num_classes=0),
        "SwiGLU MLP (fc1_g, fc1_x, fc2; hidden aligned to 8)",
    ),
    "timm_eva02_mim": (
        "eva02", "eva02_tiny_patch14_224", dict(**P14, **SMALL, num_classes=0),
        "EVA02 rotary (index grid rescaled to ref_feat_shape 16x16, interleaved), abs pos embed with cls slot, "
        "packed SwiGLU (fc1 = [x, gate]), q_bias/v_bias, avg pool + fc_norm",
    ),
    "timm_eva02_cls": (
        "eva02", "eva02_base_patch14_448", dict(**P14, **SMALL, num_classes=10),
        "EVA02 classifier: q_proj/k_proj/v_proj (k without bias), SwiGLU with sub-LN (mlp.norm), head",
    ),
    "timm_eva02_clip": (
        "eva02", "eva02_base_patch16_clip_224", dict(**P8, **SMALL, num_classes=16),
        "EVA02-CLIP image tower: attention sub-LN (attn.norm), SwiGLU sub-LN, class-token pooling, projection",
    ),
    "timm_pe_core": (
        "pe", "vit_pe_core_small_patch16_384", dict(**P8, **SMALL, num_classes=16),
        "Perception Encoder: rotary (grid offset 1, xy, ref 24x24), norm_pre, fused qkv bias, attention pool "
        "(8 heads) after the final norm, projection head",
    ),
    "timm_rope_axial": (
        "rope_vit", "vit_small_patch16_rope_224", dict(**P8, **SMALL, num_classes=10),
        "RoPE-ViT axial: temperature 100, xy, no abs pos, LayerScale, class token",
    ),
    "timm_rope_mixed_ape": (
        "rope_vit", "vit_small_patch16_rope_mixed_ape_224", dict(**P8, **SMALL, num_classes=10),
        "RoPE-ViT mixed: learned per-block, per-head frequencies rope.freqs, plus abs pos embed (no_embed_class)",
    ),
    "timm_aimv2": (
        "aimv2", "aimv2_large_patch14_224", dict(**P14, **SMALL, num_classes=0),
        "AIMv2: RMSNorm (blocks, final, patch_embed.norm), SwiGLU, no qkv / proj bias, no class token, avg pool",
    ),
}  # fmt: skip


def _facts(net: torch.nn.Module) -> dict:
    rope = getattr(net, "rope", None)
    facts = {"num_prefix_tokens": net.num_prefix_tokens, "global_pool": net.global_pool,
             "norm_layer": type(net.blocks[0].norm1).__name__, "norm_eps": net.blocks[0].norm1.eps,
             "mlp": type(net.blocks[0].mlp).__name__, "rope": type(rope).__name__ if rope is not None else None}
    if rope is not None:
        facts["rope_attrs"] = {k: v for k, v in vars(rope).items() if isinstance(v, (int, float, str, list, tuple))
                               and not k.startswith("_")}  # fmt: skip
    return facts


def photo_case(fx: Fixture, name: str, transform, mean, std, run, how: str, call: str) -> dict:
    """The photos through ``transform`` (stacked, PHOTO_NAMES order) and ``run``: the output stored
    as ``{name}/photos``; each photo's pixels as a hash — of the 8-bit pixels whose normalization
    gives the tensor back (exactly, to 1e-6), else of the float32 tensor itself."""
    tensors, pixels = [], {}
    for photo in PHOTO_NAMES:
        x = transform(open_rgb(photo))
        tensors.append(x)
        arr, err = to_pixels(x, mean, std)
        arr = arr if err <= 1e-6 else x.numpy().astype("<f4")
        pixels[photo] = {"dtype": str(arr.dtype), "shape": list(arr.shape),
                         "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}  # fmt: skip
    y = run(torch.stack(tensors)).detach().float().contiguous().clone()
    fx.tensors[f"{name}/photos"] = y
    print(f"  {name}/photos: pixels {tuple(tensors[0].shape)} {pixels[PHOTO_NAMES[0]]['dtype']} -> {tuple(y.shape)}")
    return {"how": how, "call": call, "pixels": pixels, "output": {"safetensors_key": f"{name}/photos",
                                                                    "shape": list(y.shape)}}  # fmt: skip


def timm_case(fx: Fixture, name: str, family: str, arch: str, kwargs: dict, covers: str) -> None:
    import timm
    from timm.models import save_for_hf

    model = timm.create_model(arch, pretrained=False, **kwargs).eval()
    state = model.state_dict()
    keys = key_table(state)
    filled = filled_state(keys, state)
    model.load_state_dict(filled, strict=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        save_for_hf(model, str(folder), safe_serialization=True)
        assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
        config_text = (folder / "config.json").read_text()
        disk_keys, meta = safetensors_keys(folder / "model.safetensors")
        assert disk_keys == keys, name
        loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
        dynamic = timm.create_model(f"local-dir:{folder}", pretrained=True, dynamic_img_size=True).eval()
    for m in (loaded, dynamic):
        for k, v in m.state_dict().items():
            assert torch.equal(v, filled[k]), (name, k)
    img = kwargs["img_size"]
    other = OTHER_P14 if kwargs["patch_size"] == 14 else OTHER_P8
    ins = inputs(name, [(BATCH, 3, img, img)] + [(BATCH, 3, h, w) for h, w in other])
    x = make_input(ins[0])
    feats = loaded.forward_features(x)
    outputs = {}
    if loaded.num_classes:
        outputs["logits"] = (0, "model(x)", loaded(x))
    outputs["pre_logits"] = (0, "model.forward_head(model.forward_features(x), pre_logits=True)",
                             loaded.forward_head(feats, pre_logits=True))  # fmt: skip
    outputs["features"] = (0, "model.forward_features(x)", feats)
    assert torch.allclose(dynamic(x), loaded(x), rtol=0, atol=1e-6), name
    head = "logits" if loaded.num_classes else "pre_logits"
    for i in range(1, len(ins)):
        xi = make_input(ins[i])
        feats_i = dynamic.forward_features(xi)
        outputs[f"{head}@{i}"] = (i, "model_dynamic(x)", dynamic.forward_head(feats_i))
        outputs[f"features@{i}"] = (i, "model_dynamic.forward_features(x)", feats_i)
    case = {
        "family": family, "layout": "timm", "library": "timm", "covers": covers, "architecture": arch,
        "create_model_kwargs": {"pretrained": False, **kwargs},
        "saved_with": "timm.models.save_for_hf(model, folder, safe_serialization=True)",
        "loaded_with": "timm.create_model('local-dir:' + folder, pretrained=True)",
        "loaded_with_other_sizes": "timm.create_model('local-dir:' + folder, pretrained=True, dynamic_img_size=True)",
        "files": {"config.json": config_text}, "weights_files": ["model.safetensors"],
        "safetensors_metadata": meta, "keys": keys, "buffers": buffers_of(loaded), "facts": _facts(loaded),
        "inputs": ins,
    }  # fmt: skip
    from timm.data import create_transform, resolve_model_data_config

    cfg = resolve_model_data_config(loaded)
    case["photos"] = photo_case(fx, name, create_transform(**cfg), cfg["mean"], cfg["std"], dynamic,
                                "timm.data.create_transform(**timm.data.resolve_model_data_config(model))",
                                "model_dynamic(x)")  # fmt: skip
    fx.add(name, case, outputs)


HF_DINOV3 = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, image_size=32,
                 patch_size=8, num_register_tokens=4, layerscale_value=1e-5)  # fmt: skip
HF_CASES = {
    "hf_dinov3": (dict(HF_DINOV3), "DINOv3ViTModel: q/v bias (no k bias), LayerScale lambda1, 4 registers, GELU MLP"),
    "hf_dinov3_gated": (dict(HF_DINOV3, use_gated_mlp=True, hidden_act="silu", intermediate_size=176),
                        "DINOv3ViTModel with the gated MLP (gate_proj, up_proj, down_proj): the S+ / H+ layout"),
}  # fmt: skip


def hf_case(fx: Fixture, name: str, config_kwargs: dict, covers: str) -> None:
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel

    model = DINOv3ViTModel(DINOv3ViTConfig(**config_kwargs)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / name
        model.save_pretrained(folder)
        keys, meta = safetensors_keys(folder / "model.safetensors")
        filled = filled_state(keys)
        save_file(filled, str(folder / "model.safetensors"), metadata=meta)
        DINOv3ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
        files = {p.name: p.read_text() for p in sorted(folder.iterdir()) if p.suffix == ".json"}
        loaded = DINOv3ViTModel.from_pretrained(folder).eval()
        processor = DINOv3ViTImageProcessor.from_pretrained(folder)
    ins = inputs(name, [(BATCH, 3, 32, 32)] + [(BATCH, 3, h, w) for h, w in OTHER_P8])
    out = loaded(pixel_values=make_input(ins[0]))
    outputs = {"pooler_output": (0, "model(pixel_values=x).pooler_output", out.pooler_output),
               "last_hidden_state": (0, "model(pixel_values=x).last_hidden_state", out.last_hidden_state)}
    for i in range(1, len(ins)):
        o = loaded(pixel_values=make_input(ins[i]))
        outputs[f"pooler_output@{i}"] = (i, "model(pixel_values=x).pooler_output", o.pooler_output)
        outputs[f"last_hidden_state@{i}"] = (i, "model(pixel_values=x).last_hidden_state", o.last_hidden_state)
    case = {
        "family": "dinov3", "layout": "hf", "library": "transformers", "covers": covers,
        "config_kwargs": config_kwargs, "saved_with": "model.save_pretrained(folder) (weights refilled by refdata); "
        "DINOv3ViTImageProcessor(size=32x32).save_pretrained(folder)",
        "loaded_with": "DINOv3ViTModel.from_pretrained(folder)", "files": files,
        "weights_files": ["model.safetensors"], "safetensors_metadata": meta, "keys": keys, "inputs": ins,
    }  # fmt: skip
    case["photos"] = photo_case(
        fx, name, lambda img: processor(images=img, return_tensors="pt")["pixel_values"][0], processor.image_mean,
        processor.image_std, lambda x: loaded(pixel_values=x).pooler_output,
        "DINOv3ViTImageProcessor.from_pretrained(folder)(images=img, return_tensors='pt')",
        "model(pixel_values=x).pooler_output",
    )  # fmt: skip
    full = DINOv3ViTImageProcessor()  # the real checkpoints' 224 x 224: every photo's pixels, hashed
    case["photos"]["full_pixels_sha256"] = {
        photo: hashlib.sha256(full(images=open_rgb(photo), return_tensors="pt")["pixel_values"][0].numpy()
                              .astype("<f4").tobytes()).hexdigest()
        for photo in PHOTO_NAMES
    }  # fmt: skip
    case["photos"]["full_processor"] = full.to_dict()
    fx.add(name, case, outputs)


OC_TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
OC_TRUNK = dict(embed_dim=96, depth=2, img_size=32, patch_size=8)  # the registered heads kept (PE-S 6, EVA02-B 12)
OC_CASES = {
    # name: (family, open_clip config it is made from, what the case covers)
    "oc_pe_core": ("pe", "PE-Core-S-16-384", "open_clip PE-Core: timm trunk vit_pe_core_small_patch16_384 "
                   "(visual.trunk.*), timm_pool map, the trunk's head as the projection"),
    "oc_eva02_clip": ("eva02", "EVA02-B-16", "open_clip EVA02-CLIP: timm trunk eva02_base_patch16_clip_224, token "
                      "pool, the trunk's head as the projection"),
}  # fmt: skip


@contextlib.contextmanager
def small_timm_trunks():
    """open_clip builds its timm trunk by architecture name at full size; here at OC_TRUNK's."""
    import open_clip.timm_model as tm

    create = tm.timm.create_model
    tm.timm.create_model = lambda name, **kw: create(name, **{**kw, **OC_TRUNK})
    try:
        yield
    finally:
        tm.timm.create_model = create


def oc_case(fx: Fixture, name: str, family: str, config_name: str, covers: str) -> None:
    import open_clip
    from make_family_fixtures import _NoTokenizer
    from open_clip.push_to_hf_hub import save_for_hf

    model_cfg = json.loads((Path(open_clip.__file__).parent / "model_configs" / f"{config_name}.json").read_text())
    model_cfg["vision_cfg"]["image_size"] = OC_TRUNK["img_size"]
    model_cfg["text_cfg"] = dict(OC_TEXT)
    preprocess_cfg = dict(mean=[0.5] * 3, std=[0.5] * 3, interpolation="bicubic", resize_mode="squash")
    with tempfile.TemporaryDirectory() as tmp, small_timm_trunks():
        boot = Path(tmp) / "boot"
        boot.mkdir()
        boot_cfg = {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg}
        (boot / "open_clip_config.json").write_text(json.dumps(boot_cfg))
        model = open_clip.create_model(f"local-dir:{boot}").eval()
        state = model.state_dict()
        keys = key_table(state)
        filled = filled_state(keys, state)
        model.load_state_dict(filled, strict=True)
        folder = Path(tmp) / name
        save_for_hf(model, _NoTokenizer(), model_cfg, str(folder), safe_serialization=True)
        config_text = (folder / "open_clip_config.json").read_text()
        disk_keys, meta = safetensors_keys(folder / "open_clip_model.safetensors")
        assert disk_keys == keys, name
        loaded = open_clip.create_model(f"local-dir:{folder}").eval()
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, filled[k]), (name, k)
    ins = inputs(name, [(BATCH, 3, 32, 32)])
    x = make_input(ins[0])
    trunk = loaded.visual.trunk
    outputs = {"encode_image": (0, "model.encode_image(x, normalize=False)", loaded.encode_image(x, normalize=False)),
               "features": (0, "model.visual.trunk.forward_features(x)", trunk.forward_features(x))}  # fmt: skip
    case = {
        "family": family, "layout": "open_clip", "library": "open_clip", "covers": covers,
        "open_clip_config": config_name, "model_cfg": model_cfg, "trunk_kwargs": OC_TRUNK,
        "saved_with": "open_clip.push_to_hf_hub.save_for_hf(model, tokenizer, model_cfg, folder, "
        "safe_serialization=True) (tokenizer stubbed: its files are not written)",
        "loaded_with": "open_clip.create_model('local-dir:' + folder)  # other sizes: open_clip's trunk refuses them",
        "files": {"open_clip_config.json": config_text}, "weights_files": ["open_clip_model.safetensors"],
        "safetensors_metadata": meta, "keys": keys, "facts": _facts(trunk), "inputs": ins,
    }  # fmt: skip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    pcfg = PreprocessCfg(**loaded.visual.preprocess_cfg)
    case["photos"] = photo_case(
        fx, name, image_transform_v2(pcfg, is_train=False), pcfg.mean, pcfg.std,
        lambda x: loaded.encode_image(x, normalize=False),
        "open_clip.transform.image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)",
        "model.encode_image(x, normalize=False)",
    )  # fmt: skip
    fx.add(name, case, outputs)


def main() -> None:
    import open_clip
    import timm
    import transformers

    fx = Fixture()
    for name, args in TIMM_CASES.items():
        timm_case(fx, name, *args)
    for name, args in HF_CASES.items():
        hf_case(fx, name, *args)
    for name, args in OC_CASES.items():
        oc_case(fx, name, *args)
    fixture = {
        "generated_by": "scripts/make_rope_fixtures.py",
        "versions": {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
                     "open_clip": open_clip.__version__},  # fmt: skip
        "small": {**SMALL, "p8": P8, "p14": P14, "batch": BATCH, "other_sizes_p8": OTHER_P8,
                  "other_sizes_p14": OTHER_P14},  # fmt: skip
        "cases": fx.cases,
    }
    (OUT / "rope.json").write_text(json.dumps(fixture, indent=1) + "\n")
    save_file(fx.tensors, str(OUT / "rope.safetensors"), metadata={"generated_by": "scripts/make_rope_fixtures.py"})
    for f in ("rope.json", "rope.safetensors"):
        os.chmod(OUT / f, 0o644)
        print(f"wrote {OUT / f}: {(OUT / f).stat().st_size} bytes")


if __name__ == "__main__":
    main()
