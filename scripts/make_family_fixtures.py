"""Generate tests/fixtures/families.{json,safetensors} and families_pixels.npz (issue #20).

Reference fixtures for the ViT families people run today — DeiT (distilled), DeiT III, DINOv2
(+ registers), CLIP and SigLIP image towers, average-pooled heads, transformers' plain ViT classifier
— computed by the reference libraries themselves: timm, open_clip, transformers and
facebookresearch/dinov2's own code. The expected values come from those libraries, never from
tinyvit and never typed in.

Every model is small (embed 64, depth 2, 4 heads, MLP ratio 4; 32 px with patch 8, or 56 px with
patch 14 so the grid is 4x4; batch 2). Its weights are ``tests/refdata.py`` ``fill(name, shape)``
under the *checkpoint's own on-disk parameter names*, written to the file its home library writes
(``save_for_hf`` / ``save_pretrained`` / ``torch.save``) and read back through that library's own
loading path; its inputs are ``refdata.make_input(name, shape)``. So the fixture stores only names,
shapes, configs, the libraries' side files (verbatim) and the outputs. Real photographs
(tests/fixtures/photos/*.jpg) go through each home library's preprocessing, at the small models'
size (with model outputs) and at the real checkpoints' size (pixels, or hashes + lines).

Set up the reference environment once (a side venv; torch 2.14.1 is the CUDA build, it runs on the
CPU) and get facebookresearch/dinov2's code (read and run only, never committed):

    python3 -m venv .refs && .refs/bin/pip install torch==2.14.1 torchvision==0.29.1
    .refs/bin/pip install timm transformers open_clip_torch safetensors scikit-image
    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2src
    .refs/bin/python scripts/make_family_fixtures.py [--dinov2-src /tmp/dinov2src]

Nothing is downloaded: every model is built from a config with random weights (``pretrained=False``)
and then loaded from the files this script writes. If the dinov2 source is an exported tree rather
than a git checkout, pass its commit with ``DINOV2_COMMIT=<sha>`` so it is recorded.

The outputs are deterministic (one torch thread, fixed zip timestamps in the .npz).
See tests/fixtures/FAMILIES.md for the fixture format.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path

os.environ.setdefault("XFORMERS_DISABLED", "1")  # dinov2: plain SDPA attention, no xformers
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import refdata  # noqa: E402
from make_finetune_fixtures import write_npz  # noqa: E402

OUT = ROOT / "tests" / "fixtures"
PHOTOS = OUT / "photos"
PHOTO_NAMES = ["astronaut", "chelsea", "coffee", "rocket"]
# full-size preprocessing: the whole uint8 array is stored for these photos; for all photos a
# SHA-256 of the array and a few full rows/columns are stored (keeps the fixture small)
FULL_ARRAY_PHOTOS = ["rocket"]
BATCH = 2

torch.set_grad_enabled(False)
torch.set_num_threads(1)  # one thread: the same float summation order on every run

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OPENAI_MEAN, OPENAI_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
HALF = (0.5, 0.5, 0.5)

SMALL = dict(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0)
P8 = dict(img_size=32, patch_size=8)  # 4x4 grid
P14 = dict(img_size=56, patch_size=14)  # 4x4 grid
# (other input sizes): one larger non-square (upsamples the position grid), one smaller (downsamples)
OTHER_P8 = [(40, 48), (24, 24)]  # grids 5x6 and 3x3
OTHER_P14 = [(70, 84), (42, 28)]  # grids 5x6 and 3x2

TORCH_DTYPES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
    "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# helpers


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def key_table(state: dict[str, torch.Tensor]) -> dict[str, list]:
    """name -> [shape, dtype] of an in-memory state dict."""
    return {k: [list(v.shape), dtype_name(v.dtype)] for k, v in state.items()}


def safetensors_header(path: Path) -> dict:
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8 : 8 + n])


def safetensors_keys(path: Path) -> tuple[dict[str, list], dict | None]:
    """name -> [shape, dtype] exactly as written in the file, and the file's __metadata__."""
    header = safetensors_header(path)
    meta = header.pop("__metadata__", None)
    return {k: [v["shape"], TORCH_DTYPES[v["dtype"]]] for k, v in header.items()}, meta


