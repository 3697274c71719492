"""``tinyvit fit``: a linear probe on a base model's embeddings, written as an ordinary classifier.

Offline and small: the bases are small random ViTs (64-dim, 2 blocks, 64 px) written like users'
checkpoints, and the images are augmented views (crops, flips, brightness and contrast) of three of
the test photos, as 80 px JPEGs. Random-weight features still tell different photos apart.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from safetensors import safe_open

import tinyvit
from tinyvit.core.fsutil import sha256_file
from tinyvit.deploy.cli import main as cli
from tinyvit.models.vit import VisionTransformer, ViTConfig
from tinyvit.run.fit import FitOptions, fit_and_report
from tinyvit.run.probe import fit_probe, train

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
CLASSES = ("astronaut", "chelsea", "coffee")
SPEC = tinyvit.PreprocessSpec(resize=72, crop=64, interpolation="bicubic", mean=(127.5,) * 3, std=(127.5,) * 3)
SMALL = {"image_size": 64, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 4}
OTHER_BASES = {"embedding": {"num_classes": 32, "head_bias": False}, "distilled": {"dist_token": True}}


def views(photo: Path, n: int, seed: int, size: int = 80) -> list[Image.Image]:
    """``n`` augmented views of a photo: a random crop (50-100 % of the side), a flip, brightness
    and contrast within 20 %."""
    rng = random.Random(seed)
    img = Image.open(photo).convert("RGB")
    out = []
    for _ in range(n):
        s = rng.uniform(0.5, 1.0)
        cw, ch = int(img.width * s), min(img.height, int(img.height * s * rng.uniform(0.8, 1.2)))
        x, y = rng.randint(0, img.width - cw), rng.randint(0, img.height - ch)
        v = img.crop((x, y, x + cw, y + ch)).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            v = v.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        v = ImageEnhance.Brightness(v).enhance(rng.uniform(0.8, 1.2))
        out.append(ImageEnhance.Contrast(v).enhance(rng.uniform(0.8, 1.2)))
    return out


def write_views(folder: Path, per_class: int, seed: int) -> Path:
    for k, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for i, v in enumerate(views(PHOTOS / f"{name}.jpg", per_class, seed * 10 + k)):
            v.save(folder / name / f"{i:02d}.jpg", quality=85)
    return folder


def write_base(folder: Path, name: str, preprocess: tinyvit.PreprocessSpec | None = SPEC, **changes) -> Path:
    """A small random ViT saved in timm's layout and converted as users' checkpoints are."""
    from safetensors.torch import save_file

    config = ViTConfig(**SMALL | {"num_classes": 10} | changes)
    torch.manual_seed(len(name))
    model = VisionTransformer(config).init_weights()
    folder.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(folder / f"{name}.timm.safetensors"))
    if preprocess is None:
        return folder / f"{name}.timm.safetensors"
    return tinyvit.convert(folder / f"{name}.timm.safetensors", folder / f"{name}.safetensors", arch=config,
                           preprocess=preprocess)  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fit")
    return {"root": root, "train": write_views(root / "train", 16, seed=0), "val": write_views(root / "val", 20, 1)}


@pytest.fixture(scope="module")
def base(data) -> Path:
    return write_base(data["root"] / "bases", "classifier")


@pytest.fixture(scope="module")
def fitted(data, base):
    """The CLI's fit with a held-out set and the embedding cache: the file every use below loads."""
    out = data["root"] / "flowers.safetensors"
    args = ["fit", str(data["train"]), "--model", str(base), "-o", str(out), "--val", str(data["val"]), "--cache"]
    assert cli([*args, "--json"]) == 0
    return out


def files_of(folder: Path) -> tuple[list[Path], list[int]]:
    files = sorted(folder.rglob("*.jpg"))
    return files, [CLASSES.index(f.parent.name) for f in files]


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


# ---------------------------------------------------------------------------------------------
# The probe


