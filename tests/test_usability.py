"""What a new user trips on (issue [5/5]): one test per item — the CLI's help, errors and
summaries, eval, explain, convert's output name, and odd inputs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, case_state, cli, load_parity, small_config, write_checkpoint
from PIL import Image

import tinyvit
import tinyvit.weights.manifest
from tinyvit.run.explain import render
from tinyvit.weights.record import imagenet_classes

META, _ = load_parity()
ROOT = Path(__file__).resolve().parents[1]
PHOTO = FIXTURES / "photos" / "chelsea.jpg"


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """An ImageFolder tree with one unreadable image."""
    root = tmp_path_factory.mktemp("val")
    for wnid in imagenet_classes().ids[:2]:
        (root / wnid).mkdir()
        (root / wnid / "a.jpg").write_bytes(PHOTO.read_bytes())
    (root / imagenet_classes().ids[1] / "broken.jpg").write_bytes(b"\xff\xd8 not really")
    return root


# ---------------------------------------------------------------------------------------------
# eval


def test_eval_counts_failures_in_its_summary_and_exit_code(weights, tree):
    out = cli("eval", str(tree), "--model", str(weights), terminal=True)
    assert out.returncode == 1  # some images failed
    assert "(2 images, 1 failed)" in out.stdout and "broken.jpg" in out.stderr
    assert "eval:" in out.stderr and "predict:" not in out.stderr  # the progress bar says what runs
    js = json.loads(cli("eval", str(tree), "--model", str(weights), "--json").stdout)
    assert js["images"] == 2 and js["failed"] == 1
    assert js["model"] == str(weights) and js["weights"] == str(weights)  # which model and weights


def test_eval_class_index_out_of_range(weights, tmp_path):
    (tmp_path / "1000").mkdir()
    (tmp_path / "1000" / "a.jpg").write_bytes(PHOTO.read_bytes())
    out = cli("eval", str(tmp_path), "--model", str(weights))
    assert out.returncode == 1 and "class index 1000 is out of range" in out.stderr


def test_eval_missing_folder_is_a_plain_message(tmp_path):
    out = cli("eval", str(tmp_path / "nonexist"))
    assert out.returncode == 1 and "no such folder" in out.stderr
    assert "Errno" not in out.stderr and "Traceback" not in out.stderr


def test_predict_json_names_the_model_and_weights(weights):
    rows = json.loads(cli("predict", str(PHOTO), "--model", str(weights), "--json").stdout)
    assert rows[0]["model"] == str(weights)


# ---------------------------------------------------------------------------------------------
# models, options, usage


def test_models_marks_the_default_weights(tmp_path):
    out = cli("models", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"}).stdout
    marked = [line.split()[0] for line in out.splitlines() if re.match(r"\S+:\S+ \*", line)]
    assert marked == [f"{name}:{e.weights[0].tag}" for name, e in tinyvit.weights.manifest.entries().items()]
    assert "default" in out


def test_options_show_their_help_and_defaults():
    text = cli("predict", "--help").stdout
    assert re.search(r"--top-k TOP_K\s+classes shown per image \(default 5\)", text)
    assert re.search(r"--batch-size BATCH_SIZE\s+images per forward pass \(default\s+8\)", text)


def test_debug_is_accepted_after_the_subcommand():
    out = cli("predict", str(PHOTO), "--model", "vit-giant", "--debug")
    assert out.returncode == 1 and "Traceback" in out.stderr and "UnknownModelError" in out.stderr


@pytest.mark.parametrize(
    "args",
    [("predict", "x.jpg", "--top-k", "0"), ("predict", "x.jpg", "--batch-size", "0"), ("eval", "d", "--limit", "0")],
)
def test_zero_counts_get_the_subcommands_usage(args):
    out = cli(*args)
    assert out.returncode == 2
    assert out.stderr.startswith(f"usage: tinyvit {args[0]} ") and "must be >= 1" in out.stderr


def test_top_k_above_the_class_count_says_so(weights):
    out = cli("predict", str(PHOTO), "--model", str(weights), "--top-k", "5000", "--json")
    assert out.returncode == 0
    assert "--top-k 5000 is more than the model's 1000 classes" in out.stderr
    assert len(json.loads(out.stdout)[0]["topk"]) == 1000


def test_convert_errors_read_as_one_sentence(tmp_path):
    state = case_state(META["cases"]["timm_small"])
    del state["blocks.1.mlp.fc2.bias"]
    torch.save(state, tmp_path / "bad.pth")
    out = cli("convert", str(tmp_path / "bad.pth"), str(tmp_path / "o.safetensors"), "--arch", "vit-base-p32-384")
    assert out.returncode == 1 and "missing keys" in out.stderr
    assert ":;" not in out.stderr and "Traceback" not in out.stderr


def test_convert_refuses_an_output_name_that_is_not_safetensors(tmp_path):
    src = write_checkpoint("timm_b32_384", META["cases"]["timm_b32_384"], tmp_path / "src")
    out = cli("convert", str(src), str(tmp_path / "out.pt"))
    assert out.returncode == 1 and "*.safetensors" in out.stderr
    assert not (tmp_path / "out.pt").exists()


# ---------------------------------------------------------------------------------------------
# explain


def test_explain_draws_over_the_whole_photo_with_scale_and_caption(tmp_path):
    photo = Image.open(PHOTO).convert("RGB")  # 451 x 300: the model sees a centered 300 x 300 crop
    spec = tinyvit.PreprocessSpec(384, 384, "bicubic", (127.5,) * 3, (127.5,) * 3)
    flat = np.full((12, 12), 1 / 144)
    peaked = flat.copy()
    peaked[4:8, 4:8] *= 20
    peaked /= peaked.sum()
    for share in (flat, peaked):
        out = np.asarray(render(photo, share, spec, "tabby cat  0.56"), dtype=np.int16)
        assert out.shape == (300, 451, 3)  # the whole photo, not the model's crop
        base = np.asarray(photo, dtype=np.int16)
        inside = (slice(60, 240), slice(120, 140))  # seen by the model, far from the peak and the labels
        assert np.abs(out[inside] - base[inside]).max() <= 2  # low attention: the photo's own colours
        assert np.abs(out[150, 5] - base[150, 5]).max() > 20  # not seen by the model: dimmed
        assert (out[5:15, 5:15] < 40).mean() > 0.5  # the caption's dark band (class and score)
    centre = (slice(140, 160), slice(215, 235))
    assert np.abs(out[centre] - base[centre]).mean() > 20  # the peak is coloured
    assert (out[-3:, -60:] < 40).mean() > 0.9  # the colour scale's legend sits on a dark band too
    long = np.asarray(render(photo, flat, spec, "a very long class name, " * 6 + " 0.56 (weights.safetensors)"))
    assert (long[6:16, -3:] < 40).all()  # a long caption is shortened to fit, not cut off at the edge


def test_explain_cli_default_output_and_format_from_the_name(weights, tmp_path):
    out = cli("explain", str(PHOTO), "--model", str(weights), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "chelsea.attention.png") as img:
        assert img.format == "PNG" and img.size == (451, 300)
    out = cli("explain", str(PHOTO), "--model", str(weights), "-o", str(tmp_path / "x.jpg"))
    assert out.returncode == 0, out.stderr
    with Image.open(tmp_path / "x.jpg") as img:
        assert img.format == "JPEG"
    missing = cli("explain", str(PHOTO), "--model", str(weights), "-o", str(tmp_path / "nodir" / "x.png"))
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Errno" not in missing.stderr
    bad = cli("explain", str(PHOTO), "--model", str(weights), "-o", str(tmp_path / "x.txt"))
    assert bad.returncode == 2 and "extension" in bad.stderr


# ---------------------------------------------------------------------------------------------
# inputs


SPEC = tinyvit.PreprocessSpec(40, 32, "bicubic", (127.5,) * 3, (127.5,) * 3)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_named_like_an_image_is_refused_not_read_forever(tmp_path):
    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    spec = "tinyvit.PreprocessSpec(8, 8, 'bicubic', (0,) * 3, (1,) * 3)"
    code = f"import tinyvit\ntry:\n    tinyvit.preprocess({str(fifo)!r}, {spec})\n"
    code += "except tinyvit.ImageError as e:\n    print(e)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "not a regular file" in out.stdout
    assert "not a regular file" in cli("predict", str(fifo)).stderr


def test_urls_other_than_http_are_said_not_to_be_fetched():
    for url in ("s3://bucket/cat.jpg", "ftp://example.com/cat.jpg", "gs://bucket/cat.jpg"):
        with pytest.raises(tinyvit.ImageError, match="only http\\(s\\) URLs are fetched"):
            tinyvit.preprocess(url, SPEC)


def test_float_images_in_0_1_and_batches_of_one_are_accepted():
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"))
    expected = tinyvit.preprocess(rgb, SPEC)
    as_float = rgb.astype(np.float32) / 255  # what torchvision users hold
    chw = torch.from_numpy(as_float).permute(2, 0, 1)
    assert torch.equal(tinyvit.preprocess(as_float, SPEC), expected)
    assert torch.equal(tinyvit.preprocess(chw, SPEC), expected)
    assert torch.equal(tinyvit.preprocess(chw[None], SPEC), expected)  # 1 x 3 x H x W
    with pytest.raises(tinyvit.ImageError, match=r"values in \[0, 1\]"):
        tinyvit.preprocess((chw - 0.5) / 0.5, SPEC)  # already normalized: refused with the reason
    with pytest.raises(tinyvit.ImageError, match="a batch of 2 images"):
        tinyvit.preprocess(torch.stack([chw, chw]), SPEC)


def test_prediction_prints_short_and_reprs_long():
    model = tinyvit.VisionTransformer(small_config(META)).eval()
    model.load_state_dict(case_state(META["cases"]["timm_small"]))
    p = tinyvit.predict(PHOTO, model, preprocess=SPEC)
    assert str(p) == f"{p.name} ({p.score:.2f})" and "topk" not in str(p)
    assert "topk=" in repr(p)


def test_readme_says_how_long_the_tests_take_and_what_they_need():
    text = (ROOT / "README.md").read_text()
    assert re.search(r"test suite takes about \d+ minutes", text)
    assert re.search(r"\d+(\.\d+)? GiB of memory", text)
