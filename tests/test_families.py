"""The ViT families people run today, from the files their home libraries write: DeiT (distilled),
DeiT III, DINOv2 (+registers), CLIP and SigLIP image towers, average-pooled heads — in the timm,
open_clip, transformers and facebookresearch/dinov2 layouts. Expected values come from those
libraries (tests/fixtures/families.*, made by scripts/make_family_fixtures.py; FAMILIES.md says
what every field is)."""

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
from tinyvit.weights.convert import preprocess_from_hf, preprocess_from_open_clip, preprocess_from_timm
from tinyvit.weights.manifest import resolve

FX = json.loads((FIXTURES / "families.json").read_text())
REF = load_file(FIXTURES / "families.safetensors")
PIXELS = np.load(FIXTURES / "families_pixels.npz")
CASES = FX["cases"]
PHOTOS = FX["preprocessing"]["photo_order"]
TOL = 1e-5


def write_case(name: str, folder: Path) -> Path:
    """The case's checkpoint as its library wrote it: the side files verbatim, the weights filled by
    refdata under the checkpoint's own names. Returns what a user would pass to ``load``."""
    case = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: torch.from_numpy(np.asarray(fill(k, shape))) for k, (shape, _) in case["keys"].items()}
    if case["layout"] == "dinov2":
        path = folder / f"{name}_pretrain.pth"
        torch.save(state, path)
        return path
    for file, text in case["files"].items():
        (folder / file).write_text(text)
    save_file(state, str(folder / case["weights_files"][0]), metadata=case["safetensors_metadata"])
    return folder


def load_case(name: str, folder: Path) -> tinyvit.VisionTransformer:
    src = write_case(name, folder)
    if CASES[name]["layout"] != "dinov2":
        return tinyvit.load(src)
    # DINOv2's own checkpoints state no architecture; a 64-wide ViT's heads are not standard: asked for
    heads = CASES[name]["constructor_kwargs"]["num_heads"]
    return tinyvit.load(tinyvit.convert(src, folder / "converted.safetensors", arch={"num_heads": heads}))


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tinyvit.VisionTransformer]:
    root = tmp_path_factory.mktemp("families")
    return {name: load_case(name, root / name) for name in CASES}


def inputs(name: str, i: int) -> torch.Tensor:
    spec = CASES[name]["inputs"][i]
    return torch.from_numpy(make_input(spec["name"], spec["shape"]))


def tinyvit_output(model: tinyvit.VisionTransformer, case: dict, output: str, x: torch.Tensor) -> torch.Tensor:
    """What tinyvit computes for the reference output ``output`` (its name without ``@i``)."""
    prefix = model.config.num_prefix_tokens
    with torch.inference_mode():
        tokens = model.forward_features(x)
        if output in ("logits", "encode_image", "image_embeds", "image_features", "forward"):
            return model(x)
        if output in ("pre_logits", "pooler_output", "pooled", "x_norm_clstoken"):
            return model.forward_head(tokens, pre_logits=True)
        if output == "last_hidden_state" and case["family"] == "clip":  # CLIP's is before post_layernorm
            return model.forward_trace(x, blocks=[-1]).hidden[0]
        if output in ("features", "last_hidden_state"):
            return tokens
        if output == "x_norm_regtokens":
            return tokens[:, 1:prefix]
        if output == "x_norm_patchtokens":
            return tokens[:, prefix:]
    raise AssertionError(f"no tinyvit counterpart for {output}")


PAIRS = [(name, out) for name, case in CASES.items() for out in case["outputs"]]


@pytest.mark.parametrize("name, output", PAIRS, ids=[f"{n}/{o}" for n, o in PAIRS])
def test_outputs_equal_the_home_library(models, name, output):
    case = CASES[name]
    got = tinyvit_output(models[name], case, output.split("@")[0], inputs(name, case["outputs"][output]["input"]))
    want = REF[f"{name}/{output}"]
    assert got.shape == want.shape
    assert (got - want).abs().max().item() <= TOL