def test_the_probe_is_scikit_learns_logistic_regression(data, base):
    """Same objective as scikit-learn's (balanced weights, L2, standardized features): the same
    coefficients at a fixed C; and the held-out accuracy of the fitted file within 5 points of
    scikit-learn's probe on the same embeddings."""
    from sklearn.linear_model import LogisticRegression  # the test extra installs scikit-learn
    from sklearn.preprocessing import StandardScaler

    (tf, ty), (vf, vy) = files_of(data["train"]), files_of(data["val"])
    x, vx = tinyvit.embed(tf, base).numpy(), tinyvit.embed(vf, base).numpy()
    x64 = x.astype(np.float64)  # the probe fits in float64: so does the reference (in float32 it is 3x further off)
    scaler = StandardScaler().fit(x64)
    ref = LogisticRegression(C=1.0, class_weight="balanced", tol=1e-10, max_iter=10_000)
    ref.fit(scaler.transform(x64), ty)
    ours = train(torch.from_numpy(x), torch.tensor(ty), 3, 1.0)
    assert np.abs(ours.weight.numpy() - ref.coef_).max() <= 1e-3 * np.abs(ref.coef_).max()
    assert np.abs(ours.bias.numpy() - ref.intercept_).max() <= 1e-3 * np.abs(ref.coef_).max()

    sk = 100 * (LogisticRegression(max_iter=1000).fit(scaler.transform(x), ty).predict(scaler.transform(vx)) == vy)
    report = fit_probe(torch.from_numpy(x), torch.tensor(ty), 3, val=(torch.from_numpy(vx), torch.tensor(vy)))
    assert report.accuracy >= 80 and abs(report.accuracy - sk.mean()) <= 5, (report.accuracy, sk.mean())


# ---------------------------------------------------------------------------------------------
# The fitted model is head(features): parity for every kind of base


@pytest.mark.parametrize("kind", ["classifier", "embedding", "distilled", "rotary"])
def test_the_fitted_forward_is_the_probe_on_the_embeddings(data, base, kind):
    """A classifier's embedding is its pre-logits feature; an embedding model's is its projection
    head's output (CLIP's, bias-free), composed with the probe into one head; a distilled model's
    is the mean of its two tokens (both heads get the probe); a rotary family's (a timm DINOv3
    folder: rotary embeddings, registers) is its pooled feature. The file's logits are the probe's."""
    if kind == "rotary":
        from test_rope import write_case

        model = write_case("timm_dinov3", data["root"] / "bases" / "rotary")
    elif kind == "classifier":
        model = base
    else:
        model = write_base(data["root"] / "bases", kind, **OTHER_BASES[kind])
    result = fit_and_report(data["train"], model, options=FitOptions(progress=False))
    files, _ = files_of(data["val"])
    feats = tinyvit.embed(files, model)
    want = result.report.probe.logits(feats)
    with torch.inference_mode():
        got = result.model(tinyvit.preprocess(files, result.model)).double()
    assert (got - want).abs().max() <= 1e-5 * max(1.0, want.abs().max().item())
    assert result.model.weights.output == "classes" and result.model.weights.categories == CLASSES


# ---------------------------------------------------------------------------------------------
# The file: predict, eval, serve, ONNX


def test_the_file_describes_itself_and_predict_and_eval_name_the_classes(data, base, fitted):
    record = tinyvit.load(fitted).weights
    assert record.categories == CLASSES and record.preprocess == SPEC
    fit = record.fit
    assert fit.base == str(base.resolve()) and fit.images == (16, 16, 16) and not fit.head_only
    assert fit.base_sha256 in (tinyvit.load(base).weights.source.sha256, sha256_file(base)) and len(fit.date) == 10
    assert fit.validation == "held-out set of 60 images" and fit.regularization in (1e-4, 1e-3, 1e-2, 0.1, 1, 10, 100)
    keys = set(read_tensors(fitted))
    assert {"head.weight", "head.bias"} <= keys and "blocks.1.mlp.fc2.weight" in keys
    assert "fitted:" in record.describe()

    files, labels = files_of(data["val"])
    preds = tinyvit.predict(files, fitted)
    assert {p.name for p in preds} <= set(CLASSES)
    accuracy = 100 * np.mean([p.label == y for p, y in zip(preds, labels, strict=True)])
    assert accuracy == pytest.approx(fit.accuracy)  # the held-out accuracy is what predict scores on --val
    result = tinyvit.evaluate(data["val"], fitted)  # subfolders named by class: eval reads them
    assert result.top1 == pytest.approx(fit.accuracy) and result.images == 60