def filled_state(keys: dict[str, list], library: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """refdata weights for every floating tensor; non-float tensors keep the library's values."""
    out = {}
    for k, (shape, dtype) in keys.items():
        if dtype.startswith(("float", "bfloat")):
            out[k] = torch.from_numpy(np.asarray(refdata.fill(k, shape))).to(getattr(torch, dtype))
        else:
            assert library is not None and k in library, k
            out[k] = library[k].clone()
    return out


def non_float_values(state: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: v.tolist() for k, v in state.items() if not v.is_floating_point()}


def buffers_of(model: torch.nn.Module) -> dict[str, dict]:
    """Every registered buffer: shape, dtype, whether state_dict() (and so the checkpoint) holds it,
    and for non-float ones their values."""
    persistent = set(model.state_dict())
    out = {}
    for name, buf in model.named_buffers():
        entry = {"shape": list(buf.shape), "dtype": dtype_name(buf.dtype), "persistent": name in persistent}
        if not buf.is_floating_point():
            entry["values"] = buf.tolist()
        out[name] = entry
    return out


def inputs(case: str, shapes: list[tuple]) -> list[dict]:
    return [{"name": f"{case}/{i}", "shape": list(s)} for i, s in enumerate(shapes)]


def make_input(spec: dict) -> torch.Tensor:
    return torch.from_numpy(refdata.make_input(spec["name"], spec["shape"]))


def jsonable(obj):
    """JSON-safe copy (tuples -> lists, enums/classes/callables -> str)."""
    return json.loads(json.dumps(obj, default=str))


def check_output(name: str, t: torch.Tensor) -> None:
    assert t.dtype == torch.float32, (name, t.dtype)
    assert torch.isfinite(t).all(), name
    assert t.numel() < 2 or float(t.std()) > 1e-4, (name, "trivial output")
    if t.shape[0] >= 2 and t[0].numel() > 1:
        assert not torch.equal(t[0], t[1]), (name, "batch rows equal")


class Fixture:
    def __init__(self):
        self.cases: dict[str, dict] = {}
        self.tensors: dict[str, torch.Tensor] = {}

    def add(self, name: str, case: dict, outputs: dict[str, tuple[int, str, torch.Tensor]]) -> None:
        """outputs: output name -> (input index, the library call that made it, tensor)."""
        case["outputs"] = {}
        for k, (i, call, v) in outputs.items():
            v = v.detach().float().contiguous().clone()
            check_output(f"{name}/{k}", v)
            case["outputs"][k] = {"input": i, "shape": list(v.shape), "call": call}
            self.tensors[f"{name}/{k}"] = v
        self.cases[name] = case
        print(f"  {name}: {', '.join(f'{k} {tuple(v[2].shape)}' for k, v in outputs.items())}", flush=True)


# ---------------------------------------------------------------------------------------------
# timm


TIMM_CASES = {
    # name: (family, architecture, constructor overrides, what the case covers)
    "timm_deit_distilled": (
        "deit_distilled", "deit_small_distilled_patch16_224", dict(**P8, **SMALL, num_classes=10),
        "cls + dist token, pos_embed covers both, head and head_dist; eval output = (head(cls) + head_dist(dist)) / 2",
    ),
    "timm_deit3": (
        "deit3", "deit3_small_patch16_224", dict(**P8, **SMALL, num_classes=10),
        "no_embed_class (pos_embed grid only), LayerScale ls1/ls2.gamma",
    ),
    "timm_dinov2": (
        "dinov2", "vit_small_patch14_dinov2", dict(**P14, **SMALL, num_classes=0),
        "patch 14, LayerScale, no head (num_classes 0)",
    ),
    "timm_dinov2_reg4": (
        "dinov2_reg", "vit_small_patch14_reg4_dinov2", dict(**P14, **SMALL, num_classes=0),
        "4 reg_token after cls, no_embed_class, LayerScale",
    ),
    "timm_clip_quickgelu": (
        "clip", "vit_base_patch32_clip_quickgelu_224", dict(**P8, **SMALL, num_classes=32),
        "pre_norm (norm_pre), no patch-embed bias, QuickGELU, LayerNorm eps 1e-5, head = image projection (with bias)",
    ),
    "timm_clip": (
        "clip", "vit_base_patch16_clip_224", dict(**P8, **SMALL, num_classes=32),
        "pre_norm, no patch-embed bias, exact GELU, LayerNorm eps 1e-5, head = image projection",
    ),
    "timm_siglip": (
        "siglip", "vit_base_patch16_siglip_224", dict(**P8, **SMALL, num_classes=0),
        "no class token, global_pool 'map' (attn_pool: latent, q, kv, proj, norm, mlp)",
    ),
    "timm_siglip_gap": (
        "siglip_gap", "vit_base_patch16_siglip_gap_224", dict(**P8, **SMALL, num_classes=0),
        "no class token, global_pool 'avg', fc_norm False (final norm before the mean)",
    ),
    "timm_avgpool_fcnorm": (
        "avgpool", "vit_base_patch16_224", dict(**P8, **SMALL, num_classes=10, global_pool="avg", fc_norm=True),
        "mean of patch tokens, fc_norm after pooling, norm = Identity",
    ),
}  # fmt: skip


def timm_cases(fx: Fixture) -> dict[str, torch.nn.Module]:
    import timm
    from timm.models import save_for_hf

    loaded_models = {}
    for name, (family, arch, kwargs, covers) in TIMM_CASES.items():
        model = timm.create_model(arch, pretrained=False, **kwargs).eval()
        state = model.state_dict()
        keys = key_table(state)
        filled = filled_state(keys, state)
        model.load_state_dict(filled, strict=True)
        patch = kwargs["patch_size"]
        other = OTHER_P14 if patch == 14 else OTHER_P8
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            save_for_hf(model, str(folder), safe_serialization=True)
            files = sorted(p.name for p in folder.iterdir())
            assert files == ["config.json", "model.safetensors"], files
            config_text = (folder / "config.json").read_text()
            disk_keys, meta = safetensors_keys(folder / "model.safetensors")
            assert disk_keys == keys, name
            # read back the way a user would, once at the trained size and once with dynamic_img_size
            loaded = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
            dynamic = timm.create_model(f"local-dir:{folder}", pretrained=True, dynamic_img_size=True).eval()
        for m in (loaded, dynamic):
            for k, v in m.state_dict().items():
                assert torch.equal(v, filled[k]), (name, k)
        loaded_models[name] = loaded
        img = kwargs["img_size"]
        ins = inputs(name, [(BATCH, 3, img, img)] + [(BATCH, 3, h, w) for h, w in other])
        x = make_input(ins[0])
        feats = loaded.forward_features(x)
        outputs = {}
        if loaded.num_classes:
            outputs["logits"] = (0, "model(x)", loaded(x))
        outputs["pre_logits"] = (0, "model.forward_head(model.forward_features(x), pre_logits=True)",
                                 loaded.forward_head(feats, pre_logits=True))  # fmt: skip
        outputs["features"] = (0, "model.forward_features(x)", feats)
        # at the trained size resample_abs_pos_embed returns pos_embed unchanged
        assert torch.allclose(dynamic(x), loaded(x), rtol=0, atol=1e-6), name
        head = "logits" if loaded.num_classes else "pre_logits"
        for i in range(1, len(ins)):
            call = "model_dynamic(x)" + ("" if loaded.num_classes else "  # num_classes 0: == pre_logits")
            outputs[f"{head}@{i}"] = (i, call, dynamic(make_input(ins[i])))
        net = loaded
        case = {
            "family": family,
            "layout": "timm",
            "library": "timm",
            "covers": covers,
            "architecture": arch,
            "create_model_kwargs": {"pretrained": False, **kwargs},
            "saved_with": "timm.models.save_for_hf(model, folder, safe_serialization=True)",
            "loaded_with": "timm.create_model('local-dir:' + folder, pretrained=True)",
            "loaded_with_other_sizes": "timm.create_model('local-dir:' + folder, pretrained=True, "
            "dynamic_img_size=True)",
            "files": {"config.json": config_text},
            "weights_files": ["model.safetensors"],
            "safetensors_metadata": meta,
            "keys": keys,
            "buffers": buffers_of(net),
            "facts": {
                "num_prefix_tokens": net.num_prefix_tokens,
                "no_embed_class": net.no_embed_class,
                "global_pool": net.global_pool,
                "norm_eps": net.blocks[0].norm1.eps,
                "act_layer": type(net.blocks[0].mlp.act).__name__,
                "pos_embed_resample": "timm.layers.resample_abs_pos_embed(pos_embed, new_size=grid, old_size="
                "patch_embed.grid_size, num_prefix_tokens=0 if no_embed_class else num_prefix_tokens, "
                "interpolation='bicubic', antialias=True)",
            },
            "inputs": ins,
        }
        fx.add(name, case, outputs)
    return loaded_models


# ---------------------------------------------------------------------------------------------
# open_clip

OC_VISION = dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16)
OC_TEXT = dict(context_length=8, vocab_size=64, width=32, heads=2, layers=1)
OC_CASES = {
    "oc_clip_quickgelu": (
        dict(embed_dim=32, quick_gelu=True, vision_cfg=dict(OC_VISION), text_cfg=dict(OC_TEXT)),
        dict(mean=list(OPENAI_MEAN), std=list(OPENAI_STD), interpolation="bicubic", resize_mode="shortest"),
    ),
    "oc_clip": (
        dict(embed_dim=32, vision_cfg=dict(OC_VISION), text_cfg=dict(OC_TEXT)),
        dict(mean=list(OPENAI_MEAN), std=list(OPENAI_STD), interpolation="bicubic", resize_mode="squash"),
    ),
}


