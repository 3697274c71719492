"""Meta's own DINOv3 checkpoints (issue #26): the ``.pth`` files facebookresearch/dinov3 publishes
(``dinov3_vits16_pretrain_lvd1689m-*.pth``: its ``DinoVisionTransformer``'s state dict) load as
they are. Expected values come from that repository's own code (tests/fixtures/dinov3_meta.*, made
by scripts/make_dinov3_meta_fixtures.py, which records the commit): ``forward_features``' class,
storage and patch tokens at the released 224 px and at 160x208, and the photos through its
evaluation transform."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from refdata import fill, make_input
from safetensors.torch import load_file

import tinyvit
from tinyvit.weights.layouts import detect_layout

FX = json.loads((FIXTURES / "dinov3_meta.json").read_text())
REF = load_file(FIXTURES / "dinov3_meta.safetensors")
CASES = FX["cases"]
TOL = 1e-5  # relative to the largest reference value


def meta_weight(name: str, shape) -> np.ndarray:
    """The fixture's weights (scripts/make_dinov3_meta_fixtures.py has the same function)."""
    w = fill(name, shape)
    if name.endswith((".ls1.gamma", ".ls2.gamma")):
        return (1 + 10 * w).astype(np.float32)
    if name.endswith(".attn.qkv.bias"):  # within ±0.5: the key third (masked out) would show if it were kept
        return (25 * w).astype(np.float32)
    return w


def meta_state(name: str) -> dict[str, torch.Tensor]:
    case = CASES[name]
    buffers = {k: torch.tensor(v, dtype=torch.float32) for k, v in case["buffers"].items()}
    return {k: buffers[k] if k in buffers else torch.from_numpy(meta_weight(k, shape))
            for k, (shape, _) in case["keys"].items()}  # fmt: skip


def write_pth(folder: Path, name: str, state: dict | None = None, file_name: str | None = None) -> Path:
    """The case's file as Meta publishes it: ``torch.save`` of the state dict, under Meta's file name."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (file_name or CASES[name]["file_name"])
    torch.save(meta_state(name) if state is None else state, path)
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, tinyvit.VisionTransformer]:
    root = tmp_path_factory.mktemp("dinov3_meta")
    return {name: tinyvit.load(write_pth(root / name, name)) for name in CASES}


def inputs(name: str, i: int) -> torch.Tensor:
    spec = CASES[name]["inputs"][i]
    return torch.from_numpy(make_input(spec["name"], spec["shape"]))


def tokens(model: tinyvit.VisionTransformer, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """tinyvit's final tokens, cut as DINOv3's forward_features names them."""
    with torch.inference_mode():
        t = model.forward_features(x)
    r = model.config.num_prefix_tokens
    return {"x_norm_clstoken": t[:, 0], "x_storage_tokens": t[:, 1:r], "x_norm_patchtokens": t[:, r:]}


def delta(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape
    return 0.0 if want.numel() == 0 else (got - want).abs().max().item() / max(want.abs().max().item(), 1.0)


PAIRS = [(name, out) for name, case in CASES.items() for out in case["outputs"]]


@pytest.mark.parametrize("name, output", PAIRS, ids=[f"{n}/{o}" for n, o in PAIRS])
def test_outputs_equal_dinov3s_own_code(models, name, output):
    out, _, i = output.partition("@")
    got = tokens(models[name], inputs(name, int(i)))[out]
    assert delta(got, REF[f"{name}/{output}"]) <= TOL


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("i", [0, 1])
def test_patch_features_and_embedding_are_dinov3s(models, name, i):
    """``tinyvit.patch_features``: x_norm_patchtokens on the patch grid; the model's output: x_norm_clstoken."""
    model, x = models[name], inputs(name, i)
    h, w = x.shape[-2] // 16, x.shape[-1] // 16
    want = REF[f"{name}/x_norm_patchtokens@{i}"].reshape(x.shape[0], h, w, -1)
    assert delta(tinyvit.patch_features(x, model), want) <= TOL
    with torch.inference_mode():
        assert delta(model(x), REF[f"{name}/x_norm_clstoken@{i}"]) <= TOL


def test_the_architecture_read_from_the_tensors(models):
    c = {name: m.config for name, m in models.items()}
    assert [c[n].num_heads for n in CASES] == [CASES[n]["constructor_kwargs"]["num_heads"] for n in CASES]
    assert c["meta_splus"].swiglu_mlp and c["meta_splus"].mlp_dim == 384 and c["meta_splus"].reg_tokens == 4
    assert not c["meta_base"].swiglu_mlp and c["meta_base"].qkv_bias and c["meta_base"].reg_tokens == 4
    assert c["meta_7b"].mlp_dim == 128 and not c["meta_7b"].qkv_bias and c["meta_7b"].reg_tokens == 0
    assert c["meta_7b"].norm_layer == "rmsnorm" and c["meta_base"].norm_layer == "layernorm"
    for config in c.values():
        assert (config.rope_type, config.rope_temperature, config.rope_rotate_half) == ("dinov3", 100.0, True)
        assert config.layer_norm_eps == 1e-5 and config.init_values and not config.use_abs_pos_emb
        assert (config.image_size, config.patch_size, config.global_pool, config.num_classes) == (224, 16, "token", 0)
    record = models["meta_base"].weights
    assert record.output == "embedding" and record.source.layout == "dinov2"
    assert record.source.filename == CASES["meta_base"]["file_name"]