def test_serve_answers_with_the_class_names(data, fitted):
    from fastapi.testclient import TestClient  # the test extra installs the serve extra: a broken one fails here
    from litserve.utils import wrap_litserve_start

    from tinyvit.run.options import ServeOptions
    from tinyvit.serve import build_server

    files, _ = files_of(data["val"])
    want = tinyvit.predict(files[:3], fitted)
    server = build_server(fitted, options=ServeOptions(max_batch_size=4))
    with wrap_litserve_start(server) as s, TestClient(s.app) as client:
        for f, p in zip(files[:3], want, strict=True):
            r = client.post("/predict", content=f.read_bytes(), headers={"Content-Type": "image/jpeg"})
            assert r.status_code == 200, r.text
            assert r.json()[0]["label"] == p.name and r.json()[0]["score"] == pytest.approx(p.score, abs=1e-5)


def test_onnx_export_gives_the_same_logits(data, fitted, tmp_path):
    import onnxruntime as ort  # the test extra installs the onnx extra: a broken one fails here

    from tinyvit.export import export_onnx, read_onnx_metadata

    model = tinyvit.load(fitted)
    path = export_onnx(model, tmp_path / "fitted.onnx", opset=17)  # the TorchScript exporter: 4x faster here
    assert json.loads(read_onnx_metadata(path)["class_names"]) == list(CLASSES)
    files, _ = files_of(data["val"])
    x = tinyvit.preprocess(files[::7], model)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.inference_mode():
        want = model(x).numpy()
    assert np.abs(got - want).max() <= 1e-4 and (got.argmax(1) == want.argmax(1)).all()


# ---------------------------------------------------------------------------------------------
# Cache, determinism, head-only, label files


def test_fitting_again_reads_the_cache_and_the_same_seed_writes_the_same_head(data, base, fitted, tmp_path):
    out = tmp_path / "again.safetensors"
    options = FitOptions(val=data["val"], cache=fitted.with_name(fitted.name + ".embeddings.safetensors"))
    again = fit_and_report(data["train"], base, out, options)
    assert again.embedded == 0 and again.cached == 108  # every image from the cache: no forward pass
    first, second = read_tensors(fitted), read_tensors(out)
    assert set(first) == set(second) and all(torch.equal(first[k], second[k]) for k in first)


def test_head_only_round_trips_and_refuses_a_changed_base(data, base, fitted, tmp_path):
    out, copy = tmp_path / "head.safetensors", tmp_path / "base.safetensors"
    shutil.copy(base, copy)
    cache = fitted.with_name(fitted.name + ".embeddings.safetensors")
    fit_and_report(data["train"], copy, out, FitOptions(val=data["val"], head_only=True, cache=cache))
    assert set(read_tensors(out)) == {"head.weight", "head.bias"} and out.stat().st_size < 20_000
    model, full = tinyvit.load(out), tinyvit.load(fitted)
    assert model.weights.fit.head_only and model.weights.categories == CLASSES
    x = tinyvit.preprocess(files_of(data["val"])[0][:4], full)
    with torch.inference_mode():
        assert torch.equal(model(x), full(x))
    shutil.copy(write_base(tmp_path / "other", "other"), copy)  # other weights where the base was
    with pytest.raises(tinyvit.WeightsError, match="fit the head again"):
        tinyvit.load(out)


