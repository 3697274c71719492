"""tinyvit on Ray Data: Classifier / Embedder in map_batches and run_job (the ``tinyvit[ray]`` extra),
on a local two-CPU Ray that listens on loopback only and is shut down at the end."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import time

# before Ray is imported: no usage reporting, and the local node's servers bind 127.0.0.1 only
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

# the test extra installs tinyvit[ray]: these tests run in CI, and no other test module needs Ray
import pandas as pd  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
import ray  # noqa: E402
import ray.data  # noqa: E402
import torch  # noqa: E402
from conftest import FIXTURES, cli  # noqa: E402
from PIL import Image  # noqa: E402

import tinyvit  # noqa: E402
import tinyvit.ray as tvray  # noqa: E402
from tinyvit.deploy.ray import EMBEDDING_TYPE, TOPK_TYPE  # noqa: E402
from tinyvit.images.inputs import image_files  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")  # Ray's own settings

PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))
BAD = {"03_not_an_image.jpg", "07_truncated.jpg", "11_empty.png"}
RESTART_NOTICE = "has constructor arguments in the object store"  # Ray's core worker, for each restartable actor


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def cluster():
    """A local Ray: two CPUs, loopback only, no dashboard; shut down after the module."""
    if ray.is_initialized():
        pytest.skip("a Ray session is already running in this process")
    ray.init(
        num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", object_store_memory=200 * 2**20,
        log_to_driver=False,
    )  # fmt: skip
    ray.data.DataContext.get_current().enable_progress_bars = False
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A small random ViT, saved in timm's layout and converted like any user checkpoint."""
    from safetensors.torch import save_file

    from tinyvit.models.vit import VisionTransformer, ViTConfig

    folder = tmp_path_factory.mktemp("ray_model")
    config = ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    model = VisionTransformer(config).init_weights()
    save_file(model.state_dict(), str(folder / "timm.safetensors"))
    spec = tinyvit.PreprocessSpec(resize=36, crop=32, interpolation="bicubic", mean=(127.5,) * 3, std=(127.5,) * 3)
    labels = [f"thing {i}" for i in range(10)]
    return tinyvit.convert(
        folder / "timm.safetensors", folder / "small.safetensors", arch=config, labels=labels, preprocess=spec
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Real photos at small sizes (JPEG, a gray PNG, an RGBA PNG), with unreadable files mixed in."""
    root = tmp_path_factory.mktemp("ray_photos")
    for i in range(12):
        img = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        img = img.resize((40 + 7 * i, 30 + 5 * i))
        if i == 5:
            img.convert("L").save(root / f"{i:02d}_gray.png")
        elif i == 9:
            rgba = img.convert("RGBA")
            rgba.putalpha(Image.linear_gradient("L").resize(img.size))
            rgba.save(root / f"{i:02d}_alpha.png")
        else:
            img.save(root / f"{i:02d}.jpg", quality=90)
    (root / "03.jpg").unlink()
    (root / "03_not_an_image.jpg").write_bytes(b"not a jpeg at all")
    (root / "07.jpg").rename(root / "07_truncated.jpg")
    (root / "07_truncated.jpg").write_bytes((root / "08.jpg").read_bytes()[:300])
    (root / "11.jpg").unlink()
    (root / "11_empty.png").write_bytes(b"")
    return root


def files_of(folder: Path) -> list[Path]:
    return image_files(folder)


def by_path(rows: list[dict]) -> dict[str, dict]:
    out = {str(r["path"]): r for r in rows}
    assert len(out) == len(rows), "one row per input"
    return out


def assert_same_as_predict(row: dict, want: tinyvit.Prediction, *, top_k: int) -> None:
    if want.ok:
        assert row["error"] is None
        assert row["label"] == want.label and row["name"] == want.name
        assert abs(row["score"] - want.score) <= 1e-5
        got_topk = list(row["topk"])
        assert [t["label"] for t in got_topk] == [label for label, _, _ in want.topk]
        assert [t["name"] for t in got_topk] == [name for _, name, _ in want.topk]
        assert np.allclose([t["score"] for t in got_topk], [s for _, _, s in want.topk], atol=1e-5, rtol=0)
        assert len(got_topk) == top_k
    else:
        assert row["error"] == want.error  # the message predict gives for that path
        assert row["label"] is None and row["name"] is None and row["score"] is None and row["topk"] is None


def test_cli_ray_writes_parquet_with_the_rows_of_predict(small_model, folder, tmp_path):
    """``tinyvit predict --ray``: its own local Ray (in a subprocess, before this module starts
    one), Parquet that reads back with one row per input, each equal to ``tinyvit.predict``."""
    assert not ray.is_initialized()
    out = tmp_path / "preds.parquet"
    cmd = [sys.executable, "-m", "tinyvit", "predict", str(folder), "--ray", "-o", str(out),
           "--model", str(small_model), "--batch-size", "4", "--top-k", "3"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    files = files_of(folder)
    assert proc.returncode == 1, proc.stderr  # three images could not be read: said, and exit 1
    assert f"{len(files)} rows, 3 failed" in proc.stdout and "truncated" in proc.stderr.lower()
    # tinyvit's lines, not Ray's: no INFO logging, no progress report, no core worker's alarm
    assert " INFO " not in proc.stderr and "core_worker" not in proc.stderr and "Deprecat" not in proc.stderr
    assert all(line.startswith("tinyvit: error: ") for line in proc.stderr.splitlines()), proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # the temporary folder took its name
    # a second run into the same folder: refused before any Ray starts, unless --overwrite
    again = cli(*cmd[3:])
    assert again.returncode == 1 and "is not empty" in again.stderr and "--overwrite" in again.stderr
    rows = by_path(pq.read_table(out).to_pylist())
    assert set(rows) == {str(f.resolve()) for f in files}
    for f in files:
        want = tinyvit.predict(f.resolve(), str(small_model), top_k=3, errors="return")
        assert_same_as_predict(rows[str(f.resolve())], want, top_k=3)


def map_workers(session: int) -> list[int]:
    """The pids of Ray Data's actors (``ray::MapWorker…``) in the session ``session`` leads (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if b"MapWorker" in cmdline and int(fields[3]) == session and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the actor through /proc")
def test_cli_ray_job_survives_a_killed_actor(small_model, tmp_path):
    """``tinyvit predict photos/ --ray``: its actor is killed (SIGKILL, as the OOM killer does) once
    it has written its first batch; Ray Data restarts it and reruns what it held, so every row is
    written, none twice, none failed, exit 0 — and Ray's notice about restartable actors is not
    printed."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(48):
        Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB").resize((320, 240)).save(photos / f"{i:02d}.jpg")
    out = tmp_path / "preds.parquet"
    cmd = [sys.executable, "-m", "tinyvit", "predict", str(photos), "--ray", "-o", str(out),
           "--model", str(small_model), "--batch-size", "2"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    killed, deadline = None, time.monotonic() + 240
    try:
        while proc.poll() is None and killed is None and time.monotonic() < deadline:
            written = [f for part in tmp_path.glob(".preds.parquet.partial-*") for f in part.iterdir()]
            actors = map_workers(proc.pid)
            if written and actors:  # the actor is past its set-up and 23 of its 24 batches are to come
                os.kill(actors[0], signal.SIGKILL)
                killed = len(written)
            time.sleep(0.02)
        stdout, stderr = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert killed is not None and killed < 24, "the actor was not killed mid-job"
    assert proc.returncode == 0, stderr
    assert "48 rows, 0 failed" in stdout and RESTART_NOTICE not in stderr, (stdout, stderr)
    rows = pq.read_table(out).to_pylist()
    assert sorted(r["path"] for r in rows) == sorted(str(p) for p in image_files(photos))  # each once
    assert all(r["error"] is None for r in rows)


# ---------------------------------------------------------------------------------------------
# The callable classes, called directly (no cluster): formats, pass-through, nulls, clashes


def test_a_numpy_batch_keeps_every_row_and_column(small_model, folder):
    files = files_of(folder)
    clf = tvray.Classifier(str(small_model), top_k=2)
    batch = {
        "bytes": np.array([f.read_bytes() for f in files] + [None], dtype=object),
        "path": np.array([str(f) for f in files] + ["nothing.jpg"], dtype=object),
        "id": np.arange(len(files) + 1),
    }
    out = clf(batch)
    assert "bytes" not in out  # the image data is dropped; everything else passes through
    assert list(out["id"]) == list(range(len(files) + 1)) and list(out["path"]) == list(batch["path"])
    want = tinyvit.predict(files, str(small_model), top_k=2, errors="return")
    columns = {k: v.to_pylist() if hasattr(v, "to_pylist") else list(v) for k, v in out.items()}
    rows = [dict(zip(columns, values, strict=True)) for values in zip(*columns.values(), strict=True)]
    for row, w in zip(rows, want, strict=False):
        assert_same_as_predict(row, w, top_k=2)
    assert rows[-1]["error"] == "no image: the 'bytes' value is null" and rows[-1]["label"] is None
    assert sum(r["error"] is not None for r in rows) == len(BAD) + 1

    kept = tvray.Classifier(str(small_model), keep_input=True, prefix="pred_")(batch)
    assert {"bytes", "pred_label", "pred_error"} <= set(kept) and "label" not in kept


def test_a_pandas_batch_gives_a_pandas_batch(small_model, folder):
    files = files_of(folder)[:4]
    frame = pd.DataFrame({"path": [str(f) for f in files], "label": [7, 8, 9, 10]}, index=[10, 11, 12, 13])
    with pytest.raises(tinyvit.TinyViTError, match="already has a column 'label'.*prefix="):
        tvray.Classifier(str(small_model))(frame)
    out = tvray.Classifier(str(small_model), prefix="pred_")(frame)
    assert isinstance(out, pd.DataFrame) and list(out.index) == [10, 11, 12, 13]
    assert list(out["label"]) == [7, 8, 9, 10] and list(out["path"]) == [str(f) for f in files]  # kept: the key
    want = tinyvit.predict(files, str(small_model), errors="return")
    assert list(out["pred_label"].astype(object).where(out["pred_label"].notna(), None)) == [
        w.label if w.ok else None for w in want
    ]
    emb = tvray.Embedder(str(small_model))(frame[["path"]])
    assert str(emb["embedding"].dtype) == "list<item: float>[pyarrow]"


def test_a_batch_without_an_image_column_is_refused(small_model):
    with pytest.raises(tinyvit.TinyViTError, match="no bytes / image / path column"):
        tvray.Classifier(str(small_model))({"text": np.array(["a"])})
    with pytest.raises(tinyvit.TinyViTError, match="column must be one of"):
        tvray.Classifier(str(small_model), column="pixels")


def test_run_job_checks_its_arguments_before_starting_anything(small_model, folder, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.parquet").write_bytes(b"")
    with pytest.raises(tinyvit.TinyViTError, match="not empty"):
        tvray.run_job(folder, tmp_path / "full", str(small_model))
    with pytest.raises(tinyvit.ImageError, match="no such file"):
        tvray.run_job([folder / "missing.jpg"], tmp_path / "out", str(small_model))
    with pytest.raises(tinyvit.TinyViTError, match="no file matches"):
        tvray.run_job(str(folder / "*.tiff"), tmp_path / "out", str(small_model))
    with pytest.raises(tinyvit.TinyViTError, match=r"unexpected argument\(s\) normalize"):
        tvray.run_job(folder, tmp_path / "out", str(small_model), normalize=True)
    with pytest.raises(tinyvit.TinyViTError, match="not both"):
        tvray.run_job([str(folder), "s3://bucket/x/"], tmp_path / "out", str(small_model))
    with pytest.raises(tinyvit.TinyViTError, match="did you mean 'vit-base-p32-384'"):
        tvray.run_job(folder, tmp_path / "out", "vit-base-p32-348")
    with pytest.raises(tinyvit.TinyViTError, match="did you mean 'vit-base-p32-384'"):
        tvray.run_job(folder, tmp_path / "out", "vit-base-p32-348", address="127.0.0.1:1")  # a cluster: no loading
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------
# On Ray


def test_classifier_over_read_binary_files_equals_predict(cluster, small_model, folder):
    files = files_of(folder)
    ds = ray.data.read_binary_files([str(f) for f in files], include_paths=True)
    ds = ds.map_batches(
        tvray.Classifier, fn_constructor_kwargs={"model": str(small_model), "top_k": 3}, batch_size=4,
        compute=ray.data.ActorPoolStrategy(size=1), num_gpus=0,
    )  # fmt: skip
    rows = by_path(ds.take_all())
    assert sorted(rows) == sorted(str(f) for f in files)  # exactly one row per input, matched by path
    assert set(rows[str(files[0])]) == {"path", "label", "name", "score", "topk", "error"}
    want = tinyvit.predict(files, str(small_model), top_k=3, errors="return")
    for w in want:
        assert_same_as_predict(rows[w.input], w, top_k=3)
    assert {Path(p).name for p, r in rows.items() if r["error"] is not None} == BAD


def test_classifier_over_an_image_column_equals_predict_on_those_arrays(cluster, small_model, folder, tmp_path):
    """read_images decodes with Ray's own Pillow call: no EXIF orientation. On the arrays it gives,
    the numbers equal predict's; on files without an orientation tag, predict's on the files too."""
    good = [f for f in files_of(folder) if f.suffix == ".jpg" and f.name not in BAD]
    rotated = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # displayed rotated by 90°
    Image.open(good[0]).save(rotated, quality=90, exif=exif.tobytes())
    paths = [*good, rotated]
    ds = ray.data.read_images([str(p) for p in paths], include_paths=True, mode="RGB")
    kwargs = {"model": str(small_model)}
    ds = ds.map_batches(tvray.Classifier, fn_constructor_kwargs=kwargs, batch_size=3, concurrency=1)  # older spelling
    rows = by_path(ds.take_all())
    assert len(rows) == len(paths) and "image" not in next(iter(rows.values()))
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]  # what read_images(mode="RGB") gives
    for p, w in zip(paths, tinyvit.predict(arrays, str(small_model), errors="return"), strict=True):
        assert_same_as_predict(rows[str(p)], w, top_k=5)
    for p, w in zip(good, tinyvit.predict(good, str(small_model)), strict=True):
        assert_same_as_predict(rows[str(p)], w, top_k=5)
    upright = tinyvit.predict(rotated, str(small_model))
    assert abs(rows[str(rotated)]["score"] - upright.score) > 1e-6  # tinyvit turns it upright; Ray does not


def test_embedder_equals_embed(cluster, small_model, folder):
    files = files_of(folder)
    ds = ray.data.read_binary_files([str(f) for f in files], include_paths=True)
    ds = ds.map_batches(
        tvray.Embedder, fn_constructor_kwargs={"model": str(small_model), "normalize": True}, batch_size=5,
        compute=ray.data.ActorPoolStrategy(size=1), batch_format="pandas",
    )  # fmt: skip
    rows = by_path(ds.take_all())
    assert len(rows) == len(files)
    good = [f for f in files if f.name not in BAD]
    want = tinyvit.embed(good, str(small_model), normalize=True)
    got = torch.tensor(np.stack([np.asarray(rows[str(f)]["embedding"], dtype=np.float32) for f in good]))
    assert got.shape == want.shape == (len(good), 64)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    for f in files:
        assert (rows[str(f)]["error"] is None) == (f.name not in BAD)
        if f.name in BAD:
            assert rows[str(f)]["embedding"] is None


def test_run_job_writes_parquet_that_reads_back_as_predict(cluster, small_model, folder, tmp_path):
    files = files_of(folder)
    out = tmp_path / "preds.parquet"
    summary = tvray.run_job(folder, out, str(small_model), batch_size=4, top_k=3, num_gpus=0)
    assert (summary.rows, summary.failed) == (len(files), len(BAD))
    assert {Path(p).name for p, _ in summary.errors} == BAD
    table = pq.read_table(out)
    assert table.schema.field("topk").type == TOPK_TYPE and table.schema.field("label").type == "int64"
    rows = by_path(table.to_pylist())
    assert sorted(rows) == sorted(str(f) for f in files)  # absolute paths, one row each
    for w in tinyvit.predict(files, str(small_model), top_k=3, errors="return"):
        assert_same_as_predict(rows[w.input], w, top_k=3)
    assert ray.is_initialized()  # the session it found is left running


def test_run_job_embeds_a_glob_with_two_actors(cluster, small_model, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(folder)
    out = tmp_path / "feats"
    summary = tvray.run_job("*.jpg", out, str(small_model), kind="embed", actors=2, batch_size=2)
    jpgs = sorted(folder.glob("*.jpg"))
    assert (summary.rows, summary.failed) == (len(jpgs), 2)
    table = pq.read_table(out)
    assert table.schema.field("embedding").type == EMBEDDING_TYPE
    rows = by_path(table.to_pylist())
    good = [f for f in jpgs if f.name not in BAD]
    want = tinyvit.embed(good, str(small_model))
    got = torch.tensor([rows[str(f)]["embedding"] for f in good])
    assert torch.allclose(got, want, atol=1e-5, rtol=0)
    with pytest.raises(tinyvit.TinyViTError, match="not empty"):
        tvray.run_job("*.jpg", out, str(small_model), kind="embed")
    assert tvray.run_job("*.jpg", out, str(small_model), kind="embed", overwrite=True).rows == len(jpgs)
    assert pq.read_table(out).num_rows == len(jpgs)


def test_an_interrupted_job_leaves_no_output(cluster, small_model, folder, tmp_path, monkeypatch):
    """Ctrl-C after rows were written: no Parquet folder is left half-written, under any name."""
    write = ray.data.Dataset.write_parquet

    def write_then_interrupt(self, path, **kw):
        write(self, path, **kw)
        assert any(Path(path).iterdir())  # rows were written (into the hidden folder)
        raise KeyboardInterrupt

    monkeypatch.setattr(ray.data.Dataset, "write_parquet", write_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        tvray.run_job(folder, tmp_path / "preds.parquet", str(small_model))
    assert list(tmp_path.iterdir()) == []


def test_run_job_reads_uris_through_ray(cluster, small_model, folder, tmp_path):
    """URIs (s3://, gs://, file://) go to read_binary_files: the same rows, the paths without the scheme."""
    files = files_of(folder)
    with pytest.raises(tinyvit.TinyViTError, match="reading the files needs one"):
        tvray.run_job(folder.as_uri(), tmp_path / "none", str(small_model), actors=2)
    summary = tvray.run_job(folder.as_uri(), tmp_path / "uri", str(small_model), batch_size=6)
    assert (summary.rows, summary.failed) == (len(files), len(BAD))
    rows = by_path(pq.read_table(tmp_path / "uri").to_pylist())
    assert sorted(rows) == sorted(str(f) for f in files)
    for w in tinyvit.predict(files, str(small_model), errors="return"):
        assert_same_as_predict(rows[w.input], w, top_k=5)


@pytest.mark.parametrize("family, case", [("test_families", "hf_siglip_vision"), ("test_rope", "timm_eva02_clip")])
def test_embedder_on_an_image_embedding_model_gives_its_embedding(family, case, tmp_path):
    """For DINOv2, CLIP and SigLIP towers, the embedding is the model's own output (a transformers
    SigLIP folder: its attention-pooled feature; a timm EVA02-CLIP tower, rotary), as tinyvit.embed
    gives it."""
    folder = importlib.import_module(family).write_case(case, tmp_path / case)
    photos = sorted(str(p) for p in (FIXTURES / "photos").glob("*.jpg"))[:2]
    out = tvray.Embedder(str(folder))({"path": np.array(photos)})
    got = np.stack(out["embedding"].to_numpy(zero_copy_only=False))
    assert np.allclose(got, tinyvit.embed(photos, str(folder)).numpy(), atol=1e-5)


def test_cli_embed_ray_of_an_image_embedding_model(cluster, tmp_path):
    """``tinyvit embed photos/ --model dinov2_folder --ray -o feats.parquet``, as a user ran it (a
    transformers DINOv2 folder): exit 0, one row per photo, each the embedding tinyvit.embed gives;
    ``predict --ray`` of the same folder is refused before anything starts, pointing to embed."""
    from test_families import write_case

    folder = write_case("hf_dinov2", tmp_path / "dinov2_folder")
    out = tmp_path / "feats.parquet"
    ran = cli("embed", FIXTURES / "photos", "--model", folder, "--ray", "-o", out)
    assert ran.returncode == 0, ran.stderr
    assert f"{len(PHOTOS)} rows, 0 failed" in ran.stdout, ran.stdout
    rows = by_path(pq.read_table(out).to_pylist())
    want = tinyvit.embed([str(p.resolve()) for p in PHOTOS], str(folder)).numpy()
    got = np.stack([np.asarray(rows[str(p.resolve())]["embedding"]) for p in PHOTOS])
    assert np.allclose(got, want, atol=1e-5)
    refused = cli("predict", FIXTURES / "photos", "--model", folder, "--ray", "-o", tmp_path / "preds.parquet")
    assert refused.returncode == 1 and "embed" in refused.stderr and not (tmp_path / "preds.parquet").exists()
