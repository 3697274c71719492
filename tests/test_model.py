"""The architecture: parameter counts, shapes, attention maps, other input sizes, lean loading."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import case_state, load_parity, mapped_ranges, small_config

import tinyvit
from tinyvit.core.config import count_macs
from tinyvit.images.spec import SizeRule
from tinyvit.models.vit import resample_pos_embed
from tinyvit.weights.manifest import entries

META, _ = load_parity()


@pytest.mark.parametrize("name", ["vit-base-p32-384", "vit-base-p16-224", "vit-base-p16-384", "vit-large-p16-384"])
def test_parameter_counts_match_timm_mmpretrain_and_manifest(name):
    counts = META["param_counts"][name]  # counted by timm and mmpretrain (scripts/make_fixtures.py)
    with torch.device("meta"):  # counting needs no memory
        model = tinyvit.VisionTransformer(entries()[name].arch)
    n = sum(p.numel() for p in model.parameters())
    assert n == counts["timm"] == counts["mmpretrain"] == entries()[name].params


def test_must_show_param_count_command():
    code = "import tinyvit; print(sum(p.numel() for p in tinyvit.get_model('vit-base-p32-384').parameters()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "88297192"


@pytest.mark.parametrize("name", list(entries()))
def test_macs_agree_with_published_gmacs(name):
    e = entries()[name]
    assert count_macs(e.arch) / 1e9 == pytest.approx(e.gmacs, rel=0.005)


def test_get_model_is_eval_and_runs():
    model = tinyvit.get_model("vit-base-p32-384")
    assert not model.training
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 384, 384)).shape == (1, 1000)
    assert model.weights.preprocess.crop == 384
    assert model.weights.source.kind == "init" and "randomly initialised" in model.weights.spec


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(tinyvit.UnknownModelError, match="vit-huge.*models: vit-base-p32-384"):
        tinyvit.get_model("vit-huge")


@pytest.fixture(scope="module")
def small_model():
    case = META["cases"]["timm_small"]
    model = tinyvit.VisionTransformer(small_config(META), SizeRule(pad=True, resample="bicubic"))  # mmpretrain's
    model.load_state_dict(case_state(case))
    return model.eval()


def test_output_shapes(small_model):
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        tokens = small_model.forward_features(x)
        assert tokens.shape == (3, 17, 64)  # (B, N + 1, D)
        assert small_model.forward_head(tokens).shape == (3, 10)
        assert torch.equal(small_model.forward_head(tokens, pre_logits=True), tokens[:, 0])
        assert torch.equal(small_model.extract_feat(x), tokens[:, 0])
        assert torch.equal(small_model(x), small_model.head(tokens[:, 0]))


def explicit_attention(block, x):
    """softmax(Q Kᵀ / √d) for one block, written out from its qkv weights."""
    B, T, D = x.shape
    H = block.attn.num_heads
    qkv = torch.nn.functional.linear(block.norm1(x), block.attn.qkv.weight, block.attn.qkv.bias)
    q, k, v = qkv.split(D, dim=-1)
    q, k, v = (t.reshape(B, T, H, D // H).transpose(1, 2) for t in (q, k, v))
    probs = torch.softmax(q @ k.transpose(-1, -2) / (D // H) ** 0.5, dim=-1)
    return probs, probs @ v


def test_attention_maps_match_explicit_computation(small_model):
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        out = small_model.forward_trace(x, attention=True)
        tokens, maps = out.tokens, out.attention
        assert len(maps) == small_model.config.depth
        # walk the blocks by hand, checking each block's map before moving on
        h, _ = small_model.patch_embed(x)
        h = torch.cat((small_model.cls_token.expand(2, -1, -1), h), dim=1) + small_model.pos_embed
        for block, got in zip(small_model.blocks, maps, strict=True):
            probs, mixed = explicit_attention(block, h)
            assert got.shape == (2, 4, 17, 17)  # (B, heads, N + 1, N + 1)
            torch.testing.assert_close(got, probs, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(got.sum(-1), torch.ones(2, 4, 17))
            h = h + block.attn.proj(mixed.transpose(1, 2).reshape(2, 17, -1))
            h = h + block.mlp(block.norm2(h))
        assert not torch.allclose(maps[0][0, 0], torch.full((17, 17), 1 / 17), atol=1e-3)  # not uniform
        # asking for the maps does not change the result of the SDPA path
        torch.testing.assert_close(tokens, small_model.forward_features(x), atol=1e-5, rtol=1e-5)


def test_other_input_sizes_resize_the_position_embedding(small_model):
    with torch.inference_mode():
        for size in [(24, 24), (24, 40), (20, 30), (64, 48)]:
            out = small_model.forward_features(torch.randn(1, 3, *size))
            grid = -(-size[0] // 8) * -(-size[1] // 8)  # padded up to whole patches
            assert out.shape == (1, grid + 1, 64)
        # at the trained size the resample gives the stored embedding, bit for bit
        pe = small_model.pos_embed
        assert torch.equal(resample_pos_embed(pe, (4, 4), (4, 4)), pe)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(embed_dim=64, num_heads=5), "not divisible"),
        (dict(image_size=30, patch_size=8), "not a multiple"),
        (dict(depth=0), "depth"),
        (dict(num_classes=-1), "num_classes"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tinyvit.ViTConfig(**kwargs)


def test_config_round_trip_and_unknown_fields():
    cfg = tinyvit.ViTConfig(image_size=384, patch_size=32)
    assert tinyvit.ViTConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="unknown ViTConfig field"):
        tinyvit.ViTConfig.from_dict({**cfg.to_dict(), "hidden_size": 3})


def test_headless_model():
    with torch.device("meta"):
        model = tinyvit.VisionTransformer(tinyvit.ViTConfig(num_classes=0))
    assert isinstance(model.head, torch.nn.Identity)


def _small_file(path):
    """The small timm case as a tinyvit file (its record states the architecture)."""
    from tinyvit.weights.files import save

    record = tinyvit.Weights(
        config=small_config(META), preprocess=None, categories=None, source=tinyvit.Source(kind="file", layout="timm")
    )
    return save(path, case_state(META["cases"]["timm_small"]), record)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
@pytest.mark.parametrize("kind", ["tinyvit", "timm"])
def test_load_is_zero_copy_from_the_file(kind, tmp_path):
    """Every parameter of a loaded float32 model lies inside the file's memory mapping, for a
    tinyvit file and for a plain timm safetensors file loaded directly."""
    from safetensors.torch import save_file

    if kind == "tinyvit":
        path = _small_file(tmp_path / "w.safetensors")
    else:
        path = tmp_path / "timm.safetensors"
        save_file(case_state(META["cases"]["timm_b32_384"]), str(path))
    model = tinyvit.load(path, arch=None if kind == "tinyvit" else "vit_base_patch32_384")
    ranges = mapped_ranges(path.resolve())
    assert ranges, "the weights file is not memory-mapped"
    for name, p in model.named_parameters():
        assert any(lo <= p.data_ptr() < hi for lo, hi in ranges), f"{name} was copied"


def test_build_does_not_initialise_randomly(tmp_path, monkeypatch):
    """Loading builds on the meta device: no init function ever touches a real tensor."""
    path = _small_file(tmp_path / "w.safetensors")
    touched = []
    for fn in ("kaiming_uniform_", "uniform_", "normal_", "trunc_normal_", "zeros_", "ones_"):
        original = getattr(torch.nn.init, fn)

        def spy(tensor, *args, _original=original, **kwargs):
            if not tensor.is_meta:
                touched.append(tuple(tensor.shape))
            return _original(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.nn.init, fn, spy)
    tinyvit.load(path)
    assert touched == []
    tinyvit.get_model("vit-base-p32-384")  # the spy does see a random initialisation
    assert touched


def test_one_meaning_per_name(small_model):
    """``embed`` means the image embedding (tinyvit.embed, tinyvit embed); the model's step that
    makes the tokens entering the first block has its own name (issue #29, item 6)."""
    assert not hasattr(small_model, "embed")
    x = torch.randn(1, 3, 32, 32)
    with torch.inference_mode():
        tokens, grid = small_model.prepare_tokens(x)
    assert grid == (4, 4) and tokens.shape == (1, 17, 64)