def test_a_label_file_gives_the_folder_s_fit(data, base, fitted, tmp_path):
    files, labels = files_of(data["train"])
    csv_file = data["root"] / "labels.csv"  # paths relative to the label file's folder
    csv_file.write_text("path,label\n" + "".join(f"{f.relative_to(data['root'])},{CLASSES[y]}\n"
                                                  for f, y in zip(files, labels, strict=True)))  # fmt: skip
    jsonl = data["root"] / "labels.jsonl"
    jsonl.write_text("".join(json.dumps({"path": str(f), "label": CLASSES[y]}) + "\n"
                             for f, y in zip(files, labels, strict=True)))  # fmt: skip
    cache = fitted.with_name(fitted.name + ".embeddings.safetensors")
    want = read_tensors(fitted)["head.weight"]
    for label_file in (csv_file, jsonl):
        result = fit_and_report(label_file, base, tmp_path / "l.safetensors", FitOptions(val=data["val"], cache=cache))
        assert result.cached == 108 and result.model.weights.categories == CLASSES
        assert torch.equal(read_tensors(tmp_path / "l.safetensors")["head.weight"], want)


def test_bad_images_are_left_out_and_small_classes_warned(data, base, tmp_path):
    train = tmp_path / "train"
    for name, n in (("astronaut", 6), ("coffee", 3)):
        (train / name).mkdir(parents=True)
        for i, v in enumerate(views(PHOTOS / f"{name}.jpg", n, seed=5)):
            v.save(train / name / f"{i}.jpg")
    (train / "coffee" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    result = fit_and_report(train, base, options=FitOptions(progress=False))
    assert result.images == (6, 3) and len(result.errors) == 1
    bad = train / "coffee" / "broken.jpg"  # named once, with predict's whole reason for it
    assert result.errors == [tinyvit.predict([bad], base, errors="return")[0].error_line()]
    assert len(result.warnings) == 1 and "'coffee' has only 3 images" in result.warnings[0]
    assert result.report.validation == "3-fold cross-validation"
    with pytest.warns(UserWarning) as caught:
        tinyvit.fit(train, base, progress=False)
    messages = [str(w.message) for w in caught]
    assert any("left out" in m for m in messages) and any("'coffee' has only 3 images" in m for m in messages)


# ---------------------------------------------------------------------------------------------
# Bad input: one line each, nothing written


def test_bad_input_is_one_line_and_writes_nothing(data, base, tmp_path, capsys):
    empty = tmp_path / "empty"
    (empty / "rose").mkdir(parents=True)
    (empty / "tulip").mkdir()
    Image.new("RGB", (32, 32)).save(empty / "rose" / "a.jpg")
    single = tmp_path / "single"
    (single / "rose").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(single / "rose" / "a.jpg")
    missing = tmp_path / "labels.csv"
    missing.write_text("a.jpg,rose\nb.jpg,tulip\n")
    bare = write_base(tmp_path, "bare", preprocess=None, embed_dim=192, num_heads=3, depth=1)  # preprocessing unknown
    cases = {
        str(empty): ("class folder holds no images", str(base)),
        str(single): ("only the class 'rose'", str(base)),
        str(missing): ("2 of the 2 files it names do not exist", str(base)),
        str(data["train"]): ("the base model gives no embedding", str(bare)),
    }
    out = tmp_path / "out.safetensors"
    for train_set, (message, model) in cases.items():
        arch = ["--arch", "num_heads=3"] if model == str(bare) else []  # a bare state dict: its heads are stated
        assert cli(["fit", train_set, "--model", model, "-o", str(out), "--cache", *arch]) == 1
        err = capsys.readouterr().err.strip()
        assert err.startswith("tinyvit: error:") and message in err and "\n" not in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["empty", "single", "labels.csv",
                                                                     "bare.timm.safetensors"])  # fmt: skip
    with pytest.raises(tinyvit.FitError, match="only the class"):
        tinyvit.fit(single, base, out)
    # the process: one line on stderr, exit 1
    command = [sys.executable, "-m", "tinyvit", "fit", str(single), "--model", str(base), "-o", str(out)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stderr.count("\n") == 1 and "only the class 'rose'" in run.stderr
    assert not out.exists()


def test_old_records_read_and_the_fit_record_round_trips(fitted):
    record = tinyvit.load(fitted).weights
    assert tinyvit.Weights.from_json(record.to_json()) == record
    old = record.to_dict()
    del old["fit"]
    assert tinyvit.Weights.from_dict(old).fit is None  # a file written before fit existed
    assert "fit" not in tinyvit.Weights.from_dict(old).to_dict()
    assert "held-out accuracy" in record.describe()
