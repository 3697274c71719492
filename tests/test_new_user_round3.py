"""What a new user tripped on in round 3 (issue 29), each as the user ran it where that was the
command line: an embedding model is not made a classifier by a label file, open_clip's own
checkpoints load given open_clip's model name, files are written readable, one overwrite rule,
usage and scheme errors that say what is wrong."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from conftest import FIXTURES, cli
from test_families import write_case

import tinyvit
from tinyvit.core.errors import WeightsError

PHOTO = FIXTURES / "photos" / "chelsea.jpg"


def test_a_label_file_does_not_make_an_embedding_model_a_classifier(tmp_path):
    """``tinyvit predict photo.jpg --model clip_folder --labels names.txt``, the file as long as the
    projection is wide: refused in one line (no softmax over embedding dimensions), for a
    transformers and an open_clip CLIP alike."""
    names = tmp_path / "names.txt"
    names.write_text("".join(f"name {i}\n" for i in range(32)))  # the projection's width
    for case in ("hf_clip", "oc_clip"):
        folder = write_case(case, tmp_path / f"{case}_folder")
        ran = cli("predict", PHOTO, "--model", folder, "--labels", names)
        assert ran.returncode == 1 and ran.stdout == "", (case, ran)
        assert len(ran.stderr.strip().splitlines()) == 1 and "gives embeddings, not classes" in ran.stderr, ran.stderr
        with pytest.raises(WeightsError, match="takes no class names"):
            tinyvit.load(str(folder), labels=[f"name {i}" for i in range(32)])


def open_clip_vit_s32_state(depth: int = 1, seed: int = 0) -> dict:
    """open_clip's ``model.state_dict()`` of a ViT-S-32 (width 384, patch 32, 224 px, projection
    to 384), cut to ``depth`` blocks to stay small, random; a stub of the text tower's keys."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w, tokens = 384, 7 * 7 + 1

    def rand(*shape, scale=0.02):
        return torch.randn(*shape, generator=g) * scale

    state = {
        "visual.class_embedding": rand(w), "visual.conv1.weight": rand(w, 3, 32, 32),
        "visual.positional_embedding": rand(tokens, w), "visual.proj": rand(w, 384),
        "visual.ln_pre.weight": 1 + rand(w), "visual.ln_pre.bias": rand(w),
        "visual.ln_post.weight": 1 + rand(w), "visual.ln_post.bias": rand(w),
        "positional_embedding": rand(77, 384), "text_projection": rand(384, 384),
        "token_embedding.weight": rand(64, 384), "ln_final.weight": 1 + rand(384), "ln_final.bias": rand(384),
        "logit_scale": torch.tensor(4.6052),
    }  # fmt: skip
    for i in range(depth):
        b = f"visual.transformer.resblocks.{i}."
        state |= {
            b + "attn.in_proj_weight": rand(3 * w, w), b + "attn.in_proj_bias": rand(3 * w),
            b + "attn.out_proj.weight": rand(w, w), b + "attn.out_proj.bias": rand(w),
            b + "ln_1.weight": 1 + rand(w), b + "ln_1.bias": rand(w), b + "ln_2.weight": 1 + rand(w),
            b + "ln_2.bias": rand(w), b + "mlp.c_fc.weight": rand(4 * w, w), b + "mlp.c_fc.bias": rand(4 * w),
            b + "mlp.c_proj.weight": rand(w, 4 * w), b + "mlp.c_proj.bias": rand(w),
        }  # fmt: skip
    return state


