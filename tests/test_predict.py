"""predict(), the CLI (predict, eval, explain, models) and the README, as a user meets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import refdata
import torch
from conftest import cli, load_parity, readme_block
from PIL import Image

import tinyvit
from tinyvit.run.explain import attention_rollout
from tinyvit.weights.record import imagenet_classes

META, _ = load_parity()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model(weights):
    return tinyvit.load(weights)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (w, h) in enumerate([(500, 375), (320, 480), (400, 400), (640, 300), (390, 410)]):
        path = folder / f"img{i}.jpg"
        Image.fromarray(refdata.make_image(w, h, seed=i)).save(path, quality=92)
        paths.append(path)
    return paths


def test_predict_one_image_is_softmax_of_the_model(model, images):
    p = tinyvit.predict(images[0], model)
    assert isinstance(p, tinyvit.Prediction) and p.ok
    with torch.inference_mode():
        probs = model(tinyvit.preprocess(images[0], model)[None]).softmax(-1)[0]
    assert p.label == int(probs.argmax()) and p.score == pytest.approx(float(probs.max()), abs=1e-6)
    assert p.name == imagenet_classes().names[p.label]
    assert [t[0] for t in p.topk] == probs.topk(5).indices.tolist()
    assert all(a[2] >= b[2] for a, b in zip(p.topk, p.topk[1:], strict=False))
    assert p.scores.shape == (1000,) and float(p.scores.sum()) == pytest.approx(1.0, abs=1e-5)
    d = p.to_dict()
    assert {"pred_label", "pred_score", "pred_class", "pred_scores"} <= set(d)
    assert d["pred_class"] == p.name and len(d["pred_scores"]) == 1000


def test_lists_folders_and_batches_agree(model, images):
    one_by_one = [tinyvit.predict(i, model) for i in images]
    batched = tinyvit.predict(images, model, batch_size=2)
    folder = tinyvit.predict(images[0].parent, model, batch_size=8)
    assert isinstance(batched, list) and len(batched) == len(folder) == len(images)
    for a, b, c in zip(one_by_one, batched, folder, strict=True):
        assert a.label == b.label == c.label
        torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)
        torch.testing.assert_close(a.scores, c.scores, atol=1e-6, rtol=0)
    inputs = [np.asarray(Image.open(images[0]).convert("RGB")), images[0].read_bytes(), Image.open(images[0])]
    for r in tinyvit.predict(inputs, model):
        assert r.label == one_by_one[0].label


def test_a_bad_image_does_not_lose_the_others(model, images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not a jpeg")
    mixed = [images[0], bad, images[1], tmp_path / "missing.png"]
    results = tinyvit.predict(mixed, model, errors="return")
    assert [r.ok for r in results] == [True, False, True, False]
    assert results[1].input == str(bad) and results[3].input == str(tmp_path / "missing.png")
    assert results[1].error.startswith("not an image") and results[3].error == "no such file"
    # each failure names its input once (the input, then the reason: not the input twice)
    assert str(results[1]) == f"{bad}: error: {results[1].error}" and str(bad) not in results[1].error
    assert results[1].error_line() == f"{str(bad)!r}: {results[1].error}"
    assert results[1].label == -1 and results[1].to_dict()["error"] == results[1].error
    assert results[1].to_dict()["pred_score"] is None  # no NaN: the row is valid JSON
    assert results[2].label == tinyvit.predict(images[1], model).label
    with pytest.raises(tinyvit.ImageError, match="missing.png"):  # paths are checked before anything runs
        tinyvit.predict(mixed, model)
    with pytest.raises(tinyvit.ImageError, match="broken.jpg"):
        tinyvit.predict(mixed[:3], model)
    with pytest.raises(ValueError, match="errors must be"):
        tinyvit.predict(images[0], model, errors="ignore")


def test_models_are_cached_per_spec_device_dtype(weights, images):
    from tinyvit.run.options import ModelOptions
    from tinyvit.run.runtime import cached_model

    bf16 = ModelOptions(dtype=torch.bfloat16)
    a = tinyvit.predict(images[0], str(weights))
    assert cached_model(str(weights)) is cached_model(str(weights))
    assert cached_model(str(weights), bf16) is not cached_model(str(weights))
    b = tinyvit.predict(images[0], str(weights), dtype=torch.bfloat16)
    assert next(cached_model(str(weights), bf16).parameters()).dtype == torch.bfloat16
    assert a.label == b.label  # bf16 keeps the top-1 here; the benchmark reports its deviation


def test_cli_predict_json_with_class_names(weights, images):
    out = cli("predict", str(images[0]), "--model", str(weights), "--json")
    assert out.returncode == 0, out.stderr
    (row,) = json.loads(out.stdout)
    expected = tinyvit.predict(images[0], tinyvit.load(weights))
    assert [t["name"] for t in row["topk"]] == [n for _, n, _ in expected.topk]
    assert len(row["topk"]) == 5 and row["pred_class"] == expected.name
    text = cli("predict", str(images[0].parent), "--model", str(weights), "--top-k", "2")
    assert text.returncode == 0 and text.stdout.count(expected.name) >= 1


def test_cli_errors_exit_codes(weights, images, tmp_path):
    missing = cli("predict", str(tmp_path / "nope.jpg"), "--model", str(weights))
    assert missing.returncode == 1
    assert "nope.jpg" in missing.stderr and "Traceback" not in missing.stderr
    # a missing path is found before the model loads: nothing is classified, nothing printed
    typo = cli("predict", str(images[0]), str(tmp_path / "nope.jpg"), "--model", str(weights), "--json")
    assert typo.returncode == 1 and "nope.jpg': no such file" in typo.stderr and typo.stdout == ""
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(images[0].read_bytes()[:200])
    partly = cli("predict", str(images[0]), str(broken), "--model", str(weights), "--json")
    assert partly.returncode == 1 and "1 image classified, 1 failed" in partly.stderr
    rows = json.loads(partly.stdout, parse_constant=lambda c: pytest.fail(f"{c} is not JSON"))
    assert len(rows) == 2 and rows[1]["error"] and rows[1]["pred_score"] is None
    assert {r["model"] for r in rows} == {str(weights)}
    assert cli("predict").returncode == 2
    assert cli("predict", str(images[0]), "--batch-size", "0").returncode == 2
    bad_model = cli("predict", str(images[0]), "--model", "vit-giant")
    assert bad_model.returncode == 1 and "unknown model 'vit-giant'" in bad_model.stderr
    assert "Traceback" in cli("--debug", "predict", str(images[0]), "--model", "vit-giant").stderr


def test_cli_eval_matches_rates_computed_from_predict(weights, model, images, tmp_path):
    root = tmp_path / "val"
    wnids = [imagenet_classes().ids[i] for i in (1, 7)]
    files = {}
    for k, wnid in enumerate(wnids):
        (root / wnid).mkdir(parents=True)
        for j, src in enumerate(images[k::2] + images[:1]):
            dst = root / wnid / f"{j}.jpg"
            dst.write_bytes(src.read_bytes())
            files[dst] = (1, 7)[k]
    # the rates, computed here from predict() on the same files
    results = [tinyvit.predict(p, model) for p in files]
    top1 = 100 * np.mean([r.label == y for r, y in zip(results, files.values(), strict=True)])
    top5 = 100 * np.mean([y in [t[0] for t in r.topk] for r, y in zip(results, files.values(), strict=True)])

    out = cli("eval", str(root), "--model", str(weights), "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert summary["images"] == len(files) and summary["failed"] == 0
    assert summary["top1"] == pytest.approx(top1) and summary["top5"] == pytest.approx(top5)
    text = cli("eval", str(root), "--model", str(weights), "--limit", "3")
    assert text.returncode == 0 and "(3 images)" in text.stdout
    (root / "not-a-class").mkdir()
    bad = cli("eval", str(root), "--model", str(weights))
    assert bad.returncode == 1 and "neither a class id, a class name nor a class index" in bad.stderr


def test_attention_rollout_by_hand():
    torch.manual_seed(0)
    a1 = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    a2 = torch.softmax(torch.randn(1, 2, 3, 3), -1)
    eye = np.eye(3)

    def step(a):
        m = 0.5 * eye + 0.5 * a[0].mean(0).numpy()
        return m / m.sum(-1, keepdims=True)

    expected = step(a2) @ step(a1)
    np.testing.assert_allclose(attention_rollout([a1, a2])[0].numpy(), expected, atol=1e-6)


def test_cli_explain_writes_a_png(weights, images, tmp_path):
    out = tmp_path / "explain.png"
    result = cli("explain", str(images[0]), "--model", str(weights), "-o", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as img:
        assert img.format == "PNG" and img.size == Image.open(images[0]).size  # the whole photo
        view = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert view.std() > 5  # a picture, not a blank


def test_cli_models(tmp_path):
    out = cli("models", "--json", env={"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == sum(len(e.weights) for e in tinyvit.weights.manifest.entries().values())
    first = rows[0]
    assert (first["name"], first["tag"], first["default"], first["cached"]) == (
        "vit-base-p32-384",
        "augreg_in21k_ft_in1k",
        True,
        False,
    )
    assert first["params"] == 88297192 and first["top1"] == 83.358
    assert "vit-large-p16-384:mmpretrain" in cli("models").stdout


def test_readme_model_table_is_the_manifest():
    from tinyvit.weights.manifest import markdown_table

    assert readme_block("models") == markdown_table(), "regenerate it: tinyvit models --markdown"


def test_ci_runs_the_readme_test_command():
    command = readme_block("test-command").strip("`\n").splitlines()[-1]
    assert command in (ROOT / ".ci" / "run").read_text()


def test_wheel_installs_and_runs_in_a_fresh_venv(tmp_path):
    """Pure-Python wheel, installed (not editable) into a new venv; its dependencies are taken from
    this environment through a .pth file, so nothing is downloaded."""
    import sysconfig

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("tinyvit-*.whl")
    assert wheel.name.endswith("-py3-none-any.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], capture_output=True, text=True
    ).stdout.strip()
    Path(site, "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    where = subprocess.run([py, "-c", "import tinyvit; print(tinyvit.__file__)"], capture_output=True, text=True)
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    out = subprocess.run([venv / "bin" / "tinyvit", "models"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "vit-base-p32-384:augreg_in21k_ft_in1k" in out.stdout
