"""CLIP and SigLIP whole (issue #30): both towers of the checkpoints open_clip and transformers save,
text embeddings and zero-shot classification, against the libraries themselves
(tests/fixtures/zeroshot.*, made by scripts/make_zeroshot_fixtures.py; ZEROSHOT.md has the format).

Tolerances are relative to each output's scale (``max_abs`` in the fixture), well below the gap
between its rows (``min_row_gap``): the open_clip cases' rows are close to each other (their
LayerNorm gains come out small), so an absolute 1e-5 on probabilities alone would say little."""

from __future__ import annotations

import gzip
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import FIXTURES, cli
from PIL import Image
from refdata import fill
from safetensors.torch import load_file, save_file

import tinyvit

Z = json.loads((FIXTURES / "zeroshot.json").read_text())
REF = load_file(FIXTURES / "zeroshot.safetensors")
CASES = Z["cases"]
SMALL = ["open_clip_clip", "hf_clip", "hf_siglip"]  # open_clip_siglip's image tower is timm's full ViT-B (slow)
PHOTOS = [FIXTURES / p for p in Z["photos"]]


def build(name: str, folder) -> str:
    """The case's folder as its library wrote it: side files copied, the weights filled by refdata."""
    case = CASES[name]
    folder.mkdir(parents=True, exist_ok=True)
    for file, info in case["files"].items():
        source = info["source"]
        if source == "weights":
            state = {k: torch.from_numpy(np.asarray(fill(k, shape))) for k, (shape, _) in case["keys"].items()}
            save_file(state, str(folder / file), metadata=case["safetensors_metadata"])
        elif source.endswith("(gunzip)"):
            (folder / file).write_bytes(gzip.decompress((FIXTURES / source.split()[0]).read_bytes()))
        else:
            shutil.copy(FIXTURES / source, folder / file)
    return str(folder)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("zeroshot")
    return {name: build(name, root / name) for name in SMALL}


def close(got: torch.Tensor, name: str, output: str, rel: float = 1e-5) -> float:
    want = REF[f"{name}/{output}"]
    err = (got.float() - want).abs().max().item()
    scale = want.abs().max().item()
    assert err <= rel * scale, (name, output, err, scale)
    return err


# ---------------------------------------------------------------------------------------------
# Text embeddings: open_clip's encode_text, transformers' get_text_features


@pytest.mark.parametrize("name", SMALL)
def test_text_embeddings_equal_the_home_library(name, folders):
    got = tinyvit.embed_text(Z["prompts"], folders[name])
    assert got.shape == REF[f"{name}/text_features"].shape
    close(got, name, "text_features")
    one = tinyvit.embed_text(Z["prompts"][0], folders[name], normalize=True)
    assert one.shape == got[0].shape and abs(one.norm().item() - 1) < 1e-6


def test_a_siglip_image_tower_under_open_clip_and_its_text(tmp_path):
    """open_clip's SigLIP: a timm image tower (visual.trunk) and a custom text tower, canonicalized
    text, 64 tokens; the text side equals encode_text, the image side encode_image."""
    folder = build("open_clip_siglip", tmp_path / "oc_siglip")
    close(tinyvit.embed_text(Z["prompts"], folder), "open_clip_siglip", "text_features")
    probs = tinyvit.predict(PHOTOS, folder, classes=Z["labels"], templates=Z["templates"], top_k=5)
    got = torch.stack([_by_label(p, Z["labels"]) for p in probs])
    close(got, "open_clip_siglip", "zeroshot_probs", rel=1e-4)


# ---------------------------------------------------------------------------------------------
# Images through each library's own preprocessing, and zero-shot scores


@pytest.mark.parametrize("name", SMALL)
def test_images_preprocess_and_embed_as_the_home_library(name, folders):
    model = tinyvit.load(folders[name])
    x = tinyvit.preprocess([Image.open(p).convert("RGB") for p in PHOTOS], model)
    c = CASES[name]["outputs"]["pixels_uint8"]
    mean, std = torch.tensor(c["mean"]).view(3, 1, 1), torch.tensor(c["std"]).view(3, 1, 1)
    want = (REF[f"{name}/pixels_uint8"].float() / 255 - mean) / std
    assert (x - want).abs().max().item() < 1e-5  # the same 8-bit pixels
    close(tinyvit.embed(PHOTOS, model), name, "image_features")


def _by_label(p, labels) -> torch.Tensor:
    scores = {n: s for _, n, s in p.topk}
    return torch.tensor([scores[label] for label in labels])


@pytest.mark.parametrize("name", SMALL)
def test_zero_shot_equals_open_clips_recipe(name, folders):
    """open_clip's build_zero_shot_classifier over three templates, then its softmax (CLIP) or
    sigmoid with the bias (SigLIP)."""
    preds = tinyvit.predict(PHOTOS, folders[name], classes=Z["labels"], templates=Z["templates"], top_k=5)
    got = torch.stack([_by_label(p, Z["labels"]) for p in preds])
    close(got, name, "zeroshot_probs", rel=1e-4)
    if CASES[name]["logit_bias"] is None:
        assert torch.allclose(got.sum(1), torch.ones(len(PHOTOS)), atol=1e-5)  # a softmax over the classes