class _NoTokenizer:
    """open_clip's save_for_hf also saves a tokenizer (push_to_hf_hub would fetch
    openai/clip-vit-large-patch14's from the Hub); the image tower does not need one."""

    def save_pretrained(self, directory) -> None:
        pass


def open_clip_cases(fx: Fixture) -> dict[str, torch.nn.Module]:
    import open_clip
    from open_clip.push_to_hf_hub import save_for_hf

    models = {}
    for name, (model_cfg, preprocess_cfg) in OC_CASES.items():
        with tempfile.TemporaryDirectory() as tmp:
            boot = Path(tmp) / "boot"
            boot.mkdir()
            (boot / "open_clip_config.json").write_text(
                json.dumps({"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
            )
            model = open_clip.create_model(f"local-dir:{boot}").eval()  # random init, no weights there
            state = model.state_dict()
            keys = key_table(state)
            filled = filled_state(keys, state)
            model.load_state_dict(filled, strict=True)
            folder = Path(tmp) / name
            save_for_hf(model, _NoTokenizer(), model_cfg, str(folder), safe_serialization=True)
            files = sorted(p.name for p in folder.iterdir())
            assert files == ["open_clip_config.json", "open_clip_model.safetensors"], files
            config_text = (folder / "open_clip_config.json").read_text()
            disk_keys, meta = safetensors_keys(folder / "open_clip_model.safetensors")
            assert disk_keys == keys, name
            loaded = open_clip.create_model(f"local-dir:{folder}").eval()
        for k, v in loaded.state_dict().items():
            assert torch.equal(v, filled[k]), (name, k)
        models[name] = loaded
        visual = loaded.visual
        ins = inputs(name, [(BATCH, 3, 32, 32)])
        x = make_input(ins[0])
        enc = loaded.encode_image(x, normalize=False)
        pooled = visual._pool(visual.transformer(visual._embeds(x)))[0]
        assert torch.allclose(pooled @ visual.proj, enc, atol=1e-6), name
        act = type(visual.transformer.resblocks[0].mlp.gelu).__name__
        case = {
            "family": "clip",
            "layout": "open_clip",
            "library": "open_clip",
            "model_cfg": model_cfg,
            "preprocess_cfg_given": preprocess_cfg,
            "preprocess_cfg_resolved": jsonable(visual.preprocess_cfg),
            "saved_with": "open_clip.push_to_hf_hub.save_for_hf(model, tokenizer, model_cfg, folder, "
            "safe_serialization=True) (tokenizer stubbed: its files are not written)",
            "loaded_with": "open_clip.create_model('local-dir:' + folder)",
            "files": {"open_clip_config.json": config_text},
            "weights_files": ["open_clip_model.safetensors"],
            "safetensors_metadata": meta,
            "keys": keys,
            "non_float_tensors": non_float_values(state),
            "buffers": buffers_of(loaded),
            "facts": {
                "image_tower_prefix": "visual.",
                "act_layer": act,
                "norm_eps": visual.ln_pre.eps,
                "heads": visual.transformer.resblocks[0].attn.num_heads,
                "pool_type": visual.pool_type,
                "proj": "image embedding = ln_post(x)[:, 0] @ visual.proj  (proj is (width, embed_dim), no bias)",
            },
            "inputs": ins,
        }
        fx.add(
            name,
            case,
            {
                "encode_image": (0, "model.encode_image(x, normalize=False)", enc),
                "pooled": (0, "v = model.visual; v._pool(v.transformer(v._embeds(x)))[0]  # before proj", pooled),
            },
        )
    return models


# ---------------------------------------------------------------------------------------------
# transformers

HF_VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)
HF_CLIP_TEXT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
    max_position_embeddings=8, bos_token_id=0, eos_token_id=2, pad_token_id=1,
)  # fmt: skip
HF_SIGLIP_TEXT = dict(
    vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=1, num_attention_heads=2,
    max_position_embeddings=8,
)  # fmt: skip


def hf_processor_specs():
    """(small processor kwargs, full-size processor kwargs) per family; DINOv2's BitImageProcessor
    is given the values DINOv2 checkpoints' preprocessor_config.json use (the class defaults are
    CLIP's: shortest edge 224, OpenAI mean/std)."""
    from transformers.image_utils import PILImageResampling

    dinov2_full = dict(
        size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, resample=PILImageResampling.BICUBIC,
        image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD),
    )  # fmt: skip
    dinov2_small = dict(dinov2_full, size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56})
    return {
        "clip": (dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), {}),
        "dinov2": (dinov2_small, dinov2_full),
        "siglip": (dict(size={"height": 32, "width": 32}), {}),
        "vit": (dict(size={"height": 32, "width": 32}), {}),  # squash to size, bilinear, mean/std 0.5
    }


def hf_processor_classes(family: str):
    from transformers import BitImageProcessor, CLIPImageProcessor, SiglipImageProcessor, ViTImageProcessor
    from transformers.models.bit.image_processing_pil_bit import BitImageProcessorPil
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    return {
        "clip": (CLIPImageProcessor, CLIPImageProcessorPil),
        "dinov2": (BitImageProcessor, BitImageProcessorPil),
        "siglip": (SiglipImageProcessor, SiglipImageProcessorPil),
        "vit": (ViTImageProcessor, ViTImageProcessorPil),
    }[family]


