"""The CPU GEMM paths (tinyvit/run/cpu.py, tinyvit/models/_linear.py): each path this torch has,
forced in turn, gives logits within 1e-5 relative of float64 on every family's shape of network;
``exact`` is the reference, bit for bit; the measured choice is cached, and a torch without
oneDNN runs the default."""

from __future__ import annotations

import copy
import gc
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import small_vit_file
from huggingface_hub import constants
from torch import nn

import tinyvit
from tinyvit.models._linear import FoldedScale, PackedLinear, pack_linears, residual_add_available, unpack_linears
from tinyvit.run import cpu
from tinyvit.run.options import ModelOptions
from tinyvit.run.runtime import cached_model, clear_model_cache

SMALL = dict(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
FAMILIES = {
    "vit": {},
    "deit_distilled": dict(dist_token=True),
    "dinov2_reg": dict(reg_tokens=4, init_values=1e-5, global_pool="token"),
    "clip": dict(pre_norm=True, act_layer="quick_gelu", head_bias=False),
    "siglip_map": dict(class_token=False, global_pool="map", no_embed_class=True),
    "eva_swiglu_rope": dict(swiglu_mlp=True, scale_mlp=True, use_rot_pos_emb=True, use_abs_pos_emb=False,
                            class_token=False, global_pool="avg", fc_norm=True),  # fmt: skip
}
PATHS = cpu.available_paths()
# the weight dtypes oneDNN packs here (bf16 not below AVX-512: tested apart, under an instruction-set cap)
PACKED_DTYPES = [d for d in (torch.float32, torch.bfloat16) if cpu.onednn_available(d)]


@pytest.fixture(autouse=True)
def fresh_choice(monkeypatch, tmp_path):
    """Each test measures (or reads) into its own HF_HOME, with nothing remembered in the process."""
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv(cpu.ENV, raising=False)
    cpu._CHOICES.clear()
    clear_model_cache()
    yield
    cpu._CHOICES.clear()
    clear_model_cache()


def small_model(family: str, seed: int = 0) -> tinyvit.VisionTransformer:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return tinyvit.VisionTransformer(tinyvit.ViTConfig(**SMALL, **FAMILIES[family])).init_weights().eval()


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want).abs().max() / want.abs().max()).item()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("family", FAMILIES)
def test_each_path_is_within_1e5_of_float64(family, path, monkeypatch):
    monkeypatch.setenv(cpu.ENV, path)
    model = small_model(family)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        want = copy.deepcopy(model).double()(x.double())
        choice = cpu.apply_cpu_path(model)
        got = model(x)
    assert choice.path == path and choice.how == "forced"
    assert any(isinstance(m, PackedLinear) for m in model.modules()) == (path == "onednn")
    assert relative_error(got, want) <= 1e-5, (family, path)


def test_exact_is_the_reference_bit_for_bit(tmp_path, monkeypatch):
    """``exact`` loads what ``tinyvit.load`` loads (the kernels timm runs, which test_parity holds
    to 0.0), even where the fast path is another."""
    monkeypatch.setenv(cpu.ENV, PATHS[-1])
    path = small_vit_file(tmp_path)
    exact = cached_model(path, ModelOptions(exact=True))
    fast = cached_model(path, ModelOptions())
    reference = tinyvit.load(path)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        exact(x), fast(x)  # the runtime packs at the second forward pass
        assert not any(isinstance(m, PackedLinear) for m in exact.modules()) and not hasattr(exact, "gemm")
        assert torch.equal(exact(x), reference(x))
        assert relative_error(fast(x), reference.double()(x.double())) <= 1e-5
    assert exact is not fast


def test_predict_embed_and_fit_run_on_the_chosen_path(tmp_path, monkeypatch):
    monkeypatch.setenv(cpu.ENV, PATHS[-1])
    path = small_vit_file(tmp_path)
    model = cached_model(path)
    assert model.gemm.path == PATHS[-1]
    assert isinstance(model.head, nn.Linear)  # the head stays dense: fit reads and replaces it
    photo = torch.rand(3, 40, 48)
    got, exact = tinyvit.predict(photo, str(path)), tinyvit.predict(photo, str(path), exact=True)
    assert got.label == exact.label
    torch.testing.assert_close(got.scores, exact.scores, atol=1e-5, rtol=0)
    assert tinyvit.embed(photo, str(path)).shape == (64,)