@pytest.mark.parametrize("name", ["hf_clip", "hf_siglip"])
@pytest.mark.parametrize("run", ["default", "a_photo_of"])
def test_zero_shot_equals_transformers_pipeline(name, run, folders):
    """transformers' zero-shot-image-classification pipeline, with its default template and one given."""
    pipeline = CASES[name]["pipeline"][run]
    template = pipeline["hypothesis_template"]
    preds = tinyvit.predict(PHOTOS, folders[name], classes=Z["labels"], template=template, top_k=5)
    for p, want in zip(preds, pipeline["result"], strict=True):
        got = {n: s for _, n, s in p.topk}
        for row in want:
            assert abs(got[row["label"]] - row["score"]) <= 1e-5, (p.input, row)
        assert p.name == want[0]["label"] or abs(p.score - want[0]["score"]) <= 1e-6


def test_a_class_set_is_embedded_once_then_read_from_disk(folders, monkeypatch, tmp_path):
    from huggingface_hub import constants

    from tinyvit.run import zeroshot

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path))  # an empty cache
    calls = []
    real = zeroshot._class_embeddings
    monkeypatch.setattr(zeroshot, "_class_embeddings", lambda *a, **k: calls.append(1) or real(*a, **k))
    names = ["a red car", "a blue boat", "a green tree"]  # not embedded by any other test
    first = tinyvit.predict(PHOTOS[0], folders["hf_clip"], classes=names)
    again = tinyvit.predict(PHOTOS[0], folders["hf_clip"], classes=names)
    assert len(calls) == 1 and first.topk == again.topk
    assert len(list((tmp_path / "tinyvit" / "zeroshot").glob("*.safetensors"))) == 1


# ---------------------------------------------------------------------------------------------
# The command line, and what is refused


def test_cli_zero_shot_and_text_embeddings(folders, tmp_path):
    classes = ",".join(Z["labels"])
    out = cli("predict", str(PHOTOS[1]), "--model", folders["hf_clip"], "--classes", classes, "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    want = tinyvit.predict(PHOTOS[1], folders["hf_clip"], classes=Z["labels"])
    assert row["pred_class"] == want.name and abs(row["pred_score"] - want.score) < 1e-6
    siglip = cli("predict", str(PHOTOS[1]), "--model", folders["hf_siglip"], "--classes", classes)
    assert siglip.returncode == 0 and "do not sum to 1" in siglip.stderr

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(Z["prompts"][:3]) + "\n")
    out = cli("embed", "--text", Z["prompts"][3], "--text-file", str(prompts), "--model", folders["open_clip_clip"],
              "-o", str(tmp_path / "t.npy"))  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = np.load(tmp_path / "t.npy")
    want = tinyvit.embed_text([Z["prompts"][3], *Z["prompts"][:3]], folders["open_clip_clip"]).numpy()
    assert np.array_equal(rows, want)


def test_text_on_an_image_only_model_is_one_line(tmp_path):
    from conftest import small_vit_file

    weights = small_vit_file(tmp_path)
    with pytest.raises(tinyvit.WeightsError, match="no text tower") as err:
        tinyvit.embed_text("a cat", str(weights))
    assert "\n" not in str(err.value)
    out = cli("predict", str(PHOTOS[0]), "--model", str(weights), "--classes", "cat,dog")
    assert out.returncode == 1 and out.stderr.count("\n") == 1 and "no text tower" in out.stderr


def test_templates_and_classes_are_checked():
    with pytest.raises(tinyvit.TinyViTError, match="holds \\{\\}"):
        tinyvit.ModelOptions(classes=("cat",), templates="a photo")  # checked when the head is built, or here
    with pytest.raises(tinyvit.TinyViTError, match="do not go together"):
        tinyvit.ModelOptions(classes=("cat",), labels=("cat",))
    from tinyvit.run.zeroshot import class_names, templates_of

    assert len(class_names("imagenet")) == 1000 and len(templates_of("openai")) == 80
    assert templates_of(None) == ("This is a photo of {}.",)


# ---------------------------------------------------------------------------------------------
# Served: what huggingface_hub's InferenceClient sends to an Inference Endpoint's URL (POST /)


def test_served_zero_shot_and_text_embeddings_through_inference_client(folders, tmp_path, monkeypatch):
    """``InferenceClient(model=URL).zero_shot_image_classification`` posts its JSON to the URL it is
    given — for an Inference Endpoint the root — and ``feature_extraction`` posts texts: a served
    CLIP answers both as predict and embed_text do."""
    from huggingface_hub import InferenceClient
    from test_serve import REQUEST_TIMEOUT, serving

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    folder = folders["hf_clip"]
    with serving(folder, tmp_path) as s:
        client = InferenceClient(model=f"http://127.0.0.1:{s.port}", timeout=REQUEST_TIMEOUT)
        answer = client.zero_shot_image_classification(PHOTOS[1].read_bytes(), candidate_labels=Z["labels"],
                                                       hypothesis_template="a photo of a {}.")  # fmt: skip
        want = tinyvit.predict(PHOTOS[1], folder, classes=Z["labels"], template="a photo of a {}.", top_k=5)
        assert [a.label for a in answer] == [n for _, n, _ in want.topk]
        assert max(abs(a.score - p) for a, (_, _, p) in zip(answer, want.topk, strict=True)) < 1e-5
        vectors = client.feature_extraction(Z["prompts"][:2])
        assert np.abs(vectors - tinyvit.embed_text(Z["prompts"][:2], folder).numpy()).max() < 1e-5