def hf_cases(fx: Fixture) -> dict[str, torch.nn.Module]:
    from safetensors import safe_open
    from transformers import (
        AutoImageProcessor,
        CLIPConfig,
        CLIPModel,
        CLIPVisionConfig,
        CLIPVisionModel,
        CLIPVisionModelWithProjection,
        Dinov2Config,
        Dinov2Model,
        SiglipConfig,
        SiglipModel,
        SiglipVisionConfig,
        SiglipVisionModel,
        ViTConfig,
        ViTForImageClassification,
    )

    try:
        from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel
    except ImportError:  # older transformers
        Dinov2WithRegistersConfig = Dinov2WithRegistersModel = None

    dinov2_kw = dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4, image_size=56, patch_size=14
    )
    clip_vision_kw = dict(HF_VISION, image_size=32, patch_size=8, projection_dim=32)
    siglip_vision_kw = dict(HF_VISION, image_size=32, patch_size=8)
    # a fine-tuned classifier as the Hub has them: 10 named labels (config.json gets id2label and label2id);
    # layer_norm_eps left at ViTConfig's default (1e-12)
    labels = [f"class_{i}" for i in range(10)]
    vit_kw = dict(HF_VISION, image_size=32, patch_size=8, id2label=dict(enumerate(labels)),
                  label2id={n: i for i, n in enumerate(labels)})  # fmt: skip
    specs = hf_processor_specs()

    def dino_calls(m, x):
        o = m(pixel_values=x)
        return {"last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}

    def dino_other(m, x):
        return {"pooler_output": m(pixel_values=x).pooler_output}  # interpolate_pos_encoding is automatic

    def vision_calls(m, x):
        o = m(pixel_values=x)
        return {"last_hidden_state": o.last_hidden_state, "pooler_output": o.pooler_output}

    def vision_other(m, x):
        return {"pooler_output": m(pixel_values=x, interpolate_pos_encoding=True).pooler_output}

    def proj_calls(m, x):
        o = m(pixel_values=x)
        return {"image_embeds": o.image_embeds, "last_hidden_state": o.last_hidden_state}

    def logits_calls(m, x):
        return {"logits": m(pixel_values=x).logits}

    def logits_other(m, x):
        return {"logits": m(pixel_values=x, interpolate_pos_encoding=True).logits}

    def image_features(m, x):
        o = m.get_image_features(pixel_values=x)  # transformers 5: a BaseModelOutputWithPooling
        return {"image_features": o if torch.is_tensor(o) else o.pooler_output}

    CALLS = {
        "last_hidden_state": "model(pixel_values=x).last_hidden_state",
        "pooler_output": "model(pixel_values=x).pooler_output",
        "image_embeds": "model(pixel_values=x).image_embeds",
        "image_features": "model.get_image_features(pixel_values=x)  # .pooler_output in transformers 5",
        "pooler_output@": "model(pixel_values=x{extra}).pooler_output",
        "logits": "model(pixel_values=x).logits",
        "logits@": "model(pixel_values=x{extra}).logits",
    }

    cases = [
        # name, family, model class, config, processor family, calls, other-size call (+ kwargs note)
        ("hf_dinov2", "dinov2", Dinov2Model, Dinov2Config(**dinov2_kw), "dinov2", dino_calls, dino_other, ""),
        ("hf_clip_vision", "clip", CLIPVisionModel, CLIPVisionConfig(**clip_vision_kw), "clip", vision_calls,
         vision_other, ", interpolate_pos_encoding=True"),
        ("hf_clip_vision_proj", "clip", CLIPVisionModelWithProjection, CLIPVisionConfig(**clip_vision_kw), "clip",
         proj_calls, None, ""),
        ("hf_clip", "clip", CLIPModel, CLIPConfig(text_config=HF_CLIP_TEXT, vision_config=clip_vision_kw,
                                                  projection_dim=32), "clip", image_features, None, ""),
        ("hf_siglip_vision", "siglip", SiglipVisionModel, SiglipVisionConfig(**siglip_vision_kw), "siglip",
         vision_calls, vision_other, ", interpolate_pos_encoding=True"),
        ("hf_siglip", "siglip", SiglipModel, SiglipConfig(text_config=HF_SIGLIP_TEXT, vision_config=siglip_vision_kw),
         "siglip", image_features, None, ""),
        ("hf_vit", "vit", ViTForImageClassification, ViTConfig(**vit_kw), "vit", logits_calls, logits_other,
         ", interpolate_pos_encoding=True"),
    ]  # fmt: skip
    constructor = {
        "hf_dinov2": dinov2_kw, "hf_clip_vision": clip_vision_kw, "hf_clip_vision_proj": clip_vision_kw,
        "hf_clip": {"text_config": HF_CLIP_TEXT, "vision_config": clip_vision_kw, "projection_dim": 32},
        "hf_siglip_vision": siglip_vision_kw,
        "hf_siglip": {"text_config": HF_SIGLIP_TEXT, "vision_config": siglip_vision_kw},
        "hf_vit": vit_kw,
    }  # fmt: skip
    if Dinov2WithRegistersModel is not None:
        reg_kw = dict(dinov2_kw, num_register_tokens=4)
        constructor["hf_dinov2_reg"] = reg_kw
        cases.insert(1, ("hf_dinov2_reg", "dinov2_reg", Dinov2WithRegistersModel, Dinov2WithRegistersConfig(**reg_kw),
                         "dinov2", dino_calls, dino_other, ""))  # fmt: skip

    models = {}
    for name, family, cls, cfg, pfam, calls, other_call, other_kw in cases:
        tv_cls, _ = hf_processor_classes(pfam)
        processor = tv_cls(**specs[pfam][0])
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / name
            cls(cfg).save_pretrained(folder)
            written = sorted(p.name for p in folder.iterdir())
            disk_keys, meta = safetensors_keys(folder / "model.safetensors")
            with safe_open(folder / "model.safetensors", "pt") as f:
                library = {k: f.get_tensor(k) for k in f.keys()}
            filled = filled_state(disk_keys, library)
            save_file(filled, str(folder / "model.safetensors"), metadata=meta)
            processor.save_pretrained(folder)
            files = {n: (folder / n).read_text() for n in ("config.json", "preprocessor_config.json")}
            model, info = cls.from_pretrained(folder, output_loading_info=True)
            model.eval()
            assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), (name, info)
            auto_processor = AutoImageProcessor.from_pretrained(folder)
            # the loading path consumed every tensor: saving again gives the same file content
            again = Path(tmp) / "again"
            model.save_pretrained(again)
            with safe_open(again / "model.safetensors", "pt") as f:
                assert sorted(f.keys()) == sorted(filled), name
                for k in f.keys():
                    assert torch.equal(f.get_tensor(k), filled[k]), (name, k)
        assert next(model.parameters()).dtype == torch.float32
        models[name] = model
        img = cfg.vision_config.image_size if hasattr(cfg, "vision_config") else cfg.image_size
        patch = cfg.vision_config.patch_size if hasattr(cfg, "vision_config") else cfg.patch_size
        other = (OTHER_P14 if patch == 14 else OTHER_P8) if other_call else []
        ins = inputs(name, [(BATCH, 3, img, img)] + [(BATCH, 3, h, w) for h, w in other])
        outputs = {k: (0, CALLS[k], v) for k, v in calls(model, make_input(ins[0])).items()}
        for i in range(1, len(ins)):
            for k, v in other_call(model, make_input(ins[i])).items():
                outputs[f"{k}@{i}"] = (i, CALLS[k + "@"].format(extra=other_kw), v)
        vcfg = cfg.vision_config if hasattr(cfg, "vision_config") else cfg
        case = {
            "family": family,
            "layout": "hf",
            "library": "transformers",
            "model_class": cls.__name__,
            "config_kwargs": constructor[name],
            "saved_with": f"{cls.__name__}(config).save_pretrained(folder) (files: {written}); model.safetensors "
            "rewritten with refdata.fill under its own keys, same metadata; "
            f"{type(processor).__name__}(**processor_kwargs).save_pretrained(folder)",
            "loaded_with": f"{cls.__name__}.from_pretrained(folder)",
            "files": files,
            "weights_files": ["model.safetensors"],
            "safetensors_metadata": meta,
            "keys": disk_keys,
            "in_memory_keys": sorted(model.state_dict()) if sorted(model.state_dict()) != sorted(disk_keys) else "same",
            "non_float_tensors": non_float_values(filled),
            "buffers": buffers_of(model),
            "processor_class": type(processor).__name__,
            "processor_kwargs": jsonable(specs[pfam][0]),
            "auto_image_processor_class": type(auto_processor).__name__,
            "facts": {
                "hidden_act": vcfg.hidden_act,
                "layer_norm_eps": vcfg.layer_norm_eps,
                "attn_implementation": model.config._attn_implementation,
            },
            "inputs": ins,
        }
        if cls is ViTForImageClassification:
            case["facts"].update({
                "num_labels": model.config.num_labels,
                "qkv_bias": vcfg.qkv_bias,
                "head": "logits = classifier(layernorm(last encoder output)[:, 0])  (cls token; no pooler)",
                "pos_embed_resample": "ViTEmbeddings.interpolate_pos_encoding (only with interpolate_pos_encoding="
                "True; skipped when the patch count matches and h == w): patch grid -> F.interpolate(size=(H // "
                "patch, W // patch), mode='bicubic', align_corners=False), no antialias; cls slot kept",
            })  # fmt: skip
        fx.add(name, case, outputs)
    return models


