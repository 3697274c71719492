"""The zoo's CLIP / SigLIP entries and their text towers (issue #30): an image tower's zoo weights
name the whole open_clip model's Hub repository (``text`` in the manifest, as open_clip's own
registry gives it, tests/fixtures/zoo_text.json), fetched only when text or classes are asked for,
verified, cached, and downloaded with the image tower by ``tinyvit download``.

The Hub is one the test serves on 127.0.0.1; the zoo entry ``clip-vit-base-p32`` is pointed (in a
copy of the manifest) at the small open_clip CLIP of tests/fixtures/zeroshot.* so that its scores
are open_clip's, and at open_clip's ``ViT-S-32-alt`` text tower saved without a config."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, cli
from hubserver import HubServer
from refdata import fill
from safetensors.torch import load_file
from test_zeroshot import PHOTOS, Z, build, close

import tinyvit
from tinyvit.weights.convert import open_clip_config_named
from tinyvit.weights.manifest import entries, resolve
from tinyvit.weights.text_layouts import text_config_from_open_clip

ROOT = Path(__file__).resolve().parents[1]
ZT = json.loads((FIXTURES / "zoo_text.json").read_text())
ZT_REF = load_file(FIXTURES / "zoo_text.safetensors")
NAME = "clip-vit-base-p32"


def test_each_text_source_is_what_open_clips_registry_names():
    """Every zoo weight with a text tower names an open_clip model whose config tinyvit has, and
    a repository open_clip's registry gives for that model; no other CLIP / SigLIP image tower is
    silently without one (the SigLIP GAP tower has no text tower anywhere: open_clip has none)."""
    with_text = {f"{n}:{w.tag}": w.text for n, e in entries().items() for w in e.weights if w.text is not None}
    assert sorted(with_text) == ["clip-vit-base-p16:openai", "clip-vit-base-p32:openai",
                                 "pe-core-base-p16-224:fb", "siglip-base-p16-224:webli"]  # fmt: skip
    for spec, text in with_text.items():
        hubs = {hub for key, hub in ZT["registry"].items() if key.split("/")[0] == text.open_clip_model}
        assert f"{text.repo_id}/" in hubs, (spec, text.repo_id, hubs)
        config = text_config_from_open_clip(open_clip_config_named(text.open_clip_model, spec), what=spec)
        image = resolve(spec).config
        assert config.output_dim == (image.num_classes or image.embed_dim), spec  # the towers meet
        assert text.open_clip_model in text.provenance and text.repo_id in text.provenance
    assert resolve("siglip-gap-base-p16-224").text is None


def test_an_image_only_zoo_weight_asked_for_text_is_one_line(tmp_path):
    with pytest.raises(tinyvit.WeightsError, match="image tower only") as err:
        tinyvit.embed_text("a cat", "siglip-gap-base-p16-224")
    assert "\n" not in str(err.value) and "siglip-gap-base-p16-224" in str(err.value)
    # classes for it: refused before its image tower is fetched (offline, with an empty cache, the
    # refusal is about the text tower, not the missing image file)
    ran = cli("predict", PHOTOS[0], "--model", "siglip-gap-base-p16-224", "--classes", "cat,dog",
              env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert ran.returncode == 1 and ran.stderr.count("\n") == 1 and "image tower only" in ran.stderr, ran.stderr


# ---------------------------------------------------------------------------------------------
# The zoo entry served from a loopback Hub (subprocesses: huggingface_hub reads HF_ENDPOINT once)

RUN = """
    import json, pathlib, sys
    import tinyvit
    import tinyvit.weights.manifest as m
    m.manifest_path = lambda: pathlib.Path({manifest!r})
    m.entries.cache_clear(); m._names.cache_clear()
    args = {args!r}
    out = {{}}
    try:
        if "download" in args:
            out["download"] = str(tinyvit.download({name!r}))
        if "load" in args:
            out["load"] = tinyvit.load({name!r}).weights.spec
        if "prompts" in args:
            out["text"] = tinyvit.embed_text(args["prompts"], {name!r}).tolist()
        if "labels" in args:
            preds = tinyvit.predict(args["photos"], {name!r}, classes=args["labels"], templates=args["templates"],
                                    top_k=len(args["labels"]))
            out["probs"] = [[dict((n, s) for _, n, s in p.topk)[c] for c in args["labels"]] for p in preds]
    except tinyvit.TinyViTError as e:
        out["error"] = f"{{type(e).__name__}}: {{e}}"
    print(json.dumps(out))