def test_the_forward_pass_that_packs_gives_the_models_output(tmp_path, monkeypatch):
    """Packing happens as the second forward pass starts, inside it: that pass, too, equals the model
    as built (a DINOv3 folder: LayerScale, folded into the layers as they are packed — a block that
    had read its LayerScale before its attention was packed would scale twice)."""
    from test_rope import write_case

    monkeypatch.setenv(cpu.ENV, "onednn")
    folder = str(write_case("timm_dinov3", tmp_path / "dinov3"))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = tinyvit.load(folder).forward_features(x)
        model = cached_model(folder)
        passes = [model.forward_features(x) for _ in range(3)]
    assert any(type(m).__name__ == "PackedLinear" for m in model.modules())
    for got in passes:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5 * want.abs().max().item())


def test_a_model_first_run_inside_inference_mode_packs_and_runs_outside_it(tmp_path, monkeypatch):
    """A user's ``with torch.inference_mode():`` around the first calls builds the model's tensors as
    inference tensors; packing (at its second forward pass) leaves it usable after that block too."""
    monkeypatch.setenv(cpu.ENV, PATHS[-1])
    path, photo = str(small_vit_file(tmp_path)), torch.rand(3, 40, 48)
    with torch.inference_mode():
        first = [tinyvit.predict(photo, path) for _ in range(3)]
    after = tinyvit.predict(photo, path)
    assert cached_model(path).gemm.path == PATHS[-1]
    torch.testing.assert_close(after.scores, first[-1].scores, atol=1e-6, rtol=0)


@pytest.mark.skipif("onednn" not in PATHS, reason="this torch has no oneDNN")
def test_a_packed_model_keeps_its_tensors_keys_and_copies():
    model = small_model("dinov2_reg")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert pack_linears(model) == 2 * 4  # qkv, proj, fc1, fc2 per block; the head is not packed
    mlp = model.blocks[0].mlp
    assert type(mlp.act) is nn.Identity and type(mlp.fc1.fused) is nn.GELU  # GELU inside fc1's GEMM
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        y = model(x)
        assert torch.equal(copy.deepcopy(model)(x), y)  # pickled as dense tensors, packed again
        other = small_model("dinov2_reg", seed=1)
        pack_linears(other)
        other.load_state_dict(before)  # a packed model loads the dense tensors: packed again
        assert torch.equal(other(x), y)
        assert model.blocks[0].attn.qkv.weight.shape == (192, 64)
        unpack_linears(model)
        assert all(type(m) is not PackedLinear for m in model.modules()) and type(mlp.act) is nn.GELU
        assert torch.equal(model(x), small_model("dinov2_reg")(x))
        assert torch.equal(model.state_dict()["blocks.0.mlp.fc1.weight"], before["blocks.0.mlp.fc1.weight"])


@pytest.mark.skipif("onednn" not in PATHS, reason="this torch has no oneDNN")
def test_bf16_weights_take_the_path_measured_for_bf16(monkeypatch):
    monkeypatch.setenv(cpu.ENV, "onednn")
    model = small_model("vit").to(torch.bfloat16)
    x = torch.randn(2, 3, 32, 32).bfloat16()
    with torch.inference_mode():
        want = model(x).float()
        assert cpu.apply_cpu_path(model).dtype == "bfloat16"
        torch.testing.assert_close(model(x).float(), want, atol=0.05, rtol=0.05)


def test_the_measurement_is_cached_per_cpu_and_torch(monkeypatch):
    monkeypatch.setattr(cpu, "SHAPES", ((32, 64, 128),))
    first = cpu.gemm_choice(torch.float32)
    assert first.how in ("measured", "only path")
    if first.how == "only path":
        pytest.skip("one path: nothing measured")
    assert first.path in PATHS and set(first.gflops) == set(PATHS) and all(g > 0 for g in first.gflops.values())
    data = json.loads(cpu.cache_file().read_text())
    assert data["format"] == cpu.CACHE_FORMAT and cpu.machine_key(torch.float32) in data["choices"]
    assert cpu.torch.__version__ in cpu.machine_key(torch.float32) and cpu.cpu_model() in cpu.machine_key(torch.float32)
    cpu._CHOICES.clear()
    monkeypatch.setattr(cpu, "measure_paths", lambda *a, **k: pytest.fail("measured again"))
    again = cpu.gemm_choice(torch.float32)
    assert (again.path, again.gflops, again.how) == (first.path, first.gflops, "cached")