# ---------------------------------------------------------------------------------------------
# facebookresearch/dinov2's own code


def dinov2_import(src: Path):
    sys.path.insert(0, str(src))
    import dinov2.layers.attention as attention
    from dinov2.layers import MemEffAttention
    from dinov2.layers import NestedTensorBlock as Block
    from dinov2.models import vision_transformer as vits

    assert not attention.XFORMERS_AVAILABLE  # MemEffAttention falls back to Attention (F.scaled_dot_product_attention)
    return vits, Block, MemEffAttention


DINOV2_CASES = {
    # as dinov2/hub/backbones.py builds dinov2_vits14 / dinov2_vits14_reg, scaled down
    "dinov2_vits": dict(num_register_tokens=0, interpolate_antialias=False, interpolate_offset=0.1),
    "dinov2_vits_reg4": dict(num_register_tokens=4, interpolate_antialias=True, interpolate_offset=0.0),
}


def dinov2_cases(fx: Fixture, src: Path, commit: str) -> dict[str, torch.nn.Module]:
    vits, Block, MemEffAttention = dinov2_import(src)
    models = {}
    for name, extra in DINOV2_CASES.items():
        ctor = dict(
            img_size=56, patch_size=14, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4, init_values=1.0,
            ffn_layer="mlp", block_chunks=0, **extra,
        )  # fmt: skip
        model = vits.DinoVisionTransformer(**ctor, block_fn=partial(Block, attn_class=MemEffAttention)).eval()
        state = model.state_dict()
        keys = key_table(state)
        filled = filled_state(keys, state)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{name}_pretrain.pth"
            torch.save(filled, path)
            # the hub's loading path: torch.hub.load_state_dict_from_url -> torch.load; load_state_dict(strict=True)
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        for k, v in model.state_dict().items():
            assert torch.equal(v, filled[k]), (name, k)
        models[name] = model
        ins = inputs(name, [(BATCH, 3, 56, 56)] + [(BATCH, 3, h, w) for h, w in OTHER_P14])
        x = make_input(ins[0])
        ff = model.forward_features(x)
        out = model(x)  # is_training=False: head (Identity) of x_norm_clstoken
        outputs = {
            "x_norm_clstoken": (0, "model.forward_features(x)['x_norm_clstoken']", ff["x_norm_clstoken"]),
            "x_norm_patchtokens": (0, "model.forward_features(x)['x_norm_patchtokens']", ff["x_norm_patchtokens"]),
        }
        if extra["num_register_tokens"]:
            outputs["x_norm_regtokens"] = (0, "model.forward_features(x)['x_norm_regtokens']", ff["x_norm_regtokens"])
        outputs["forward"] = (0, "model(x)  # is_training=False", out)
        for i in range(1, len(ins)):
            xi = make_input(ins[i])
            outputs[f"forward@{i}"] = (i, "model(x)", model(xi))
            outputs[f"x_norm_patchtokens@{i}"] = (
                i, "model.forward_features(x)['x_norm_patchtokens']", model.forward_features(xi)["x_norm_patchtokens"]
            )  # fmt: skip
        case = {
            "family": "dinov2_reg" if extra["num_register_tokens"] else "dinov2",
            "layout": "dinov2",
            "library": "facebookresearch/dinov2",
            "source_commit": commit,
            "constructor": "dinov2.models.vision_transformer.DinoVisionTransformer(**kwargs, "
            "block_fn=partial(NestedTensorBlock, attn_class=MemEffAttention))  # = vit_small(...) scaled down",
            "constructor_kwargs": ctor,
            "saved_with": "torch.save(model.state_dict(), path)",
            "loaded_with": "model.load_state_dict(torch.load(path, map_location='cpu', weights_only=True), "
            "strict=True)",
            "weights_files": [
                f"{name}_pretrain.pth (hub: dinov2_vits14{'_reg4' if extra['num_register_tokens'] else ''}"
                "_pretrain.pth)"
            ],  # fmt: skip
            "keys": keys,
            "buffers": buffers_of(model),
            "facts": {
                "xformers": False,
                "norm_eps": 1e-6,
                "token_order": "[cls, registers..., patches...]; pos_embed (1, 1 + N, D) is added to cls + patches "
                "before the registers are inserted",
                "pos_embed_resample": "bicubic on the 2-D grid (cls slot kept); interpolate_offset != 0: "
                "F.interpolate(scale_factor=((h0 + offset) / M, (w0 + offset) / M)) (scale factor, not size, "
                "decides the sampling); offset 0: size=(h0, w0); antialias=interpolate_antialias; skipped when "
                "the token count matches and h == w",
            },
            "inputs": ins,
        }
        fx.add(name, case, outputs)
    return models


# ---------------------------------------------------------------------------------------------
# zoo facts (full-size timm architectures)