def test_detected_by_its_keys():
    assert detect_layout(CASES["meta_base"]["keys"]) == "dinov2"
    assert detect_layout([k for k in CASES["meta_7b"]["keys"] if k != "mask_token"]) == "dinov2"


def test_the_key_bias_is_masked_as_dinov3_masks_it(tmp_path):
    """LinearKMaskedBias adds bias * bias_mask: a loader that dropped the mask unapplied would be
    this far off (the fixture script measured it with DINOv3's own code too)."""
    state = meta_state("meta_base")
    masks = [k for k in state if k.endswith("bias_mask")]
    assert masks and all(state[k].tolist() != [1.0] * state[k].numel() for k in masks)
    ones = {k: torch.ones_like(state[k]) for k in masks}
    unmasked = tinyvit.load(write_pth(tmp_path, "meta_base", {**state, **ones}))
    off = delta(tokens(unmasked, inputs("meta_base", 0))["x_norm_patchtokens"], REF["meta_base/x_norm_patchtokens@0"])
    assert off > 100 * TOL and CASES["meta_base"]["sensitivity"]["key_bias_unmasked"] > 100 * TOL


PHOTOS = FX["photos"]


def test_photos_through_dinov3s_evaluation_transform(models):
    """make_classification_eval_transform (short edge 256, bicubic on torchvision's uint8 tensors,
    centre crop 224, ImageNet mean / std): every pixel equal, and the class tokens on them."""
    model = models[PHOTOS["case"]]
    spec = model.weights.preprocess
    assert (spec.resize, spec.crop, spec.interpolation, spec.backend) == (256, 224, "bicubic", "torch")
    assert spec.mean == pytest.approx([255 * m for m in PHOTOS["mean"]]) and spec.std == pytest.approx(
        [255 * s for s in PHOTOS["std"]]
    )
    x = tinyvit.preprocess([FIXTURES / "photos" / f"{p}.jpg" for p in PHOTOS["order"]], model)
    mean, std = torch.tensor(spec.mean).view(3, 1, 1), torch.tensor(spec.std).view(3, 1, 1)
    for photo, xi in zip(PHOTOS["order"], x, strict=True):
        pixels = (xi * std + mean).round().clamp(0, 255).to(torch.uint8).numpy()
        assert hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest() == PHOTOS["pixels"][photo]["sha256"]
    with torch.inference_mode():
        assert (model(x) - REF[PHOTOS["output"]["safetensors_key"]]).abs().max().item() <= 1e-4


def test_satellite_weights_get_their_own_statistics(tmp_path):
    """dinov3_vitl16_pretrain_sat493m-*.pth: its README's mean / std for the SAT-493M weights."""
    model = tinyvit.load(write_pth(tmp_path, "meta_base", file_name="dinov3_vitl16_pretrain_sat493m-00000000.pth"))
    spec = model.weights.preprocess
    assert spec.mean == pytest.approx([255 * m for m in (0.430, 0.411, 0.296)])
    assert spec.std == pytest.approx([255 * s for s in (0.213, 0.156, 0.143)])


def test_what_the_tensors_cannot_show_can_be_stated(tmp_path):
    """The eps of a model trained with norm_layer="layernorm" (1e-6; every release: 1e-5)."""
    model = tinyvit.load(write_pth(tmp_path, "meta_base"), arch="layer_norm_eps=1e-6")
    assert model.config.layer_norm_eps == 1e-6 and model.config.num_heads == 2


def _refused(tmp_path: Path, state: dict) -> str:
    path = write_pth(tmp_path, "meta_base", state)
    with pytest.raises(tinyvit.WeightsError) as err:
        tinyvit.load(path)
    msg = str(err.value)
    assert "\n" not in msg and path.name in msg
    return msg


def test_what_tinyvit_does_not_implement_is_refused_in_one_line(tmp_path):
    state = meta_state("meta_base")
    untied = {**state, "cls_norm.weight": state["norm.weight"], "cls_norm.bias": state["norm.bias"]}
    assert "untie_cls_and_patch_norms" in _refused(tmp_path / "a", untied)
    periods = state["rope_embed.periods"]
    spaced = {**state, "rope_embed.periods": torch.linspace(0.5, 4.0, periods.numel())}  # min / max periods
    assert "min_period / max_period" in _refused(tmp_path / "b", spaced)
    odd = {**state, "rope_embed.periods": torch.ones(3)}  # 3 periods: head dim 12 does not divide 64
    assert "do not divide" in _refused(tmp_path / "c", odd)
    unset = {**state, "blocks.0.attn.qkv.bias_mask": torch.full_like(state["blocks.0.attn.qkv.bias_mask"], np.nan)}
    assert "init_weights" in _refused(tmp_path / "d", unset)


def test_onnx_export_with_any_image_size(models, tmp_path):
    """No position embedding, so no size-dependent rule: one graph for any size (without storage tokens too)."""
    from tinyvit.export import check_onnx, export_onnx

    model = models["meta_7b"]
    path = export_onnx(model, tmp_path / "m.onnx", dynamic_size=True)
    assert max(check_onnx(model, path, [(224, 224), (160, 208)]).values()) <= 1e-4