# ---------------------------------------------------------------------------------------------
# Real photos through each home library's preprocessing


def normalized_to_pixels(x: torch.Tensor, spec) -> np.ndarray:
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    return (x * std + mean).round().clamp(0, 255).to(torch.uint8).numpy()


def spec_from_config(spec_name: str, size: str) -> tinyvit.PreprocessSpec:
    """tinyvit's spec for a preprocessing, from the config its library ran with (as a checkpoint's
    files would state it), through tinyvit's own readers of those configs."""
    entry = FX["preprocessing"]["specs"][spec_name]
    cfg = entry[size]["config"]
    library = entry["library"]
    if library == "timm":
        return preprocess_from_timm({"pretrained_cfg": cfg}, spec_name)
    if library == "open_clip":
        model_cfg = {"vision_cfg": {"image_size": cfg["image_size"]}}
        return preprocess_from_open_clip({"model_cfg": model_cfg, "preprocess_cfg": cfg}, spec_name)
    if library == "transformers":
        return preprocess_from_hf(cfg, spec_name, backend="pil" if entry["backend"] == "pil" else "torch")
    # facebookresearch/dinov2's make_classification_eval_transform: resize short edge, crop, ImageNet
    return tinyvit.PreprocessSpec(cfg["resize_size"], cfg["crop_size"], "bicubic", (123.675, 116.28, 103.53),
                                  (58.395, 57.12, 57.375))  # fmt: skip


def photo_pixels(spec: tinyvit.PreprocessSpec) -> tuple[torch.Tensor, list[np.ndarray]]:
    photos = [FIXTURES / FX["preprocessing"]["photos"][p]["file"] for p in PHOTOS]
    x = tinyvit.preprocess(photos, spec)
    return x, [normalized_to_pixels(xi, spec) for xi in x]


SPECS = list(FX["preprocessing"]["specs"])


@pytest.mark.parametrize("spec_name", SPECS)
def test_real_photos_through_the_home_preprocessing(models, spec_name):
    """At the small models' size: pixels equal to the last bit, and the model's output on them
    within 1e-4 of the home library's."""
    entry = FX["preprocessing"]["specs"][spec_name]["small"]
    x, pixels = photo_pixels(spec_from_config(spec_name, "small"))
    for photo, got in zip(PHOTOS, pixels, strict=True):
        assert np.array_equal(got, PIXELS[entry["pixels"][photo]["npz_key"]]), (spec_name, photo)
    with torch.inference_mode():
        got = models[entry["model"]](x)  # every family's output here is model(x): logits, embedding, pooled
    want = REF[entry["output"]["safetensors_key"]]
    assert (got - want).abs().max().item() <= 1e-4
    if spec_name.startswith("hf_vit"):  # a classifier, through transformers' torchvision and PIL backends
        assert (got.softmax(-1) - want.softmax(-1)).abs().max().item() <= 1e-6


@pytest.mark.parametrize("spec_name", SPECS)
def test_real_photos_at_the_real_checkpoints_size(spec_name):
    """At the real checkpoints' size (224, 518): every photo's pixels hash to the library's."""
    entry = FX["preprocessing"]["specs"][spec_name]["full"]
    _, pixels = photo_pixels(spec_from_config(spec_name, "full"))
    for photo, got in zip(PHOTOS, pixels, strict=True):
        assert hashlib.sha256(got.tobytes()).hexdigest() == entry["pixels"][photo]["sha256"], (spec_name, photo)