def test_a_broken_cache_file_is_measured_again(monkeypatch, caplog):
    monkeypatch.setattr(cpu, "SHAPES", ((32, 64, 128),))
    cpu.cache_file().parent.mkdir(parents=True)
    cpu.cache_file().write_text("{not json")
    choice = cpu.gemm_choice(torch.float32)
    assert choice.how in ("measured", "only path")
    if choice.how == "measured":
        assert "measuring again" in caplog.text and json.loads(cpu.cache_file().read_text())["choices"]


def test_the_default_wins_unless_another_path_is_faster_by_the_margin(monkeypatch):
    monkeypatch.setattr(cpu, "available_paths", lambda dtype=None: cpu.PATHS)
    monkeypatch.setattr(cpu, "measure_paths", lambda *a, **k: {"default": 100.0, "onednn": 103.0})
    assert cpu.gemm_choice(torch.float32).path == "default"
    cpu._CHOICES.clear()
    cpu.cache_file().unlink()
    monkeypatch.setattr(cpu, "measure_paths", lambda *a, **k: {"default": 100.0, "onednn": 240.0})
    assert cpu.gemm_choice(torch.float32).describe().startswith("float32 GEMM: oneDNN prepacked, 240 GFLOP/s")


def test_a_torch_without_onednn_runs_the_default(monkeypatch):
    monkeypatch.setattr(cpu, "onednn_available", lambda dtype=None: False)
    assert cpu.available_paths() == ("default",)
    choice = cpu.gemm_choice(torch.float32)
    assert (choice.path, choice.how) == ("default", "only path") and not cpu.cache_file().exists()
    monkeypatch.setenv(cpu.ENV, "onednn")  # forced, but not there: the default
    model = small_model("vit")
    assert cpu.apply_cpu_path(model).path == "default"
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


ISA_CAPPED = """
import json, torch, tinyvit
from tinyvit.run import cpu
model = tinyvit.VisionTransformer(tinyvit.ViTConfig(**{small})).init_weights().eval()
x = torch.randn(2, 3, 32, 32)
with torch.inference_mode():
    want = model(x)
    model = model.to(torch.bfloat16)
    choice = cpu.apply_cpu_path(model)
    error = (model(x.bfloat16()).float() - want).abs().max().item()
print(json.dumps({{"bf16": [choice.path, choice.how], "fp32": cpu.available_paths(torch.float32),
                   "key": cpu.machine_key(torch.bfloat16), "error": error}}))
"""


@pytest.mark.skipif("onednn" not in PATHS or platform.machine().lower() not in ("x86_64", "amd64"),
                    reason="oneDNN's instruction-set cap is an x86 matter")  # fmt: skip