def test_open_clips_own_saves_load_given_open_clips_model_name(tmp_path):
    """open_clip's ``torch.save(model.state_dict())`` and its training ``epoch_N.pt``
    (``{"epoch", "state_dict": {"module.…"}}``), without an open_clip_config.json: refused in one line
    that says to name the open_clip model (``--arch ViT-B-32``); with the name (``arch="ViT-S-32"``,
    any case; ``--arch ViT-S-32``) they give what the same tensors give beside open_clip's config of
    that name."""
    import torch
    from safetensors.torch import save_file

    state = open_clip_vit_s32_state()
    torch.save(state, tmp_path / "state_dict.pt")
    torch.save({"epoch": 3, "name": "run", "state_dict": {"module." + k: v for k, v in state.items()},
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}}, tmp_path / "epoch_3.pt")  # fmt: skip
    published = tmp_path / "published"  # what open_clip's push_to_hub writes: the reference
    published.mkdir()
    save_file(state, str(published / "open_clip_model.safetensors"))
    oc_cfg = {"model_cfg": {"embed_dim": 384, "vision_cfg": {"image_size": 224, "layers": 12, "patch_size": 32,
              "width": 384}}}  # fmt: skip  open_clip 3.3's model_configs/ViT-S-32.json
    (published / "open_clip_config.json").write_text(json.dumps(oc_cfg))
    want_model = tinyvit.load(str(published))
    want = tinyvit.embed(PHOTO, want_model)

    for name in ("state_dict.pt", "epoch_3.pt"):
        ran = cli("embed", PHOTO, "--model", tmp_path / name, "-o", tmp_path / f"{name}.npy")
        assert ran.returncode == 1 and len(ran.stderr.strip().splitlines()) == 1, ran
        assert "--arch ViT-B-32" in ran.stderr and "epoch_N.pt" in ran.stderr, ran.stderr
        model = tinyvit.load(str(tmp_path / name), arch="vit-s-32")
        assert model.config == want_model.config and model.weights.preprocess == want_model.weights.preprocess
        assert torch.equal(tinyvit.embed(PHOTO, model), want)
    ran = cli("embed", PHOTO, "--model", tmp_path / "epoch_3.pt", "--arch", "ViT-S-32", "-o", tmp_path / "e.npy")
    assert ran.returncode == 0, ran.stderr
    with pytest.raises(WeightsError, match="did you mean ViT-S-32"):
        tinyvit.load(str(tmp_path / "state_dict.pt"), arch="ViT-S-23")


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def fit_data(root: Path) -> tuple[Path, Path]:
    """A small ImageFolder tree (two classes of three photos) and a small classifier base."""
    from conftest import small_vit_file
    from PIL import Image

    for name in ("chelsea", "coffee"):
        (root / "train" / name).mkdir(parents=True)
        for i in range(3):
            img = Image.open(FIXTURES / "photos" / f"{name}.jpg").convert("RGB")
            img.rotate(10 * i).resize((48, 40)).save(root / "train" / name / f"{i}.jpg")
    return root / "train", small_vit_file(root)


def test_fit_and_convert_write_files_others_can_read(tmp_path, umask_022):
    """Under umask 022, fit's and convert's files are -rw-r--r-- (as embed's and export's are), so
    the user who serves them can read them; safetensors itself creates its files -rw-------."""
    train, base = fit_data(tmp_path)
    assert cli("fit", train, "--model", base, "-o", tmp_path / "fitted.safetensors", "--json").returncode == 0
    ran = cli("convert", tmp_path / "timm.safetensors", tmp_path / "converted.safetensors", "--arch", "num_heads=4")
    assert ran.returncode == 0, ran.stderr
    for name in ("fitted.safetensors", "converted.safetensors", "small.safetensors"):
        assert stat.filemode((tmp_path / name).stat().st_mode) == "-rw-r--r--", name


def test_one_overwrite_rule_for_every_command_that_writes(tmp_path):
    """fit, export and embed, like convert and --ray, refuse an existing output in one line unless
    --overwrite, and leave it as it was."""
    train, base = fit_data(tmp_path)
    for name in ("fitted.safetensors", "model.onnx", "feats.npy", "converted.safetensors"):
        (tmp_path / name).write_bytes(b"precious")
    commands = {
        "fitted.safetensors": ("fit", train, "--model", base),
        "model.onnx": ("export", base, "--no-check"),
        "feats.npy": ("embed", PHOTO, "--model", base),
    }
    for name, args in commands.items():
        ran = cli(*args, "-o", tmp_path / name)
        assert ran.returncode == 1 and "exists; pass --overwrite to replace it" in ran.stderr, (name, ran)
        assert (tmp_path / name).read_bytes() == b"precious", name
    ran = cli("convert", tmp_path / "timm.safetensors", tmp_path / "converted.safetensors", "--arch", "num_heads=4")
    assert ran.returncode == 1 and "exists; pass --overwrite to replace it" in ran.stderr
    for name, args in commands.items():
        ran = cli(*args, "-o", tmp_path / name, "--overwrite")
        assert ran.returncode == 0, (name, ran.stderr)
        assert (tmp_path / name).read_bytes() != b"precious", name


def test_an_unknown_option_of_a_subcommand_prints_its_usage():
    """``tinyvit predict x.jpg --zero-shot cat,dog``: predict's usage and the option named, exit 2."""
    ran = cli("predict", "x.jpg", "--zero-shot", "cat,dog")
    assert ran.returncode == 2 and ran.stderr.startswith("usage: tinyvit predict"), ran.stderr
    assert "tinyvit predict: error: unrecognized arguments: --zero-shot cat,dog" in ran.stderr