def test_a_checkpoints_own_files_give_its_preprocessing(models):
    """(DINOv2's own checkpoints have none: their library's evaluation transform.)"""
    assert models["dinov2_vits"].weights.preprocess == spec_from_config("dinov2_eval", "full")
    """What the side files say reaches the record: timm's pretrained_cfg, open_clip's
    preprocess_cfg, transformers' preprocessor_config.json (its default torchvision backend)."""
    assert models["timm_deit_distilled"].weights.preprocess == spec_from_config("timm_deit", "small")
    assert models["oc_clip_quickgelu"].weights.preprocess == spec_from_config("open_clip_shortest", "small")
    assert models["oc_clip"].weights.preprocess == spec_from_config("open_clip_squash", "small")
    assert models["hf_clip_vision_proj"].weights.preprocess == spec_from_config("hf_clip_torchvision", "small")
    assert models["hf_siglip_vision"].weights.preprocess == spec_from_config("hf_siglip_torchvision", "small")


# the zoo's weights and the timm pipeline their tag evaluates with (the fixture's full-size specs)
ZOO_SPECS = {
    "deit-base-distilled-p16-224": "timm_deit",
    "deit3-base-p16-224": "timm_deit3_in22k",
    "dinov2-small": "timm_dinov2",
    "clip-vit-base-p16": "timm_clip",
    "siglip-base-p16-224": "timm_siglip",
}


@pytest.mark.parametrize("zoo_name, spec_name", ZOO_SPECS.items())
def test_zoo_weights_preprocess_as_timm_evaluates_them(zoo_name, spec_name):
    entry = FX["preprocessing"]["specs"][spec_name]
    _, pixels = photo_pixels(resolve(zoo_name).preprocess)
    for photo, got in zip(PHOTOS, pixels, strict=True):
        assert hashlib.sha256(got.tobytes()).hexdigest() == entry["full"]["pixels"][photo]["sha256"], photo


# ---------------------------------------------------------------------------------------------
# Everything downstream works for every family


def photo_files() -> list[Path]:
    return [FIXTURES / FX["preprocessing"]["photos"][p]["file"] for p in PHOTOS]


EMBEDDING_SPECS = [s for s in SPECS if not s.startswith(("timm_deit", "hf_vit"))]  # the image towers' pipelines


@pytest.mark.parametrize("spec_name", EMBEDDING_SPECS)
def test_embed_gives_the_home_librarys_image_embedding(models, spec_name):
    """open_clip's encode_image, transformers' image_embeds / pooler_output, DINOv2's and timm's
    output of an image tower; normalize=True scales each to unit length."""
    entry = FX["preprocessing"]["specs"][spec_name]["small"]
    model = models[entry["model"]]
    assert model.weights.output == "embedding"
    spec = spec_from_config(spec_name, "small")
    got = tinyvit.embed(photo_files(), model, preprocess=spec)
    want = REF[entry["output"]["safetensors_key"]]
    assert got.shape == want.shape and (got - want).abs().max().item() <= 1e-4
    unit = tinyvit.embed(photo_files(), model, preprocess=spec, normalize=True)
    assert torch.allclose(unit, torch.nn.functional.normalize(want, dim=-1), atol=1e-5)


def test_classifiers_predict_and_embed_their_pre_logits(models):
    model = models["timm_deit_distilled"]  # the mean of both heads; embed: the mean of both tokens
    spec = spec_from_config("timm_deit", "small")
    logits = REF[FX["preprocessing"]["specs"]["timm_deit"]["small"]["output"]["safetensors_key"]]
    preds = tinyvit.predict(photo_files(), model, preprocess=spec, top_k=3)
    assert [p.label for p in preds] == logits.argmax(-1).tolist()
    assert max(abs(p.score - s) for p, s in zip(preds, logits.softmax(-1).max(-1).values.tolist(), strict=True)) < 1e-5
    x = tinyvit.preprocess(photo_files(), spec)
    with torch.inference_mode():
        want = model.forward_head(model.forward_features(x), pre_logits=True)
    assert torch.allclose(tinyvit.embed(photo_files(), model, preprocess=spec), want, atol=1e-6)


def test_an_embedding_model_is_not_a_classifier(models):
    with pytest.raises(tinyvit.TinyViTError, match="gives image embeddings, not classes.*embed"):
        tinyvit.predict(photo_files()[0], models["hf_dinov2"])