"""


def run(manifest: Path, home: Path, endpoint: str, args: dict, *, offline: bool = False) -> dict:
    code = textwrap.dedent(RUN.format(manifest=str(manifest), name=NAME, args=args))
    env = {**os.environ, "HF_HOME": str(home), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "TINYVIT_CPU_GEMM": "default"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def manifest_with(tmp: Path, source: dict, arch: dict, text: dict) -> Path:
    """The real manifest, with the zoo entry's weights, architecture and text source replaced."""
    data = json.loads((ROOT / "weights_manifest.json").read_text())
    entry = data["models"][NAME]
    entry["arch"] = arch
    entry["sources"] = [{**entry["sources"][0], **source, "text": text}]
    path = tmp / "manifest.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def test_a_zoo_clip_scores_classes_with_its_text_tower_fetched_downloaded_and_offline(hub, tmp_path):
    """The entry's image tower and its text tower live in two repositories; loading the image
    model fetches nothing of the text one; ``download`` fetches both; then, offline, zero-shot
    scores and text embeddings equal open_clip's (the fixture's recipe)."""
    folder = Path(build("open_clip_clip", tmp_path / "case"))
    model = tinyvit.load(folder)
    weights = next(p for p in folder.iterdir() if p.suffix == ".safetensors")
    hub.add_file("acme/tiny-clip-image", "model.safetensors", weights.read_bytes())
    hub.add_file("acme/tiny-clip", "open_clip_model.safetensors", weights.read_bytes())
    hub.add_file("acme/tiny-clip", "open_clip_config.json", (folder / "open_clip_config.json").read_bytes())
    source = {"repo_id": "acme/tiny-clip-image", "filename": "model.safetensors", "layout": "open_clip",
              "preprocess": model.weights.preprocess.to_dict()}  # fmt: skip
    text = {"repo_id": "acme/tiny-clip", "open_clip_model": "ViT-B-32-quickgelu", "provenance": "the test's"}
    manifest = manifest_with(tmp_path, source, model.weights.config.to_dict(), text)
    home = tmp_path / "home"

    assert run(manifest, home, hub.url, {"load": True})["load"] == f"{NAME}:openai"
    assert not any("tiny-clip/" in path for _, path in hub.requests)  # the image model alone: no text fetched
    downloaded = run(manifest, home, hub.url, {"download": True})
    assert "error" not in downloaded, downloaded
    assert any(path.endswith("acme/tiny-clip/resolve/main/open_clip_model.safetensors") for _, path in hub.requests)
    endpoint = hub.url
    hub.stop()

    args = {"prompts": Z["prompts"], "photos": [str(p) for p in PHOTOS], "labels": Z["labels"],
            "templates": Z["templates"]}  # fmt: skip
    got = run(manifest, home, endpoint, args, offline=True)
    assert "error" not in got, got
    close(torch.tensor(got["text"]), "open_clip_clip", "text_features")
    close(torch.tensor(got["probs"]), "open_clip_clip", "zeroshot_probs", rel=1e-4)


def test_a_text_tower_saved_without_its_config_is_read_by_its_open_clip_model_name(hub, tmp_path):
    """open_clip's ``download_pretrained_from_hf`` order (safetensors, else the pickled ``.bin``)
    and a repository without ``open_clip_config.json``: the manifest's open_clip model name gives
    the config and the tokenizer; the text embeddings equal open_clip's ``encode_text``."""
    case = ZT["named"]
    state = {k: torch.from_numpy(np.asarray(fill(k, shape))) for k, shape in case["keys"].items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    hub.add_file("acme/tiny-clip-named", "open_clip_pytorch_model.bin", buffer.getvalue())
    text = {"repo_id": "acme/tiny-clip-named", "open_clip_model": case["model"], "provenance": "the test's"}
    entry = json.loads((ROOT / "weights_manifest.json").read_text())["models"][NAME]
    manifest = manifest_with(tmp_path, {}, entry["arch"], text)

    got = run(manifest, tmp_path / "home", hub.url, {"prompts": case["prompts"]})
    assert "error" not in got, got
    want = ZT_REF["named/text_features"]
    err = (torch.tensor(got["text"]) - want).abs().max().item()
    assert err <= 1e-5 * case["text_features"]["max_abs"], err
    asked = [path.rsplit("/", 1)[-1] for _, path in hub.requests if "tiny-clip-named" in path]
    assert asked.index("open_clip_model.safetensors") < asked.index("open_clip_pytorch_model.bin")