def test_an_unsupported_url_scheme_is_named(tmp_path):
    """``tinyvit predict ftp://host/x.jpg``: the scheme is not supported (not "no such file")."""
    ran = cli("predict", "ftp://host/x.jpg")
    assert ran.returncode == 1 and "the ftp:// scheme is not supported" in ran.stderr, ran.stderr


def test_a_static_export_takes_the_size_the_models_preprocessing_makes(tmp_path):
    """``tinyvit export dinov2_folder -o dino.onnx`` (no --dynamic-size) for a DINOv2 whose
    preprocessing crops smaller than its trained size (as 224 for 518): the graph takes the crop,
    checks itself there, says it gives an ``embedding`` (not ``logits``), and ONNX Runtime runs a
    preprocessed photo to tinyvit's embedding."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    import torch

    from tinyvit.export import read_onnx_metadata

    folder = write_case("hf_dinov2", tmp_path / "dinov2_folder")  # trained at 56 px, patch 14
    processor = json.loads((folder / "preprocessor_config.json").read_text())
    processor |= {"crop_size": {"height": 42, "width": 42}, "size": {"shortest_edge": 48}}
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))
    out = tmp_path / "dino.onnx"
    ran = cli("export", folder, "-o", out)
    assert ran.returncode == 0, ran.stderr
    assert "pixel_values B x 3 x 42x42 -> embedding" in ran.stdout and "at 42x42" in ran.stdout, ran.stdout
    dims = [d.dim_value for d in onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim]
    assert dims[1:] == [3, 42, 42]
    assert json.loads(read_onnx_metadata(out)["preprocess"])["crop"] == 42
    x = tinyvit.preprocess(PHOTO, str(folder))[None]
    assert x.shape[-2:] == (42, 42)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"pixel_values": x.numpy()})[0]
    with torch.inference_mode():
        want = tinyvit.load(str(folder))(x).numpy()
    assert np.abs(got - want).max() <= 1e-4


def test_preprocess_like_a_timm_folder_and_a_timm_name_said(tmp_path):
    """``--preprocess-like`` takes a timm folder (its config.json's pretrained_cfg), as ``preprocess=``
    does in Python; a timm architecture name (``vit_small_patch16_224``) is refused in one line
    that says it names no weights and what to pass, with predict's usage (exit 2)."""
    from conftest import small_vit_file

    small_vit_file(tmp_path)  # writes timm.safetensors: tensors only, no preprocessing
    bare = tmp_path / "timm.safetensors"
    folder = write_case("timm_deit3", tmp_path / "timm_folder")
    ran = cli("predict", PHOTO, "--model", bare, "--arch", "num_heads=4", "--preprocess-like", folder, "--json")
    assert ran.returncode == 0, ran.stderr
    want = tinyvit.predict(PHOTO, str(bare), arch="num_heads=4", preprocess=str(folder))
    assert json.loads(ran.stdout)[0]["pred_score"] == pytest.approx(want.score, abs=1e-6)
    ran = cli("predict", PHOTO, "--model", bare, "--arch", "num_heads=4", "--preprocess-like", "vit_small_patch16_224")
    assert ran.returncode == 2 and "a timm architecture name" in ran.stderr and "timm folder" in ran.stderr


def test_a_url_weight_that_cannot_be_reached_says_how_to_get_it(tmp_path, monkeypatch):
    """Item 13: an mmpretrain (URL) zoo weight with its server out of reach gets the advice the Hub's
    weights get (fetch it once where it can be reached, or load a local copy), not a raw URL error."""
    from conftest import load_parity, small_config
    from huggingface_hub import constants

    from tinyvit.core.errors import OfflineError
    from tinyvit.weights._builder import load_model
    from tinyvit.weights.specs import ZooSpec

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))
    source = tinyvit.Source(kind="url", layout="mmpretrain", url="http://127.0.0.1:9/mm-deadbeef.pth",
                            sha256_prefix="deadbeef")  # fmt: skip  (port 9: nothing listens)
    record = tinyvit.Weights(config=small_config(load_parity()[0]), preprocess=None, categories=None, source=source,
                             name="tiny", tag="mmpretrain")  # fmt: skip
    with pytest.raises(OfflineError) as err:
        load_model(ZooSpec(record))
    message = str(err.value)
    assert "could not be reached" in message and "`tinyvit download tiny:mmpretrain`" in message
    assert "\n" not in message and message.count("tiny:mmpretrain") == 2  # named once, and in the advice