@pytest.mark.parametrize("name", ["timm_deit_distilled", "timm_dinov2_reg4", "dinov2_vits_reg4", "timm_siglip"])
def test_explain_maps_the_patches_only(models, name, tmp_path):
    """The prefix tokens (distillation token, registers) are left out of the map; a model without
    a class token maps the mean attention."""
    from tinyvit.run.explain import class_token_map, explain

    model = models[name]
    x = inputs(name, 0)
    share = class_token_map(model, x)
    grid = model.config.grid_size
    assert share.shape == (2, grid, grid) and torch.allclose(share.sum(dim=(1, 2)), torch.ones(2))
    out = explain(photo_files()[0], model, tmp_path / "map.png", caption=name)
    assert out.stat().st_size > 0


@pytest.mark.parametrize("name", ["timm_dinov2_reg4", "timm_siglip"])  # registers + LayerScale; no class token + MAP
def test_onnx_export_with_any_image_size(models, name, tmp_path):
    from tinyvit.export import check_onnx, export_onnx

    model = models[name]
    size = model.config.image_size
    path = export_onnx(model, tmp_path / "m.onnx", dynamic_size=True)
    deviations = check_onnx(model, path, [(size, size), (size + 8, size * 3 // 2)])
    assert max(deviations.values()) <= 1e-4, deviations


def test_dinov2s_own_resize_rule_is_not_exported_for_any_size(models, tmp_path):
    from tinyvit.export import export_onnx

    with pytest.raises(tinyvit.TinyViTError, match="DINOv2's own resize rule"):
        export_onnx(models["dinov2_vits"], tmp_path / "m.onnx", dynamic_size=True)


UNSUPPORTED = json.loads((FIXTURES / "unsupported.json").read_text())["cases"]


@pytest.mark.parametrize("name", list(UNSUPPORTED))
def test_the_rotary_families_once_refused_now_load(name, tmp_path):
    """DINOv3, EVA02, Perception Encoder checkpoints as their libraries save them
    (tests/fixtures/unsupported.json): refused in one line before issue #26, now configs of the one
    model (tests/test_rope.py checks their numbers against the libraries)."""
    case = UNSUPPORTED[name]
    (tmp_path / "config.json").write_text(json.dumps(case["config.json"]))
    save_file({k: torch.zeros(shape) for k, shape in case["keys"].items()}, str(tmp_path / "model.safetensors"))
    model = tinyvit.load(tmp_path)
    assert model.config.use_rot_pos_emb and type(model) is tinyvit.VisionTransformer
    size = model.config.image_size
    with torch.inference_mode():
        assert model.forward_features(torch.zeros(1, 3, size, size)).shape[-1] == model.config.embed_dim


HUB_LOAD = """
    import json, torch, tinyvit
    import test_families as tf
    model = tinyvit.load({spec!r})
    name = {case!r}
    with torch.inference_mode():
        got = tf.tinyvit_output(model, tf.CASES[name], "encode_image", tf.inputs(name, 0))
    print(json.dumps({{"err": (got - tf.REF[name + "/encode_image"]).abs().max().item(),
                      "file": model.weights.source.filename, "output": model.weights.output}}))
"""


def test_an_open_clip_hub_repository_loads_by_its_own_file_names(tmp_path):
    """hf-hub: repositories name their weights as their library saves them: open_clip's
    open_clip_model.safetensors beside open_clip_config.json (no model.safetensors)."""
    from hubserver import HubServer
    from test_hub import run_py

    folder = write_case("oc_clip", tmp_path / "oc")
    with HubServer() as hub:
        for f in folder.iterdir():
            hub.add_file("acme/oc-clip", f.name, f.read_bytes())
        out = run_py(HUB_LOAD.format(spec="hf-hub:acme/oc-clip", case="oc_clip"), tmp_path / "home", hub.url)
    assert out["err"] <= TOL and out["file"] == "open_clip_model.safetensors" and out["output"] == "embedding"
