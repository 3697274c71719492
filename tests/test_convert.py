"""Checkpoint conversion: layouts, architecture detection, metadata, and clear errors."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import case_input, case_state, cli, load_parity, mapped_ranges, small_config, write_checkpoint
from safetensors import safe_open
from safetensors.torch import save_file

import tinyvit
from tinyvit.weights.layouts import detect_layout
from tinyvit.weights.manifest import resolve
from tinyvit.weights.record import imagenet_classes

META, EXPECTED = load_parity()
CASES = META["cases"]


@pytest.mark.parametrize(
    "name, layout",
    [
        ("timm_small", "timm"),
        ("hf_small", "hf"),
        ("hf5_small", "hf"),
        ("mm_small", "mmpretrain"),
        ("npz_small", "npz"),
    ],  # fmt: skip
)
def test_layout_is_detected_from_the_keys(name, layout):
    assert CASES[name]["layout"] == layout
    assert detect_layout(CASES[name]["keys"]) == layout


def test_unknown_layout_lists_the_keys():
    with pytest.raises(tinyvit.WeightsError, match="cannot tell the checkpoint layout.*conv1.weight"):
        detect_layout({"conv1.weight": None, "fc.weight": None})


def test_header_carries_the_weights_record(tmp_path):
    src = write_checkpoint("timm_b32_384", CASES["timm_b32_384"], tmp_path / "src")
    dst = tinyvit.convert(src, tmp_path / "out.safetensors", arch="vit_base_patch32_384")  # bare: timm's name
    with safe_open(dst, "pt") as f:
        meta = f.metadata()
    record = tinyvit.Weights.from_json(meta["tinyvit.weights"])
    assert record.config == resolve("vit-base-p32-384").config  # the zoo's timm-layout weights
    assert record.preprocess.interpolation == "bicubic"  # timm layout: timm's pipeline
    assert record.categories == imagenet_classes().names  # the zoo architecture's head
    assert record.source.layout == "timm" and record.source.kind == "file"
    assert record.source.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors", "src"]  # no temporary left
    loaded = tinyvit.load(dst).weights
    assert loaded == dataclasses.replace(record, source=dataclasses.replace(record.source, path=str(dst)))


def test_mmpretrain_checkpoint_gets_mmpretrain_preprocessing(tmp_path):
    src = write_checkpoint("mm_b32_384", CASES["mm_b32_384"], tmp_path / "src")
    model = tinyvit.load(tinyvit.convert(src, tmp_path / "out.safetensors"))
    assert model.weights.preprocess.interpolation == "bilinear"
    assert model.weights.source.layout == "mmpretrain"


def test_hf_config_supplies_the_architecture_including_eps(tmp_path):
    case = json.loads(json.dumps(CASES["hf_small"]))
    case["hf_config"]["layer_norm_eps"] = 1e-12  # HF's default: kept, because HF computes with it
    dst = tinyvit.convert(write_checkpoint("hf_small", case, tmp_path / "src"), tmp_path / "o.safetensors")
    model = tinyvit.load(dst)
    assert model.config.layer_norm_eps == 1e-12 and model.config.num_heads == 4
    assert model.weights.preprocess is None  # no preprocessor_config.json, not a zoo architecture: unknown


def test_hf_model_safetensors_file_uses_its_sibling_config(tmp_path):
    folder = write_checkpoint("hf_small", CASES["hf_small"], tmp_path / "src")
    model = tinyvit.load(tinyvit.convert(folder / "model.safetensors", tmp_path / "o.safetensors"))
    x = case_input(CASES["hf_small"]["inputs"][0])
    torch.testing.assert_close(model(x), EXPECTED["hf_small/0/logits"], atol=1e-4, rtol=0)


def test_explicit_layout_and_arch(tmp_path):
    src = write_checkpoint("mm_small", CASES["mm_small"], tmp_path / "src")
    dst = tinyvit.convert(src, tmp_path / "o.safetensors", layout="mmpretrain", arch=small_config(META))
    assert tinyvit.load(dst).config == small_config(META)
    with pytest.raises(tinyvit.WeightsError, match="unexpected keys: backbone"):
        tinyvit.convert(src, tmp_path / "o2.safetensors", layout="hf", arch=small_config(META))
    assert not (tmp_path / "o2.safetensors").exists()


def test_heads_are_not_guessed_for_a_non_standard_width(tmp_path):
    src = write_checkpoint("timm_small", CASES["timm_small"], tmp_path / "src")  # 64 wide, 4 heads
    with pytest.raises(tinyvit.WeightsError, match="heads of a 64-wide ViT is not standard.*pass arch="):
        tinyvit.convert(src, tmp_path / "o.safetensors")
    with pytest.raises(tinyvit.WeightsError, match="not standard"):
        tinyvit.load(src)


def test_wrong_arch_lists_shape_mismatches(tmp_path):
    src = write_checkpoint("timm_b32_384", CASES["timm_b32_384"], tmp_path / "src")
    with pytest.raises(
        tinyvit.WeightsError, match=r"shape mismatches: patch_embed.proj.weight: file \(768, 3, 32, 32\)"
    ):
        tinyvit.convert(src, tmp_path / "o.safetensors", arch="vit-base-p16-384")


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    state = case_state(CASES["timm_small"])
    del state["blocks.1.mlp.fc2.bias"]
    state["blocks.0.attn.extra.weight"] = torch.ones(16)  # a key no layout knows
    save_file(state, str(tmp_path / "bad.safetensors"))
    with pytest.raises(tinyvit.WeightsError) as err:
        tinyvit.convert(tmp_path / "bad.safetensors", tmp_path / "o.safetensors", arch=small_config(META))
    assert "missing keys: blocks.1.mlp.fc2.bias" in str(err.value)
    assert "unexpected keys: blocks.0.attn.extra.weight" in str(err.value)


def test_pth_with_objects_is_refused_by_weights_only(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": case_state(CASES["mm_small"]), "hook": np.random.default_rng(0)}, path)
    with pytest.raises(tinyvit.WeightsError, match="weights_only=True"):
        tinyvit.convert(path, tmp_path / "o.safetensors", arch=small_config(META))


def test_npz_with_pre_logits_is_refused(tmp_path):
    arrays = {k: np.zeros(s, np.float32) for k, s in CASES["npz_small"]["keys"].items()}
    arrays["pre_logits/kernel"] = np.zeros((64, 64), np.float32)
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(tinyvit.WeightsError, match="pre-logits"):
        tinyvit.convert(tmp_path / "x.npz", tmp_path / "o.safetensors")


def test_missing_source_and_folder_destination(tmp_path):
    with pytest.raises(tinyvit.WeightsError, match="no such file"):
        tinyvit.convert(tmp_path / "nope.pth", tmp_path / "o.safetensors")
    src = write_checkpoint("timm_b32_384", CASES["timm_b32_384"], tmp_path / "src")
    with pytest.raises(tinyvit.WeightsError, match="is a folder"):
        tinyvit.convert(src, tmp_path)


@pytest.mark.parametrize("name", ["timm_b32_384", "hf_b32_384", "mm_b32_384"])
def test_load_reads_any_supported_checkpoint_directly(name, tmp_path):
    """No conversion step: a timm .safetensors, an HF save_pretrained folder, an mmpretrain .pth."""
    src = write_checkpoint(name, CASES[name], tmp_path / "src")
    model = tinyvit.load(src, arch="vit_base_patch32_384" if name == "timm_b32_384" else None)  # a bare state dict
    x = case_input(CASES[name]["inputs"][0])
    with torch.inference_mode():
        torch.testing.assert_close(model(x), EXPECTED[f"{name}/0/logits"], atol=1e-4, rtol=0)
    assert model.weights.source.kind == "file" and model.weights.source.layout == CASES[name]["layout"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # in memory: nothing written
    if name == "timm_b32_384":  # a timm safetensors file stays memory-mapped: no copy of the weights
        ranges = mapped_ranges(Path(src).resolve())
        assert ranges and any(lo <= model.pos_embed.data_ptr() < hi for lo, hi in ranges)


def test_cli_convert(tmp_path):
    src = write_checkpoint("mm_b32_384", CASES["mm_b32_384"], tmp_path / "src")
    dst = tmp_path / "out.safetensors"
    args = ["convert", src, dst, "--from", "mmpretrain", "--arch", "vit-base-p32-384"]
    out = cli(*args)
    assert out.returncode == 0, out.stderr
    assert "wrote" in out.stdout and dst.is_file()
    # the source line names the converted file with that file's SHA-256 (not the output's name)
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    source = next(line for line in out.stdout.splitlines() if "source:" in line)
    assert str(src) in source and sha[:12] in source and str(dst) not in source
    # an existing output is not replaced unless asked
    before = dst.stat().st_mtime_ns
    again = cli(*args)
    assert again.returncode == 1
    assert again.stderr.strip() == f"tinyvit: error: {str(dst)!r} exists; pass --overwrite to replace it"
    assert dst.stat().st_mtime_ns == before
    assert cli(*args, "--overwrite").returncode == 0
    bad = cli("convert", tmp_path / "missing.pth", tmp_path / "new.safetensors")
    assert bad.returncode == 1
    assert bad.stderr.startswith("tinyvit: error:") and "Traceback" not in bad.stderr
    assert cli("convert", src).returncode == 2


def test_timm_pth_state_dict(tmp_path):
    """timm checkpoints saved with torch.save, bare or wrapped (and with DDP's 'module.' prefix)."""
    state = case_state(CASES["timm_small"])
    x = case_input(CASES["timm_small"]["inputs"][0])
    for i, obj in enumerate([state, {"state_dict": {f"module.{k}": v for k, v in state.items()}}]):
        torch.save(obj, tmp_path / f"timm{i}.pth")
        dst = tinyvit.convert(tmp_path / f"timm{i}.pth", tmp_path / f"out{i}.safetensors", arch=small_config(META))
        torch.testing.assert_close(tinyvit.load(dst)(x), EXPECTED["timm_small/0/logits"], atol=1e-5, rtol=0)
