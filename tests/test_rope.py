"""The ViTs of 2025–26 (issue #26), from the files their home libraries write: DINOv3 (timm, and
transformers' DINOv3ViTModel), EVA02 (MIM encoder, classifier, CLIP image tower; timm and open_clip),
Perception Encoder core (timm and open_clip), RoPE-ViT (axial, mixed + absolute positions), AIMv2.
Expected values come from timm, transformers and open_clip (tests/fixtures/rope.*, made by
scripts/make_rope_fixtures.py; ROPE.md says what every field is), at the trained size and two others
(open_clip's timm towers take their trained size only)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from refdata import fill, make_input
from safetensors.torch import load_file, save_file

import tinyvit
from tinyvit.core.config import ViTConfig
from tinyvit.weights.convert import preprocess_from_hf

FX = json.loads((FIXTURES / "rope.json").read_text())
REF = load_file(FIXTURES / "rope.safetensors")
CASES = FX["cases"]
TOL = 1e-5


def write_case(name: str, folder: Path) -> Path:
    """The case's folder as its library wrote it: side files verbatim, weights refdata-filled."""
    case = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    for file, text in case["files"].items():
        (folder / file).write_text(text)
    state = {k: torch.from_numpy(np.asarray(fill(k, shape))) for k, (shape, _) in case["keys"].items()}
    save_file(state, str(folder / case["weights_files"][0]), metadata=case["safetensors_metadata"])
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tinyvit.VisionTransformer]:
    root = tmp_path_factory.mktemp("rope")
    return {name: tinyvit.load(write_case(name, root / name)) for name in CASES}


def inputs(name: str, i: int) -> torch.Tensor:
    spec = CASES[name]["inputs"][i]
    return torch.from_numpy(make_input(spec["name"], spec["shape"]))