ZOO_TAGS = [
    "deit_base_distilled_patch16_224.fb_in1k",
    "deit3_base_patch16_224.fb_in22k_ft_in1k",
    "vit_small_patch14_dinov2.lvd142m",
    "vit_base_patch14_dinov2.lvd142m",
    "vit_small_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch14_reg4_dinov2.lvd142m",
    "vit_base_patch32_clip_224.openai",
    "vit_base_patch16_clip_224.openai",
    "vit_base_patch32_clip_quickgelu_224.openai",
    "vit_base_patch16_clip_quickgelu_224.openai",
    "vit_base_patch16_siglip_224.webli",
    "vit_base_patch16_siglip_gap_224.webli",
    "deit_small_distilled_patch16_224",
    "deit3_small_patch16_224",
    "vit_large_patch14_dinov2.lvd142m",
]
PRETRAINED_KEYS = [
    "input_size", "crop_pct", "crop_mode", "interpolation", "mean", "std", "num_classes", "hf_hub_id", "license",
    "tag", "architecture", "fixed_input_size", "notes",
]  # fmt: skip


@contextlib.contextmanager
def timm_unfused_attention():
    """timm's attention as explicit matmuls (FlopCounterMode does not see the CPU SDPA kernel)."""
    import timm.layers.config as cfg

    old = cfg._USE_FUSED_ATTN
    cfg._USE_FUSED_ATTN = 0
    try:
        yield
    finally:
        cfg._USE_FUSED_ATTN = old


def zoo_facts() -> dict:
    import timm
    from timm.data import resolve_model_data_config
    from timm.layers import LayerScale
    from torch.utils.flop_counter import FlopCounterMode

    facts = {}
    with timm_unfused_attention():
        for tag in ZOO_TAGS:
            try:
                with torch.device("meta"):
                    m = timm.create_model(tag, pretrained=False).eval().requires_grad_(False)
            except Exception as e:  # noqa: BLE001 - an unavailable name is recorded, not fatal
                facts[tag] = {"error": f"{type(e).__name__}: {e}"}
                print(f"  zoo {tag}: {e}", flush=True)
                continue
            pc = {k: m.pretrained_cfg.get(k) for k in PRETRAINED_KEYS if k in m.pretrained_cfg}
            blk = m.blocks[0]
            head = m.head
            arch = {
                "class": type(m).__name__,
                "img_size": list(m.patch_embed.img_size),
                "patch_size": list(m.patch_embed.patch_size),
                "embed_dim": m.embed_dim,
                "depth": len(m.blocks),
                "num_heads": blk.attn.num_heads,
                "mlp_ratio": blk.mlp.fc1.out_features / m.embed_dim,
                "class_token": m.cls_token is not None,
                "dist_token": getattr(m, "dist_token", None) is not None,
                "reg_tokens": m.num_reg_tokens,
                "num_prefix_tokens": m.num_prefix_tokens,
                "no_embed_class": m.no_embed_class,
                "pos_embed_shape": list(m.pos_embed.shape) if m.pos_embed is not None else None,
                "init_values_layerscale": isinstance(blk.ls1, LayerScale),
                "pre_norm": not isinstance(m.norm_pre, torch.nn.Identity),
                "final_norm": not isinstance(m.norm, torch.nn.Identity),
                "global_pool": m.global_pool,
                "attn_pool": type(m.attn_pool).__name__ if m.attn_pool is not None else None,
                "fc_norm": not isinstance(m.fc_norm, torch.nn.Identity),
                "act_layer": type(blk.mlp.act).__name__,
                "norm_eps": blk.norm1.eps,
                "qkv_bias": blk.attn.qkv.bias is not None,
                "patch_bias": m.patch_embed.proj.bias is not None,
                "num_classes": m.num_classes,
                "head": (
                    f"Linear({head.in_features}, {head.out_features}, bias={head.bias is not None})"
                    if isinstance(head, torch.nn.Linear)
                    else type(head).__name__
                ),  # fmt: skip
                "head_output_size": head.out_features if isinstance(head, torch.nn.Linear) else m.num_features,
                "head_dist": getattr(m, "head_dist", None) is not None,
            }
            params = sum(p.numel() for p in m.parameters())
            x = torch.empty(1, *m.pretrained_cfg["input_size"], device="meta")
            with FlopCounterMode(display=False) as counter:
                m(x)
            gmacs = counter.get_total_flops() / 2e9
            facts[tag] = {
                "pretrained_cfg": jsonable(pc),
                "data_config": jsonable(resolve_model_data_config(m)),
                "architecture": arch,
                "model_args": jsonable(getattr(m, "_model_args", {})),
                "param_count": params,
                "gmacs": round(gmacs, 4),
            }
            print(f"  zoo {tag}: {params:,} params, {gmacs:.3f} GMACs", flush=True)
            del m
    return facts


# ---------------------------------------------------------------------------------------------
# photos through each home library's preprocessing


def open_rgb(name: str) -> Image.Image:
    with Image.open(PHOTOS / f"{name}.jpg") as img:
        return img.convert("RGB")


def to_pixels(x: torch.Tensor, mean, std) -> tuple[np.ndarray, float]:
    """The 8-bit pixels p whose normalization ((p / 255 - mean) / std) gives ``x`` back, and the
    worst error of that round trip (the caller stores float32 instead when it is above 1e-6)."""
    ref = x.numpy().astype(np.float64)
    m = np.array(mean, np.float64).reshape(3, 1, 1) * 255
    s = np.array(std, np.float64).reshape(3, 1, 1) * 255
    pixels = np.rint(ref * s + m)
    if pixels.min() < 0 or pixels.max() > 255:
        return pixels, float("inf")
    back = ((pixels - m) / s).astype(np.float32)
    return pixels.astype(np.uint8), float(np.abs(back - x.numpy()).max())


