"""What a new user tripped on (issue #21): odd files given as weights, Hub repositories as
their libraries save them, image URLs, small models in eval and predict, error lines, paths where
names are taken, progress bars in logs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import FIXTURES, case_state, cli, load_parity
from hubserver import HubServer
from PIL import Image
from safetensors.torch import save
from test_hub import run_py

import tinyvit
import tinyvit.images.decode

META, EXPECTED = load_parity()
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory) -> Path:
    """A small random ViT of 3 named classes, saved in timm's layout and converted."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("three")
    config = tinyvit.ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=3)
    torch.manual_seed(0)
    save_file(tinyvit.VisionTransformer(config).init_weights().state_dict(), str(folder / "timm.safetensors"))
    spec = tinyvit.PreprocessSpec(resize=36, crop=32, interpolation="bicubic", mean=(127.5,) * 3, std=(127.5,) * 3)
    return tinyvit.convert(
        folder / "timm.safetensors", folder / "three.safetensors", arch=config, labels=["ant", "bee", "cat"],
        preprocess=spec,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Files that are not checkpoints


def test_a_file_that_is_not_a_checkpoint_says_what_it_is(tmp_path):
    cases = {
        "photo.pth": (PHOTOS[0].read_bytes(), "it is a JPEG image"),
        "notes.pth": (b"epochs: 10\nlr: 0.1\n", "it is a text file"),
        "page.bin": (b"<!DOCTYPE html><html><body>Sign in</body></html>", "it is an HTML page"),
        "empty.safetensors": (b"", "it is an empty file"),
        "shot.safetensors": (_png(), "it is a PNG image"),
    }
    for name, (data, what) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(tinyvit.WeightsError) as e:
            tinyvit.load(tmp_path / name)
        assert str(e.value) == f"{str(tmp_path / name)!r}: not a checkpoint ({what})"
    ran = cli("predict", PHOTOS[0], "--model", tmp_path / "photo.pth")
    assert ran.returncode == 1
    assert ran.stderr == f"tinyvit: error: {str(tmp_path / 'photo.pth')!r}: not a checkpoint (it is a JPEG image)\n"


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# Hub repositories with only pytorch_model.bin, or sharded safetensors

HUB_LOADS = """
    import json, torch, tinyvit
    from conftest import case_input, load_parity
    meta, expected = load_parity()
    x = case_input(meta["cases"]["timm_small"]["inputs"][0])
    out = {}
    for spec in ("hf-hub:acme/vit-bin", "hf-hub:acme/vit-shards"):
        model = tinyvit.load(spec)
        with torch.inference_mode():
            err = (model(x) - expected["timm_small/0/logits"]).abs().max().item()
        out[spec] = {"err": err, "file": model.weights.source.filename, "sha256": model.weights.source.sha256}
    print(json.dumps(out))
"""


def test_hub_repositories_with_only_a_pickled_bin_or_sharded_safetensors(tmp_path):
    state = case_state(META["cases"]["timm_small"])
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[: len(names) // 2],
              "model-00002-of-00002.safetensors": names[len(names) // 2 :]}  # fmt: skip
    buf = io.BytesIO()
    torch.save(state, buf)
    # timm's config.json as save_for_hf writes it (the head count is not in the tensors)
    config = json.dumps({"architecture": "vit_small_test", "num_classes": 10, "model_args": {"num_heads": 4}}).encode()
    with HubServer() as hub:
        hub.add_file("acme/vit-bin", "pytorch_model.bin", buf.getvalue())
        for shard, keys in halves.items():
            hub.add_file("acme/vit-shards", shard, save({k: state[k] for k in keys}))
        index = {"metadata": {}, "weight_map": {k: shard for shard, keys in halves.items() for k in keys}}
        hub.add_file("acme/vit-shards", "model.safetensors.index.json", json.dumps(index).encode())
        for repo in ("acme/vit-bin", "acme/vit-shards"):
            hub.add_file(repo, "config.json", config)
        got = run_py(HUB_LOADS, tmp_path, hub.url)
        assert {p.rsplit("/", 1)[-1] for _, p in hub.requests if "/resolve/" in p} >= {*halves, "pytorch_model.bin"}
    # timm's logits (computed where the fixture was made: the parity tests' tolerance)
    assert got["hf-hub:acme/vit-bin"]["err"] <= 1e-5 and got["hf-hub:acme/vit-bin"]["file"] == "pytorch_model.bin"
    assert got["hf-hub:acme/vit-shards"]["err"] <= 1e-5
    assert got["hf-hub:acme/vit-shards"]["file"] == "model.safetensors.index.json"


# ---------------------------------------------------------------------------------------------
# Image URLs


def test_http_image_urls_are_fetched_like_files(three_classes, monkeypatch):
    model = tinyvit.load(three_classes)
    with HubServer() as hub:
        hub.files["chelsea.jpg"] = PHOTOS[1].read_bytes()
        url, missing = f"{hub.url}/files/chelsea.jpg", f"{hub.url}/files/nothing.jpg"
        got = tinyvit.predict(url, model)
        want = tinyvit.predict(PHOTOS[1], model)
        assert got.input == url and got.label == want.label and torch.equal(got.scores, want.scores)
        with pytest.raises(tinyvit.ImageError, match="HTTP 404"):
            tinyvit.predict(missing, model)
        ran = cli("predict", url, missing, "--model", three_classes, "--json")
        rows = json.loads(ran.stdout)
        assert ran.returncode == 1 and rows[0]["pred_class"] == want.name and rows[1]["error"].startswith("HTTP 404")
        assert ran.stderr.splitlines()[0] == f"tinyvit: error: {missing!r}: HTTP 404 Not Found"
        monkeypatch.setattr(tinyvit.images.decode, "URL_MAX_BYTES", 1000)
        with pytest.raises(tinyvit.ImageError, match="more than the 1000 bytes"):
            tinyvit.predict(url, model)
    with pytest.raises(tinyvit.ImageError, match="could not fetch it"):
        tinyvit.predict(url, model)  # the server is gone
    with pytest.raises(tinyvit.ImageError, match="only http"):
        tinyvit.predict("s3://bucket/cat.jpg", model)


# ---------------------------------------------------------------------------------------------
# A model of fewer than 5 classes


def test_a_three_class_model_in_eval_and_predict(three_classes, tmp_path):
    root = tmp_path / "val"
    for i, name in enumerate(["ant", "bee", "cat"]):
        (root / name).mkdir(parents=True)
        (root / name / "a.jpg").write_bytes(PHOTOS[i].read_bytes())
    result = tinyvit.evaluate(root, str(three_classes))
    assert result.images == 3 and result.top1 is not None
    assert result.top5 is None and all(c.top5 is None for c in result.per_class.values())  # every image a hit
    text = cli("eval", root, "--model", three_classes)
    assert text.returncode == 0 and "top-1" in text.stdout and "top-5" not in text.stdout
    assert json.loads(cli("eval", root, "--model", three_classes, "--json").stdout)["top5"] is None
    default = cli("predict", PHOTOS[0], "--model", three_classes)
    assert default.returncode == 0 and default.stderr == ""  # no note about an option not given
    assert len(default.stdout.splitlines()) == 1 + 3  # the photo, then its 3 classes
    asked = cli("predict", PHOTOS[0], "--model", three_classes, "--top-k", "5")
    assert "--top-k 5 is more than the model's 3 classes" in asked.stderr


# ---------------------------------------------------------------------------------------------
# Error lines, paths where names are taken, progress bars


def test_a_failed_image_names_its_path_once(three_classes, tmp_path):
    (tmp_path / "notes.jpg").write_text("shopping list")
    (tmp_path / "a.jpg").write_bytes(PHOTOS[0].read_bytes())
    ran = cli("predict", tmp_path, "--model", three_classes)
    (line,) = [s for s in ran.stderr.splitlines() if "notes.jpg" in s]
    assert line.count("notes.jpg") == 1 and line.startswith(f"tinyvit: error: {str(tmp_path / 'notes.jpg')!r}: ")
    (bad,) = [r for r in tinyvit.predict(tmp_path, str(three_classes), errors="return") if not r.ok]
    assert str(bad).count("notes.jpg") == 1


def test_models_and_preprocess_take_what_load_takes(three_classes):
    ran = cli("models", three_classes)
    assert ran.returncode == 0 and "ViT 64d x 2 blocks" in ran.stdout and "3 classes" in ran.stdout
    as_json = json.loads(cli("models", three_classes, "--json").stdout)
    assert as_json["config"]["num_classes"] == 3
    x = tinyvit.preprocess(PHOTOS[0], three_classes)
    assert torch.equal(x, tinyvit.preprocess(PHOTOS[0], tinyvit.load(three_classes)))
    assert torch.equal(x, tinyvit.preprocess(PHOTOS[0], str(three_classes)))


def test_progress_bars_only_on_a_terminal(three_classes, tmp_path, monkeypatch):
    out = tmp_path / "feats.npy"
    logged = cli("embed", *PHOTOS, "-o", out, "--model", three_classes)  # stderr: not a terminal
    assert logged.returncode == 0 and logged.stderr == ""

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    term = Terminal()
    monkeypatch.setattr("sys.stderr", term)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    list(tinyvit.embed_iter(PHOTOS, str(three_classes), progress=True))
    shown = term.getvalue()
    assert "embed" in shown and shown.count("\n") == 1 and f"{len(PHOTOS)}/{len(PHOTOS)}" in shown


def test_a_checkpoint_written_again_at_the_same_path_is_loaded_again(tmp_path):
    """The process's model cache knows a local file by its size and modification time as well as
    its path: `fit` or `convert` writing over a file does not leave the old model in use."""
    from conftest import small_vit_file

    from tinyvit.run.runtime import cached_model

    path = small_vit_file(tmp_path, seed=1)
    first = cached_model(path)
    assert cached_model(path) is first
    assert small_vit_file(tmp_path, seed=2) == path
    second = cached_model(path)
    assert second is not first and not torch.equal(second.head.weight, first.head.weight)