def test_bf16_weights_where_onednn_has_no_bf16_kernels_run_the_default(tmp_path):
    """An AVX2-only CPU (oneDNN capped at AVX2 stands for one): torch refuses to pack bf16 weights
    there, so bf16 has the default path only (fp32 keeps both), measured apart from the uncapped."""
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "HF_HOME": str(tmp_path / "hf")}
    env.pop(cpu.ENV, None)
    run = subprocess.run([sys.executable, "-c", ISA_CAPPED.format(small=SMALL)], env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["bf16"] == ["default", "only path"] and out["fp32"] == list(PATHS)
    assert "| ONEDNN_MAX_CPU_ISA=AVX2" in out["key"] and out["error"] < 0.1


def test_an_unknown_forced_path_is_one_line(monkeypatch):
    monkeypatch.setenv(cpu.ENV, "mkl")
    with pytest.raises(tinyvit.TinyViTError, match="TINYVIT_CPU_GEMM='mkl': use one of default, onednn"):
        cpu.gemm_choice(torch.float32)


def test_models_cpu_says_the_path_and_the_figures(monkeypatch, capsys):
    from tinyvit.deploy.cli import main

    monkeypatch.setattr(cpu, "SHAPES", ((32, 64, 128),))
    assert main(["models", "--cpu", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["dtype"] for c in out["choices"]] == ["float32", "bfloat16"] and out["paths"] == list(PATHS)
    assert main(["models", "--cpu"]) == 0
    assert "float32 GEMM: " in capsys.readouterr().out


@pytest.mark.skipif("onednn" not in PATHS, reason="this torch has no oneDNN")
def test_a_packed_model_exports_as_plain_linear_layers(tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    from tinyvit.export import export_onnx

    monkeypatch.setenv(cpu.ENV, "onednn")
    model = cached_model(small_vit_file(tmp_path))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        model(x), model(x)  # packed at the second
    out = export_onnx(model, tmp_path / "small.onnx")
    assert any(isinstance(m, PackedLinear) for m in model.modules())  # the model itself is not changed
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        torch.testing.assert_close(torch.from_numpy(got), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif("onednn" not in PATHS or not Path("/proc/self/maps").is_file(), reason="oneDNN on Linux")
def test_packing_a_mapped_checkpoint_does_not_double_its_memory(tmp_path, monkeypatch):
    """The weights safetensors maps are packed, their pages given back, and the mapping closed: the
    process keeps one copy of the weights (the packed one)."""
    path = small_vit_file(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = tinyvit.load(path)(x)
    monkeypatch.setenv(cpu.ENV, "onednn")
    model = cached_model(path)
    with torch.inference_mode():
        model(x)
        assert str(path) in Path("/proc/self/maps").read_text()  # one pass: still mapped, not packed
        assert relative_error(model(x), want.double()) <= 1e-5
    gc.collect()
    assert str(path) not in Path("/proc/self/maps").read_text()


@pytest.mark.skipif("onednn" not in PATHS, reason="this torch has no oneDNN")
def test_the_runtime_packs_from_the_second_forward_pass(tmp_path, monkeypatch):
    """Packing costs about one copy of the weights: a process that predicts one image does not pay
    it; the second pass (``forward``, ``extract_feat`` alike) runs packed."""
    monkeypatch.setenv(cpu.ENV, "onednn")
    model = cached_model(small_vit_file(tmp_path))
    assert model.gemm.path == "onednn"
    x = torch.randn(2, 3, 32, 32)
    packed = []
    with torch.inference_mode():
        for run in (model.extract_feat, model.extract_feat, model):
            run(x)
            packed.append(sum(isinstance(m, PackedLinear) for m in model.modules()))
    assert packed == [0, 8, 8]
    assert not any(t.is_inference() for t in model.state_dict().values())  # packed in inference mode, usable outside


@pytest.mark.skipif(not residual_add_available(), reason="this torch's oneDNN linear has no binary post-op")
@pytest.mark.parametrize("dtype", PACKED_DTYPES)
def test_a_packed_layer_adds_the_residual_inside_its_gemm(dtype):
    """The hook ``torch.ops.mkldnn._linear_pointwise.binary(x, other, W, b, "add")``: 3-D and 2-D
    inputs, batch sizes other than any packed for, no bias; a residual it cannot take (another
    dtype, as under autocast, or one that broadcasts) is added after it."""
    gen = torch.Generator().manual_seed(3)
    linear = nn.Linear(48, 32).to(dtype)
    packed, plain = PackedLinear(linear), PackedLinear(nn.Linear(48, 32, bias=False).to(dtype))
    assert packed.adds_residual and not PackedLinear(nn.Linear(48, 32), nn.GELU()).adds_residual
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    with torch.inference_mode():
        for shape in ((5, 7, 48), (1, 1, 48), (9, 48), (2, 145, 48)):
            x = torch.randn(shape, generator=gen).to(dtype)
            r = torch.randn(*shape[:-1], 32, generator=gen).to(dtype)
            want = F.linear(x.double(), linear.weight.double(), linear.bias.double()) + r.double()
            got = packed(x, r)
            assert got.dtype == dtype and got.shape == r.shape
            torch.testing.assert_close(got.double(), want, atol=tol, rtol=tol)
            torch.testing.assert_close(plain(x, r).double(), F.linear(x.double(), plain.weight.double()) + r.double(),
                                       atol=tol, rtol=tol)  # fmt: skip
        x = torch.randn(4, 6, 48, generator=gen).to(dtype)
        for r in (torch.randn(4, 6, 32, generator=gen), torch.randn(1, 6, 32, generator=gen).to(dtype)):
            got = packed(x, r)
            assert got.dtype == torch.promote_types(r.dtype, dtype) and got.shape == (4, 6, 32)
            assert torch.equal(got, r + packed(x))


@pytest.mark.skipif(not residual_add_available(), reason="this torch's oneDNN linear has no binary post-op")
def test_a_block_hands_its_residual_to_the_packed_projections(monkeypatch):
    """After packing, each block's attn.proj and mlp.fc2 add the residual (LayerScale folded in);
    nothing else adds one."""
    model = small_model("dinov2_reg")
    pack_linears(model)
    handed = []
    forward = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x, residual=None: handed.append(
        residual is not None) or forward(self, x, residual))  # fmt: skip
    with torch.inference_mode():
        model(torch.randn(2, 3, 32, 32))
    assert handed == [False, True, False, True] * 2  # qkv, proj + residual, fc1, fc2 + residual; per block
    assert all(type(b.ls1) is FoldedScale and type(b.ls2) is FoldedScale for b in model.blocks)


@pytest.mark.skipif("onednn" not in PATHS, reason="this torch has no oneDNN")
@pytest.mark.parametrize("dtype", PACKED_DTYPES)
def test_a_folded_layerscale_keeps_the_weights_bit_for_bit(dtype):
    """gamma ⊙ (x Wᵀ + b) packed as x (gamma ⊙ W)ᵀ + gamma ⊙ b: within the path's tolerance, and the
    state_dict, copies, a reload with another gamma and unpacking give the originals back exactly."""
    model = small_model("dinov2_reg")
    with torch.no_grad():  # trained-looking gammas: not the constant init value
        for block in model.blocks:
            block.ls1.gamma.copy_(torch.rand(64, generator=torch.Generator().manual_seed(4)) * 0.5 + 1e-6)
    model = model.to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32).to(dtype)
    with torch.inference_mode():
        want = copy.deepcopy(model).double()(x.double())
        reference = model(x)
        pack_linears(model)
        layer = model.blocks[0].attn.proj
        assert layer.gamma is not None and "LayerScale" in repr(layer) and torch.equal(layer.weight, before[
            "blocks.0.attn.proj.weight"])  # fmt: skip
        y = model(x)
        if dtype == torch.float32:
            assert relative_error(y, want) <= 1e-5
        else:
            torch.testing.assert_close(y.float(), reference.float(), atol=0.05, rtol=0.05)
        after = model.state_dict()
        assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
        assert torch.equal(copy.deepcopy(model)(x), y)
        other = {**before, "blocks.1.ls2.gamma": before["blocks.1.ls2.gamma"] * 3}
        model.load_state_dict(other)  # the new gamma folded in again, the weights still the originals
        assert torch.equal(model.state_dict()["blocks.1.mlp.fc2.weight"], before["blocks.1.mlp.fc2.weight"])
        model.load_state_dict(before)
        assert torch.equal(model(x), y)
        unpack_linears(model)
        assert type(model.blocks[0].ls1).__name__ == "LayerScale" and torch.equal(model(x), reference)


@pytest.mark.skipif("onednn" not in PATHS, reason="this torch has no oneDNN")
def test_a_layerscale_that_cannot_be_folded_stays_as_it_is():
    model = small_model("dinov2_reg")
    with torch.no_grad():
        model.blocks[0].ls2.gamma[3] = 0.0  # the weights could not be recovered from the scaled ones
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = copy.deepcopy(model).double()(x.double())
        pack_linears(model)
        assert type(model.blocks[0].ls2).__name__ == "LayerScale" and model.blocks[0].mlp.fc2.gamma is None
        assert type(model.blocks[0].ls1) is FoldedScale
        assert relative_error(model(x), want) <= 1e-5
