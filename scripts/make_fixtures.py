"""Generate tests/fixtures/ by running the reference libraries (timm, transformers, mmpretrain).

The expected values of tinyvit's parity tests come from here, never from tinyvit. Run it in a
separate environment that has the references (their torchvision needs another torch than the
project's test environment):

    python3 -m venv .refs && .refs/bin/pip install torch==2.14.1 torchvision==0.29.1
    .refs/bin/pip install timm transformers mmengine mmcv-lite mmpretrain safetensors
    .refs/bin/python scripts/make_fixtures.py

Weights, inputs and images are made by tests/refdata.py from names and shapes alone, so the
fixtures store only the reference libraries' parameter names and shapes, configs and outputs.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import refdata  # noqa: E402

OUT = ROOT / "tests" / "fixtures"
SMALL = dict(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, mlp_dim=256, num_classes=10)
MM_NAMES = {
    "vit-base-p32-384": "vit-base-p32_in21k-pre_3rdparty_in1k-384px",
    "vit-base-p16-224": "vit-base-p16_32xb128-mae_in1k",
    "vit-base-p16-384": "vit-base-p16_in21k-pre_3rdparty_in1k-384px",
    "vit-large-p16-384": "vit-large-p16_in21k-pre_3rdparty_in1k-384px",
}
TIMM_NAMES = {
    "vit-base-p32-384": "vit_base_patch32_384.augreg_in21k_ft_in1k",
    "vit-base-p16-224": "vit_base_patch16_224.augreg2_in21k_ft_in1k",
    "vit-base-p16-384": "vit_base_patch16_384.augreg_in21k_ft_in1k",
    "vit-large-p16-384": "vit_large_patch16_384.augreg_in21k_ft_in1k",
}

torch.set_grad_enabled(False)


def filled(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(refdata.fill(k, s)) for k, s in shapes.items()}


def shapes_of(state: dict[str, torch.Tensor]) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in state.items()}


def inputs(case: str, shapes: list[tuple]) -> list[dict]:
    return [{"name": f"{case}/{i}", "shape": list(s)} for i, s in enumerate(shapes)]


def make_input(spec: dict) -> torch.Tensor:
    return torch.from_numpy(refdata.make_input(spec["name"], spec["shape"]))


class Fixture:
    def __init__(self):
        self.cases: dict[str, dict] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, case: dict, outputs: dict[str, torch.Tensor]) -> None:
        case["outputs"] = sorted(outputs)
        self.cases[name] = case
        for k, v in outputs.items():
            self.tensors[f"{name}/{k}"] = v.detach().float().contiguous().clone()
        print(f"  {name}: {', '.join(f'{k} {tuple(v.shape)}' for k, v in outputs.items())}", flush=True)


# ---------------------------------------------------------------------------------------------
# Models


def timm_cases(fx: Fixture) -> None:
    import timm
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    s = SMALL
    small = VisionTransformer(
        img_size=s["image_size"], patch_size=s["patch_size"], embed_dim=s["embed_dim"], depth=s["depth"],
        num_heads=s["num_heads"], mlp_ratio=s["mlp_dim"] / s["embed_dim"], num_classes=s["num_classes"],
    ).eval()  # fmt: skip
    for name, model, shapes in [
        ("timm_small", small, [(2, 3, 32, 32)]),
        ("timm_b32_384", timm.create_model("vit_base_patch32_384", pretrained=False).eval(), [(2, 3, 384, 384)]),
    ]:
        keys = shapes_of(model.state_dict())
        model.load_state_dict(filled(keys), strict=True)
        ins = inputs(name, shapes)
        x = make_input(ins[0])
        feats = model.forward_features(x)
        outputs = {
            "0/logits": model(x),
            "0/features": feats[:1],  # first image's tokens (B, T, D) → (1, T, D)
            "0/pre_logits": model.forward_head(feats, pre_logits=True),
        }
        fx.add(name, {"layout": "timm", "keys": keys, "inputs": ins}, outputs)

    # Google's JAX .npz layout, read by timm's own loader (timm.models.vision_transformer._load_weights)
    npz_keys: dict[str, tuple] = {}
    d, h, m, c = s["embed_dim"], s["num_heads"], s["mlp_dim"], s["num_classes"]
    p = s["patch_size"]
    n_tokens = (s["image_size"] // p) ** 2 + 1
    npz_keys.update({
        "embedding/kernel": (p, p, 3, d), "embedding/bias": (d,), "cls": (1, 1, d),
        "Transformer/posembed_input/pos_embedding": (1, n_tokens, d),
        "Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,),
        "head/kernel": (d, c), "head/bias": (c,),
    })  # fmt: skip
    for i in range(s["depth"]):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            npz_keys[b + ln + "/scale"], npz_keys[b + ln + "/bias"] = (d,), (d,)
        for n in ("query", "key", "value"):
            npz_keys[a + n + "/kernel"], npz_keys[a + n + "/bias"] = (d, h, d // h), (h, d // h)
        npz_keys[a + "out/kernel"], npz_keys[a + "out/bias"] = (h, d // h, d), (d,)
        npz_keys[b + "MlpBlock_3/Dense_0/kernel"], npz_keys[b + "MlpBlock_3/Dense_0/bias"] = (d, m), (m,)
        npz_keys[b + "MlpBlock_3/Dense_1/kernel"], npz_keys[b + "MlpBlock_3/Dense_1/bias"] = (m, d), (d,)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "small.npz"
        np.savez(path, **{k: refdata.fill(k, v) for k, v in npz_keys.items()})
        _load_weights(small, str(path))
    ins = inputs("npz_small", [(2, 3, 32, 32)])
    fx.add(
        "npz_small",
        {"layout": "npz", "keys": {k: list(v) for k, v in npz_keys.items()}, "inputs": ins},
        {"0/logits": small(make_input(ins[0]))},
    )


def hf_cases(fx: Fixture) -> None:
    from safetensors import safe_open
    from transformers import ViTConfig, ViTForImageClassification

    s = SMALL
    small_cfg = ViTConfig(
        hidden_size=s["embed_dim"], num_hidden_layers=s["depth"], num_attention_heads=s["num_heads"],
        intermediate_size=s["mlp_dim"], image_size=s["image_size"], patch_size=s["patch_size"],
        num_labels=s["num_classes"], layer_norm_eps=1e-6,
    )  # fmt: skip
    b32_cfg = ViTConfig(image_size=384, patch_size=32, num_labels=1000, layer_norm_eps=1e-6)
    for name, cfg, shapes in [("hf_small", small_cfg, [(2, 3, 32, 32)]), ("hf_b32_384", b32_cfg, [(2, 3, 384, 384)])]:
        with tempfile.TemporaryDirectory() as tmp:
            # transformers' own on-disk names: save a model, read the names back
            ViTForImageClassification(cfg).save_pretrained(tmp)
            config_json = json.loads((Path(tmp) / "config.json").read_text())
            with safe_open(Path(tmp) / "model.safetensors", "pt") as f:
                keys = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
            save_file(filled(keys), str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
            model = ViTForImageClassification.from_pretrained(tmp).eval()
        assert model.config._attn_implementation == "sdpa"
        ins = inputs(name, shapes)
        outputs = {"0/logits": model(pixel_values=make_input(ins[0])).logits}
        fx.add(name, {"layout": "hf", "keys": keys, "hf_config": config_json, "inputs": ins}, outputs)

    # transformers-5 in-memory names (what torch.save(model.state_dict()) writes)
    model = ViTForImageClassification(small_cfg).eval()
    keys = shapes_of(model.state_dict())
    model.load_state_dict(filled(keys), strict=True)
    ins = inputs("hf5_small", [(2, 3, 32, 32)])
    fx.add(
        "hf5_small",
        {"layout": "hf", "keys": keys, "hf_config": small_cfg.to_dict(), "inputs": ins},
        {"0/logits": model(pixel_values=make_input(ins[0])).logits},
    )


def mmpretrain_cases(fx: Fixture) -> None:
    from mmpretrain import get_model
    from mmpretrain.registry import MODELS

    s = SMALL
    small = MODELS.build(dict(
        type="ImageClassifier",
        backbone=dict(
            type="VisionTransformer", img_size=s["image_size"], patch_size=s["patch_size"],
            arch=dict(embed_dims=s["embed_dim"], num_layers=s["depth"], num_heads=s["num_heads"],
                      feedforward_channels=s["mlp_dim"]),
        ),
        neck=None,
        head=dict(type="VisionTransformerClsHead", num_classes=s["num_classes"], in_channels=s["embed_dim"]),
    ))  # fmt: skip
    cases = [
        # trained size, a smaller square input, a non-square one, one that needs padding
        ("mm_small", small, [(2, 3, 32, 32), (1, 3, 24, 24), (1, 3, 24, 40), (1, 3, 20, 30)]),
        (
            "mm_b32_384",
            get_model(MM_NAMES["vit-base-p32-384"], pretrained=False),
            [(2, 3, 384, 384), (1, 3, 224, 224), (1, 3, 320, 448), (1, 3, 300, 500)],
        ),
    ]
    for name, model, shapes in cases:
        model.eval()
        keys = shapes_of(model.state_dict())
        model.load_state_dict(filled(keys), strict=True)
        ins = inputs(name, shapes)
        outputs = {}
        for i, spec in enumerate(ins):
            x = make_input(spec)
            outputs[f"{i}/logits"] = model(x, mode="tensor")
            outputs[f"{i}/extract_feat"] = model.extract_feat(x)[0]
        fx.add(name, {"layout": "mmpretrain", "keys": keys, "inputs": ins}, outputs)


def param_counts() -> dict:
    import timm
    from mmpretrain import get_model

    counts = {}
    for name in MM_NAMES:
        t = timm.create_model(TIMM_NAMES[name].split(".")[0], pretrained=False)
        m = get_model(MM_NAMES[name], pretrained=False)
        counts[name] = {
            "timm": sum(p.numel() for p in t.parameters()),
            "mmpretrain": sum(p.numel() for p in m.parameters()),
        }
        print(f"  params {name}: {counts[name]}", flush=True)
    return counts


# ---------------------------------------------------------------------------------------------
# Preprocessing

# (width, height): landscape, portrait, square, exactly the target, smaller (upsampling), 1×1,
# very elongated both ways, and sizes whose odd differences exercise the crop rounding.
SIZES_SMALL_SPEC = [
    (100, 75), (75, 100), (90, 90), (72, 72), (64, 64), (30, 45), (1, 1), (400, 9), (7, 300),
    (73, 81), (81, 73), (75, 75), (77, 200), (131, 97), (65, 66), (5, 3),
]  # fmt: skip
SIZES_ZOO_SPEC = [(500, 375), (375, 501), (384, 384), (257, 251), (61, 43), (1200, 33)]


def timm_transform(tag: str | None = None, **kwargs):
    import timm
    from timm.data import create_transform, resolve_model_data_config

    if tag is not None:
        cfg = resolve_model_data_config(timm.create_model(tag, pretrained=False))
        return create_transform(**cfg), cfg
    return create_transform(**kwargs), kwargs


def mm_pipeline(config: str | None = None, resize: int = 0, crop: int = 0, interpolation: str = "bilinear",
                mean=(127.5,) * 3, std=(127.5,) * 3):  # fmt: skip
    import mmpretrain
    from mmcv.transforms import Compose
    from mmengine.config import Config
    from mmpretrain.registry import MODELS, TRANSFORMS

    if config is not None:
        path = Path(mmpretrain.__file__).parent / ".mim" / "configs" / "vision_transformer" / config
        cfg = Config.fromfile(str(path))
        steps, pre = cfg.test_pipeline, dict(cfg.data_preprocessor)
    else:
        steps = [
            dict(type="LoadImageFromFile"),
            dict(type="ResizeEdge", scale=resize, edge="short", backend="pillow", interpolation=interpolation),
            dict(type="CenterCrop", crop_size=crop),
            dict(type="PackInputs"),
        ]
        pre = dict(mean=list(mean), std=list(std), to_rgb=True)
    pre = {k: v for k, v in pre.items() if k in ("mean", "std", "to_rgb")}
    pipeline = Compose([TRANSFORMS.build(t) for t in steps])
    preprocessor = MODELS.build(dict(type="ClsDataPreprocessor", **pre))

    def run(path: str) -> torch.Tensor:
        packed = pipeline(dict(img_path=path))
        return preprocessor({"inputs": [packed["inputs"]], "data_samples": None}, training=False)["inputs"][0]

    return run, {"steps": steps, "data_preprocessor": pre}


def preprocess_cases() -> tuple[dict, dict[str, np.ndarray]]:
    import mmpretrain.utils

    mmpretrain.utils.register_all_modules()
    small = dict(resize=80, crop=64)
    specs = {
        # name: (reference, tinyvit spec, sizes)
        "timm_bicubic_small": (
            "timm",
            timm_transform(input_size=64, crop_pct=0.8, interpolation="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3),
            dict(small, interpolation="bicubic", mean=[127.5] * 3, std=[127.5] * 3), SIZES_SMALL_SPEC,
        ),
        "mm_bilinear_small": (
            "mmpretrain", mm_pipeline(resize=80, crop=64, interpolation="bilinear"),
            dict(small, interpolation="bilinear", mean=[127.5] * 3, std=[127.5] * 3), SIZES_SMALL_SPEC,
        ),
        "mm_bicubic_imagenet_small": (
            "mmpretrain",
            mm_pipeline(resize=80, crop=64, interpolation="bicubic", mean=(123.675, 116.28, 103.53),
                        std=(58.395, 57.12, 57.375)),
            dict(small, interpolation="bicubic", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375]),
            SIZES_SMALL_SPEC,
        ),
    }  # fmt: skip
    # the zoo's own specs, each through the pipeline its weights were evaluated with
    for zoo, tag in TIMM_NAMES.items():
        if zoo in ("vit-base-p32-384", "vit-base-p16-224"):
            specs[f"timm:{zoo}"] = (
                "timm",
                timm_transform(tag),
                {"zoo": zoo, "tag": tag.split(".", 1)[1]},
                SIZES_ZOO_SPEC,
            )
    for zoo, config in [("vit-base-p32-384", "vit-base-p32_64xb64_in1k-384px.py"),
                        ("vit-base-p16-224", "vit-base-p16_32xb128-mae_in1k.py")]:  # fmt: skip
        specs[f"mmpretrain:{zoo}"] = (
            "mmpretrain",
            mm_pipeline(config),
            {"zoo": zoo, "tag": "mmpretrain"},
            SIZES_ZOO_SPEC,
        )

    cases, arrays = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec_name, (library, (transform, ref_cfg), spec, sizes) in specs.items():
            for w, h in sizes:
                seed = w * 1000 + h
                texture = sizes is SIZES_SMALL_SPEC  # noise-free big images keep the fixture small
                path = os.path.join(tmp, f"{w}x{h}.png")
                Image.fromarray(refdata.make_image(w, h, seed, texture=texture)).save(path)  # lossless
                if library == "timm":
                    with Image.open(path) as img:
                        out = transform(img.convert("RGB"))
                else:
                    out = transform(path)
                key = f"{spec_name}/{w}x{h}"
                arrays[key] = out.numpy().astype(np.float32)
                cases[key] = {"spec": spec_name, "width": w, "height": h, "seed": seed, "texture": texture}
            cfg = {
                k: (str(v) if not isinstance(v, (int, float, str, list, tuple, dict)) else v)
                for k, v in ref_cfg.items()
            }
            print(f"  preprocess {spec_name}: {len(sizes)} sizes, output {tuple(out.shape)}", flush=True)
            if library == "timm":
                print("    ", str(transform).replace("\n", " "), flush=True)
            cases[spec_name] = {"library": library, "tinyvit_spec": spec, "reference_config": cfg}
    return cases, arrays


def store_pixels(arrays: dict[str, np.ndarray], cases: dict) -> dict[str, np.ndarray]:
    """Reference tensors are normalized 8-bit pixels. Store the pixels (uint8) — a quarter of the
    size — after checking that normalizing them reproduces the reference tensor to 1e-6."""
    out = {}
    for key, ref in arrays.items():
        spec_name = cases[key]["spec"]
        spec = cases[spec_name]["tinyvit_spec"]
        if "zoo" in spec:
            from_ref = cases[spec_name]["reference_config"]
            mean, std = _mean_std(cases[spec_name]["library"], from_ref)
        else:
            mean, std = spec["mean"], spec["std"]
        mean = np.array(mean, np.float64).reshape(3, 1, 1)
        std = np.array(std, np.float64).reshape(3, 1, 1)
        pixels = np.rint(ref.astype(np.float64) * std + mean)
        assert pixels.min() >= 0 and pixels.max() <= 255, key
        back = ((pixels - mean) / std).astype(np.float32)
        err = float(np.abs(back - ref).max())
        assert err <= 1e-6, (key, err)
        out[key] = pixels.astype(np.uint8)
    return out


def _mean_std(library: str, cfg: dict) -> tuple[list, list]:
    if library == "timm":
        return [255 * m for m in cfg["mean"]], [255 * s for s in cfg["std"]]
    return cfg["data_preprocessor"]["mean"], cfg["data_preprocessor"]["std"]


def main() -> None:
    import mmpretrain
    import timm
    import transformers

    OUT.mkdir(parents=True, exist_ok=True)
    versions = {
        "torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
        "mmpretrain": mmpretrain.__version__, "numpy": np.__version__, "pillow": Image.__version__,
    }  # fmt: skip
    print("reference versions:", versions, flush=True)

    print("model parity cases", flush=True)
    fx = Fixture()
    timm_cases(fx)
    hf_cases(fx)
    mmpretrain_cases(fx)
    counts = param_counts()
    meta = {"generated_by": "scripts/make_fixtures.py", "versions": versions, "small": SMALL}
    (OUT / "parity.json").write_text(json.dumps({**meta, "param_counts": counts, "cases": fx.cases}, indent=1))
    save_file(fx.tensors, str(OUT / "parity.safetensors"))

    print("preprocessing cases", flush=True)
    cases, arrays = preprocess_cases()
    pixels = store_pixels(arrays, cases)
    (OUT / "preprocess.json").write_text(json.dumps({**meta, "cases": cases}, indent=1))
    np.savez_compressed(OUT / "preprocess_pixels.npz", **pixels)
    for f in sorted(OUT.iterdir()):
        print(f"  {f.relative_to(ROOT)}: {f.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