def lines_of(a: np.ndarray) -> dict[str, np.ndarray]:
    """A few full rows and columns of a (3, H, W) array: edges (crop offsets), centre."""
    _, h, w = a.shape
    rows = sorted({0, 1, h // 2, h - 2, h - 1})
    cols = sorted({0, 1, w // 2, w - 2, w - 1})
    return {"rows": a[:, rows, :], "cols": a[:, :, cols], "row_index": np.array(rows), "col_index": np.array(cols)}


def preprocess_specs(models: dict[str, torch.nn.Module], dinov2_src: Path) -> list[dict]:
    """Every distinct preprocessing: its small-size version (with a model) and its full-size version."""
    import timm
    from open_clip.transform import image_transform
    from timm.data import create_transform, resolve_model_data_config

    sys.path.insert(0, str(dinov2_src))
    from dinov2.data.transforms import make_classification_eval_transform

    specs = []

    # timm: every distinct pretrained data config among the zoo tags
    timm_groups = {
        "timm_deit": ("deit_base_distilled_patch16_224.fb_in1k", "timm_deit_distilled", 32),
        "timm_deit3_in22k": ("deit3_base_patch16_224.fb_in22k_ft_in1k", "timm_deit3", 32),
        "timm_dinov2": ("vit_small_patch14_dinov2.lvd142m", "timm_dinov2", 56),
        "timm_clip": ("vit_base_patch16_clip_224.openai", "timm_clip", 32),
        "timm_siglip": ("vit_base_patch16_siglip_224.webli", "timm_siglip", 32),
    }
    for spec, (tag, case, small) in timm_groups.items():
        with torch.device("meta"):
            cfg = resolve_model_data_config(timm.create_model(tag, pretrained=False))
        small_cfg = dict(cfg, input_size=(3, small, small))
        net = models[case]
        call = "model(x)" if net.num_classes else "model(x)  # = pre_logits"
        specs.append({
            "name": spec, "library": "timm", "tag": tag, "mean": cfg["mean"], "std": cfg["std"],
            "small": dict(transform=create_transform(**small_cfg), config=small_cfg, model=case,
                          run=lambda x, net=net: net(x), call=call,
                          how="timm.data.create_transform(**config)"),
            "full": dict(transform=create_transform(**cfg), config=cfg,
                         how=f"timm.data.create_transform(**timm.data.resolve_model_data_config("
                             f"timm.create_model('{tag}')))"),
        })  # fmt: skip

    # open_clip: each resize mode
    for mode, case in [("shortest", "oc_clip_quickgelu"), ("longest", "oc_clip_quickgelu"), ("squash", "oc_clip")]:
        net = models[case]
        kw = dict(is_train=False, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic", resize_mode=mode)
        specs.append({
            "name": f"open_clip_{mode}", "library": "open_clip", "mean": OPENAI_MEAN, "std": OPENAI_STD,
            "small": dict(transform=image_transform(32, **kw), config=dict(image_size=32, **kw), model=case,
                          run=lambda x, net=net: net.encode_image(x, normalize=False),
                          call="model.encode_image(x, normalize=False)",
                          how="open_clip.transform.image_transform(image_size, **config)"),
            "full": dict(transform=image_transform(224, **kw), config=dict(image_size=224, **kw),
                         how="open_clip.transform.image_transform(image_size, **config)"),
        })  # fmt: skip

    # transformers processors, torchvision backend (the default here) and PIL backend
    hf_models = {"clip": ("hf_clip_vision_proj", "image_embeds"), "dinov2": ("hf_dinov2", "pooler_output"),
                 "siglip": ("hf_siglip_vision", "pooler_output"), "vit": ("hf_vit", "logits")}  # fmt: skip
    for fam, (small_kw, full_kw) in hf_processor_specs().items():
        case, attr = hf_models[fam]
        net = models[case]
        for backend, pcls in zip(("torchvision", "pil"), hf_processor_classes(fam), strict=True):
            small_p, full_p = pcls(**small_kw), pcls(**full_kw)
            specs.append({
                "name": f"hf_{fam}_{backend}", "library": "transformers", "backend": small_p.backend,
                "processor_class": type(small_p).__name__,
                "mean": small_p.image_mean, "std": small_p.image_std,
                "small": dict(transform=lambda img, p=small_p: p(images=img, return_tensors="pt")["pixel_values"][0],
                              config=small_p.to_dict(), kwargs=jsonable(small_kw), model=case,
                              run=lambda x, net=net, attr=attr: getattr(net(pixel_values=x), attr),
                              call=f"model(pixel_values=x).{attr}",
                              how=f"{type(small_p).__name__}(**kwargs)(images=img, return_tensors='pt')"),
                "full": dict(transform=lambda img, p=full_p: p(images=img, return_tensors="pt")["pixel_values"][0],
                             config=full_p.to_dict(), kwargs=jsonable(full_kw),
                             how=f"{type(full_p).__name__}(**kwargs)(images=img, return_tensors='pt')"),
            })  # fmt: skip

    # facebookresearch/dinov2's own evaluation transform
    net = models["dinov2_vits"]
    specs.append({
        "name": "dinov2_eval", "library": "facebookresearch/dinov2", "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
        "small": dict(transform=make_classification_eval_transform(resize_size=64, crop_size=56),
                      config=dict(resize_size=64, crop_size=56), model="dinov2_vits", run=lambda x, net=net: net(x),
                      call="model(x)",
                      how="dinov2.data.transforms.make_classification_eval_transform(**config)"),
        "full": dict(transform=make_classification_eval_transform(), config=dict(resize_size=256, crop_size=224),
                     how="dinov2.data.transforms.make_classification_eval_transform()  # defaults"),
    })  # fmt: skip
    return specs


def photo_cases(
    fx: Fixture,
    specs: list[dict],
    arrays: dict[str, np.ndarray],
    full_pixels: dict[tuple[str, str], np.ndarray] | None = None,
) -> dict:
    """Runs every spec on every photo; ``full_pixels`` (if given) collects (spec, photo) -> the full-size
    stored array."""
    photos = {}
    for name in PHOTO_NAMES:
        path = PHOTOS / f"{name}.jpg"
        with Image.open(path) as im:
            photos[name] = {"file": f"photos/{name}.jpg", "width": im.width, "height": im.height,
                            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}  # fmt: skip
    out, seen = {}, {}
    for spec in specs:
        entry = {k: jsonable(v) for k, v in spec.items() if k not in ("small", "full")}
        for size in ("small", "full"):
            s = spec[size]
            tensors, stored, worst = {}, {}, 0.0
            for photo in PHOTO_NAMES:
                x = s["transform"](open_rgb(photo))
                assert x.dtype == torch.float32 and x.ndim == 3 and x.shape[0] == 3, (spec["name"], x.shape)
                tensors[photo] = x
                pixels, err = to_pixels(x, spec["mean"], spec["std"])
                exact = err <= 1e-6
                worst = max(worst, err if exact else 0.0)
                arr = pixels if exact else x.numpy().astype(np.float32)
                if size == "full" and full_pixels is not None:
                    full_pixels[(spec["name"], photo)] = arr
                stored[photo] = {"dtype": str(arr.dtype), "shape": list(arr.shape),
                                 "sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()}  # fmt: skip
                # identical arrays (the same pixels from two pipelines) are stored once; the JSON points
                # every pipeline at the stored copy
                ident = (stored[photo]["sha256"], arr.dtype.str, arr.shape)
                base = seen.setdefault(ident, f"{spec['name']}/{size}/{photo}")
                if size == "small" or photo in FULL_ARRAY_PHOTOS:
                    arrays[base] = arr
                    stored[photo]["npz_key"] = base
                if size == "full":
                    for k, v in lines_of(arr).items():
                        arrays[f"{base}/{k}"] = v
                    stored[photo]["lines_npz_prefix"] = base
            sizes = {tuple(t.shape) for t in tensors.values()}
            assert len(sizes) == 1, (spec["name"], size, sizes)
            info = {
                "how": s["how"],
                "config": jsonable(s["config"]),
                "transform_repr": None if spec["library"] == "transformers" else str(s["transform"]),
                "output_shape": list(sizes.pop()),
                "pixels": stored,
                "uint8_max_abs_error": worst,
            }
            if "kwargs" in s:
                info["kwargs"] = s["kwargs"]
            if size == "small":
                batch = torch.stack([tensors[p] for p in PHOTO_NAMES])
                y = s["run"](batch)
                key = f"photos_{spec['name']}"
                fx.tensors[f"{key}/output"] = y.detach().float().contiguous().clone()
                check_output(key, y)
                info["model"] = s["model"]
                info["output"] = {"safetensors_key": f"{key}/output", "shape": list(y.shape), "call": s["call"],
                                  "batch": "the photos in PHOTO order, stacked"}  # fmt: skip
            entry[size] = info
        small, full = entry["small"], entry["full"]
        uint8 = all(p["dtype"] == "uint8" for size in (small, full) for p in size["pixels"].values())
        print(
            f"  photos {spec['name']}: small {small['output_shape']} -> output {small['output']['shape']}, "
            f"full {full['output_shape']}, uint8 pixels {uint8}",
            flush=True,
        )
        out[spec["name"]] = entry
    class_defaults = {}
    for fam in ("clip", "dinov2", "siglip", "vit"):
        for pcls in hf_processor_classes(fam):
            class_defaults[pcls.__name__] = pcls().to_dict()
    return {
        "photos": photos,
        "photo_order": PHOTO_NAMES,
        "full_array_photos": FULL_ARRAY_PHOTOS,
        "specs": out,
        "hf_processor_class_defaults": jsonable(class_defaults),
    }


def backend_diffs(full_pixels: dict[tuple[str, str], np.ndarray]) -> dict:
    """For each transformers processor pair: torchvision vs PIL backend on each photo at full size."""
    out = {}
    for fam in ("clip", "dinov2", "siglip", "vit"):
        tv_name, pil_name = f"hf_{fam}_torchvision", f"hf_{fam}_pil"
        per_photo = {}
        for photo in PHOTO_NAMES:
            a, b = full_pixels[(tv_name, photo)], full_pixels[(pil_name, photo)]
            assert a.dtype == b.dtype == np.uint8 and a.shape == b.shape, (fam, photo, a.dtype, b.dtype)
            d = np.abs(a.astype(np.int16) - b.astype(np.int16))
            per_photo[photo] = {
                "shape": list(a.shape),
                "values_differ": int((d > 0).sum()),
                "positions_differ": int((d > 0).any(axis=0).sum()),
                "max_level_diff": int(d.max()),
            }
        out[fam] = {"torchvision": tv_name, "pil": pil_name, "photos": per_photo}
        print(
            f"  backend diffs {fam}: "
            + ", ".join(f"{p} {v['values_differ']} (max {v['max_level_diff']})" for p, v in per_photo.items()),
            flush=True,
        )
    return out


# ---------------------------------------------------------------------------------------------


def git_commit(src: Path) -> str:
    if os.environ.get("DINOV2_COMMIT"):
        return os.environ["DINOV2_COMMIT"]
    try:
        return subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> None:
    import open_clip
    import safetensors
    import timm
    import torchvision
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dinov2-src", type=Path, default=Path(os.environ.get("DINOV2_SRC", "/tmp/dinov2src")))
    args = parser.parse_args()
    commit = git_commit(args.dinov2_src)

    versions = {
        "torch": torch.__version__, "torchvision": torchvision.__version__, "timm": timm.__version__,
        "transformers": transformers.__version__, "open_clip": open_clip.__version__,
        "dinov2": f"facebookresearch/dinov2@{commit}", "safetensors": safetensors.__version__,
        "numpy": np.__version__, "pillow": Image.__version__,
    }  # fmt: skip
    print("reference versions:", versions, flush=True)

    fx = Fixture()
    models: dict[str, torch.nn.Module] = {}
    print("timm", flush=True)
    models.update(timm_cases(fx))
    print("open_clip", flush=True)
    models.update(open_clip_cases(fx))
    print("transformers", flush=True)
    models.update(hf_cases(fx))
    print("facebookresearch/dinov2", flush=True)
    models.update(dinov2_cases(fx, args.dinov2_src, commit))
    print("photos", flush=True)
    arrays: dict[str, np.ndarray] = {}
    full_pixels: dict[tuple[str, str], np.ndarray] = {}
    photos = photo_cases(fx, preprocess_specs(models, args.dinov2_src), arrays, full_pixels)
    diffs = backend_diffs(full_pixels)
    print("zoo facts", flush=True)
    zoo = zoo_facts()

    fixture = {
        "generated_by": "scripts/make_family_fixtures.py",
        "versions": versions,
        "small": {
            **SMALL,
            "p8": P8,
            "p14": P14,
            "batch": BATCH,
            "other_sizes_p8": OTHER_P8,
            "other_sizes_p14": OTHER_P14,
        },  # fmt: skip
        "cases": fx.cases,
        "preprocessing": photos,
        "backend_diffs": diffs,
        "backend_diffs_notes": "transformers' torchvision backend vs its PIL backend, each spec pair's full size "
        "(preprocessing.specs[torchvision|pil].full), on each photo: the stored uint8 (3, H, W) arrays compared; "
        "values_differ = uint8 values (channel, row, col) that differ, positions_differ = (row, col) positions "
        "where any channel differs, max_level_diff = largest |difference| in 0-255 levels.",
        "zoo_facts": zoo,
        "zoo_facts_notes": "built with timm.create_model(name, pretrained=False) on the meta device; param_count = "
        "sum of parameter numel; gmacs = torch.utils.flop_counter.FlopCounterMode total / 2 for one image at "
        "pretrained_cfg input_size with timm's attention unfused (counts mm/addmm/bmm/convolution only: "
        "linear layers, patch conv and both attention matmuls; no norms/softmax/elementwise). Published "
        "accuracies are not available offline and are not recorded.",
    }
    (OUT / "families.json").write_text(json.dumps(fixture, indent=1) + "\n")
    save_file(
        fx.tensors, str(OUT / "families.safetensors"), metadata={"generated_by": "scripts/make_family_fixtures.py"}
    )
    write_npz(OUT / "families_pixels.npz", arrays)
    for f in ("families.json", "families.safetensors", "families_pixels.npz"):
        os.chmod(OUT / f, 0o644)  # safetensors writes 0600
    total = 0
    for f in ("families.json", "families.safetensors", "families_pixels.npz"):
        n = (OUT / f).stat().st_size
        total += n
        print(f"  tests/fixtures/{f}: {n / 1e3:.1f} kB  sha256 {hashlib.sha256((OUT / f).read_bytes()).hexdigest()}")
    print(f"  total {total / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