def tinyvit_output(model: tinyvit.VisionTransformer, output: str, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        tokens = model.forward_features(x)
        if output in ("features", "last_hidden_state"):
            return tokens
        if output in ("pre_logits", "pooler_output"):
            return model.forward_head(tokens, pre_logits=True)
        if output in ("logits", "encode_image"):  # open_clip's: the timm trunk's head is the projection
            return model.forward_head(tokens)
    raise AssertionError(f"no tinyvit counterpart for {output}")


PAIRS = [(name, out) for name, case in CASES.items() for out in case["outputs"]]


@pytest.mark.parametrize("name, output", PAIRS, ids=[f"{n}/{o}" for n, o in PAIRS])
def test_outputs_equal_the_home_library(models, name, output):
    case = CASES[name]
    got = tinyvit_output(models[name], output.split("@")[0], inputs(name, case["outputs"][output]["input"]))
    want = REF[f"{name}/{output}"]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL


def test_the_configs_read_from_the_files(models):
    c = {name: m.config for name, m in models.items()}
    assert c["timm_dinov3"].rope_type == "dinov3" and c["timm_dinov3"].rope_rotate_half
    assert not c["timm_dinov3"].use_abs_pos_emb and c["timm_dinov3"].reg_tokens == 4
    assert c["timm_dinov3_splus"].swiglu_mlp and c["hf_dinov3_gated"].swiglu_mlp
    assert c["timm_eva02_mim"].ref_feat_shape == 16 and c["timm_eva02_mim"].swiglu_mlp
    assert c["timm_eva02_clip"].scale_attn_inner and c["timm_eva02_clip"].scale_mlp
    assert c["timm_pe_core"].attn_pool_num_heads == 8 and c["timm_pe_core"].pool_include_prefix
    assert c["timm_rope_mixed_ape"].rope_type == "mixed" and c["timm_rope_mixed_ape"].no_embed_class
    assert c["timm_aimv2"].norm_layer == "rmsnorm" and c["timm_aimv2"].embed_norm and not c["timm_aimv2"].proj_bias
    assert c["hf_dinov3"].global_pool == "token" and c["hf_dinov3"].layer_norm_eps == 1e-5
    spec = models["hf_dinov3"].weights.preprocess
    assert (spec.resize_mode, spec.interpolation, spec.crop) == ("squash", "bilinear", 32)


def test_the_new_fields_are_written_only_where_set():
    """Records written before these fields existed still read; new ones stay short."""
    plain = ViTConfig().to_dict()
    assert "rope_type" not in plain and "norm_layer" not in plain
    rope = ViTConfig(use_rot_pos_emb=True, rope_type="dinov3", use_abs_pos_emb=False, embed_dim=64, num_heads=4)
    d = rope.to_dict()
    assert {"use_rot_pos_emb", "rope_type", "use_abs_pos_emb"} <= set(d) and "rope_temperature" not in d
    assert ViTConfig.from_dict(d) == rope


def test_rotary_tables_are_computed_once_per_grid(models):
    model = models["timm_dinov3"]
    model.rope._tables.clear()
    x = inputs("timm_dinov3", 0)
    with torch.inference_mode():
        model(x)
        model(x)
        model(inputs("timm_dinov3", 1))
    assert len(model.rope._tables) == 2


@pytest.mark.parametrize("name", ["timm_dinov3", "timm_rope_mixed_ape", "timm_eva02_mim"])
def test_attention_probabilities_path_equals_the_fused_one(models, name):
    """forward_trace(attention=True) computes the probabilities explicitly, rotary embedding included."""
    model, x = models[name], inputs(name, 1)
    with torch.inference_mode():
        trace = model.forward_trace(x, attention=True)
        assert (trace.tokens - model.forward_features(x)).abs().max().item() <= 1e-5
    p = model.config.patch_size
    assert trace.attention[0].shape[-1] == (x.shape[-2] // p) * (x.shape[-1] // p) + model.config.num_prefix_tokens


@pytest.mark.parametrize("name", ["timm_dinov3", "timm_eva02_clip"])
def test_onnx_export_with_any_image_size(models, name, tmp_path):
    """The rotary tables are computed inside the exported graph: one graph, any size."""
    from tinyvit.export import check_onnx, export_onnx

    model = models[name]
    size = model.config.image_size if model.config.use_abs_pos_emb else 32
    path = export_onnx(model, tmp_path / "m.onnx", dynamic_size=True)
    deviations = check_onnx(model, path, [(size, size), (size + 8, size * 3 // 2), (24, 40)])
    assert max(deviations.values()) <= 1e-4, deviations


def _refused(tmp_path: Path, keys: dict, config: dict | None = None) -> str:
    if config is not None:
        (tmp_path / "config.json").write_text(json.dumps(config))
    save_file({k: torch.zeros(shape) for k, shape in keys.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(tinyvit.WeightsError) as err:
        tinyvit.load(tmp_path)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_families_out_of_reach_are_refused_in_one_line(tmp_path):
    # Meta's own DINOv3 layout loads (tests/test_dinov3_meta.py), but not with a class-token norm of its own
    meta = {"cls_token": [1, 1, 64], "storage_tokens": [1, 4, 64], "rope_embed.periods": [4],
            "patch_embed.proj.weight": [64, 3, 16, 16], "blocks.0.norm1.weight": [64],
            "cls_norm.weight": [64]}  # fmt: skip
    (tmp_path / "a").mkdir()
    assert "untie_cls_and_patch_norms" in _refused(tmp_path / "a", meta)
    keys = CASES["timm_eva02_clip"]["keys"]
    shapes = {k: s for k, (s, _) in keys.items()}
    (tmp_path / "b").mkdir()
    msg = _refused(tmp_path / "b", shapes, {"architecture": "eva02_enormous_patch14_clip_224", "num_classes": 16})
    assert "post-norm blocks" in msg
    (tmp_path / "c").mkdir()
    assert "NaFlex" in _refused(tmp_path / "c", shapes, {"model_type": "siglip2"})


# ---------------------------------------------------------------------------------------------
# Dense features: the patch tokens on their grid


@pytest.mark.parametrize("name", ["timm_dinov3", "hf_dinov3", "timm_eva02_mim", "timm_aimv2"])
@pytest.mark.parametrize("i", [0, 1, 2])
def test_patch_features_are_the_home_librarys_patch_tokens(models, name, i):
    """timm's forward_features without its prefix tokens; transformers' last_hidden_state[:, 1 + registers:]."""
    model, case = models[name], CASES[name]
    out = "features" if case["layout"] == "timm" else "last_hidden_state"
    out = out if i == 0 else f"{out}@{i}"
    x = inputs(name, case["outputs"][out]["input"])
    got = tinyvit.patch_features(x, model)
    p = model.config.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    want = REF[f"{name}/{out}"][:, model.config.num_prefix_tokens :].reshape(x.shape[0], h, w, -1)
    assert got.shape == want.shape and (got - want).abs().max().item() <= TOL


def test_patch_features_of_images_follow_the_weights_preprocessing(models):
    from PIL import Image

    model = models["timm_dinov3"]
    image = Image.fromarray(np.asarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3)), dtype=np.uint8))
    got = tinyvit.patch_features([image, image], model, batch_size=1)
    x = tinyvit.preprocess([image, image], model)
    assert got.shape == (2, x.shape[-2] // 8, x.shape[-1] // 8, 64)
    assert torch.equal(got, tinyvit.patch_features(x, model))


# ---------------------------------------------------------------------------------------------
# Real photos through each case's home preprocessing, as its folder states it

PHOTO_ORDER = ["astronaut", "chelsea", "coffee", "rocket"]  # the fixture script's PHOTO_NAMES
PHOTO_FILES = [FIXTURES / "photos" / f"{p}.jpg" for p in PHOTO_ORDER]
PHOTO_CASES = [name for name, case in CASES.items() if "photos" in case]


def pixels_sha256(x: torch.Tensor, spec: tinyvit.PreprocessSpec, dtype: str) -> str:
    """As the fixture hashes them: the 8-bit pixels whose normalization is ``x``, or ``x`` itself (float32)."""
    if dtype == "uint8":
        mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
        arr = (x * std + mean).round().clamp(0, 255).to(torch.uint8).numpy()
    else:
        arr = x.numpy().astype("<f4")
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


@pytest.mark.parametrize("name", PHOTO_CASES)
def test_real_photos_through_the_home_preprocessing(models, name):
    """timm's create_transform of the folder's data config, transformers' DINOv3ViTImageProcessor
    (which resizes the rescaled float image), open_clip's image_transform_v2: the pixels equal to
    the last bit, and the model's output on them within 1e-4 of the home library's."""
    model, entry = models[name], CASES[name]["photos"]
    spec = model.weights.preprocess
    x = tinyvit.preprocess(PHOTO_FILES, model)
    for photo, xi in zip(PHOTO_ORDER, x, strict=True):
        want = entry["pixels"][photo]
        assert list(xi.shape) == want["shape"], (photo, spec)
        assert pixels_sha256(xi, spec, want["dtype"]) == want["sha256"], (photo, spec)
    with torch.inference_mode():
        got = model(x)
    delta = (got - REF[entry["output"]["safetensors_key"]]).abs().max().item()
    assert delta <= 1e-4, delta


def test_dinov3_processor_pixels_at_the_real_checkpoints_size(models):
    """DINOv3ViTImageProcessor() (224 x 224, bilinear on the float image): every photo to the last bit."""
    entry = CASES["hf_dinov3"]["photos"]
    cfg = {**entry["full_processor"], "image_processor_type": "DINOv3ViTImageProcessor"}
    spec = preprocess_from_hf(cfg, "DINOv3ViTImageProcessor()")
    assert spec.float_resize and spec.crop == 224
    for photo, path in zip(PHOTO_ORDER, PHOTO_FILES, strict=True):
        assert pixels_sha256(tinyvit.preprocess(path, spec), spec, "float32") == entry["full_pixels_sha256"][photo]


def test_float_resize_is_written_only_where_set():
    spec = tinyvit.PreprocessSpec(224, 224, "bilinear", (0.0,) * 3, (1.0,) * 3, "squash", "floor", "torch")
    assert "float_resize" not in spec.to_dict()
    floats = tinyvit.PreprocessSpec.from_dict({**spec.to_dict(), "float_resize": True})
    assert floats.float_resize and floats.to_dict()["float_resize"] is True
    assert tinyvit.PreprocessSpec.from_dict(floats.to_dict()) == floats
    with pytest.raises(ValueError, match="float_resize"):
        tinyvit.PreprocessSpec(224, 224, "bilinear", (0.0,) * 3, (1.0,) * 3, float_resize=True)  # Pillow
