"""The many-images pipeline: decoding overlapped with the model, bounded, streaming, in order;
the CLI's streaming output and Ctrl-C; inputs checked before weights; embeddings."""

from __future__ import annotations

import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES, cli, load_parity, small_vit_file
from hubserver import HubServer
from PIL import Image
from safetensors import safe_open

import tinyvit
import tinyvit.run.runner as runner
import tinyvit.run.runtime as runtime
from tinyvit.images.inputs import image_files
from tinyvit.images.transforms import preprocess_one
from tinyvit.run.runner import PREFETCH_BATCHES
from tinyvit.run.runtime import fast_dtype, native_bf16_cpu
from tinyvit.weights.specs import parse_spec

META, _ = load_parity()
PHOTOS = sorted((FIXTURES / "photos").glob("*.jpg"))


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    """The model for what does not depend on the model's size: how images flow, what is written.
    (Tests about timing against the forward pass — the first line printed before the last image is
    decoded, Ctrl-C part-way — keep the full-size B/32 ``weights``.)"""
    return small_vit_file(tmp_path_factory.mktemp("small"))


@pytest.fixture(scope="module")
def model(small):
    return tinyvit.load(small)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Real photos at several sizes, with unreadable files mixed in."""
    root = tmp_path_factory.mktemp("photos")
    for i, photo in enumerate(PHOTOS * 3):
        img = Image.open(photo)
        img.resize((img.width * (i % 3 + 2) // 3, img.height * (i % 3 + 2) // 3)).save(
            root / f"{i:02d}.jpg", quality=90
        )
    (root / "03.jpg").write_bytes(b"not a jpeg at all")  # unreadable, early
    (root / "07.jpg").write_bytes((root / "08.jpg").read_bytes()[:300])  # truncated, in the middle
    (root / "11.png").write_bytes(b"")  # empty, last
    return root


def serial(model, items, batch_size):
    """The plain serial loop (tinyvit 0.1's predict): decode a batch, then run it."""
    spec = model.weights.preprocess
    out = []
    for start in range(0, len(items), batch_size):
        tensors, slots = [], []
        for item in items[start : start + batch_size]:
            try:
                tensors.append(preprocess_one(item, spec))
                slots.append(len(out))
                out.append(None)
            except tinyvit.ImageError as e:
                out.append(e.reason)
        if tensors:
            with torch.inference_mode():
                probs = model(torch.stack(tensors)).float().softmax(-1)
            for slot, p in zip(slots, probs, strict=True):
                out[slot] = p
    return out


@pytest.mark.parametrize("workers, batch_size", [(1, 4), (3, 3)])
def test_pipeline_equals_the_serial_path_with_bad_files_mixed_in(model, folder, workers, batch_size):
    files = image_files(folder)
    got = tinyvit.predict(folder, model, batch_size=batch_size, errors="return", workers=workers, top_k=3)
    want = serial(model, files, batch_size)
    assert [r.input for r in got] == [str(f) for f in files]  # input order
    assert [r.ok for r in got] == [isinstance(w, torch.Tensor) for w in want]
    assert sum(not r.ok for r in got) == 3
    for r, w in zip(got, want, strict=True):
        if r.ok:
            assert torch.equal(r.scores, w)  # the same numbers, bit for bit
        else:
            assert r.error == w


class Tracked(io.BytesIO):
    """An image as a binary file object that records when it is read (decoded)."""

    log: list[int] = []

    def __init__(self, data: bytes, index: int):
        super().__init__(data)
        self.index = index
        self.name = f"tracked-{index}"

    def read(self, *args):
        Tracked.log.append(self.index)
        return super().read(*args)


def test_results_stream_in_order_and_decoding_stays_a_few_batches_ahead(model):
    data = PHOTOS[0].read_bytes()
    Tracked.log = []
    n, bs = 40, 2
    items = [Tracked(data, i) for i in range(n)]
    seen = []
    for r in tinyvit.predict_iter(items, model, batch_size=bs, workers=2):
        seen.append(r.input)
        # never more than the prefetch window decoded beyond what has been handed out
        assert len(Tracked.log) <= len(seen) + bs - 1 + (PREFETCH_BATCHES + 1) * bs
        if len(seen) == 1:
            assert len(Tracked.log) < n  # the first result came before the last image was decoded
    assert seen == [f"tracked-{i}" for i in range(n)]


def test_cli_prints_the_first_result_before_the_last_image_is_decoded(weights, tmp_path):
    """The last file is replaced once the first line is out; its result shows the new picture,
    so it was decoded after the first line was printed."""
    files = []
    for i in range(10):  # more than the decoding window (a few images at batch size 1) ahead of the first
        files.append(tmp_path / f"{i:02d}.jpg")
        files[-1].write_bytes(PHOTOS[0].read_bytes())
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyvit", "predict", *map(str, files), "--model", str(weights), "--jsonl",
         "--batch-size", "1", "--top-k", "1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        first = json.loads(proc.stdout.readline())
        files[-1].write_bytes(PHOTOS[1].read_bytes())  # after the first result: a different photo
        rest = [json.loads(line) for line in proc.stdout]
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
    finally:
        proc.kill()
    rows = [first, *rest]
    assert [r["input"] for r in rows] == [str(f) for f in files]

    def scores(row):
        return {t["label"]: t["score"] for t in row["topk"]}

    model = tinyvit.load(weights)
    now = tinyvit.predict(files[-1], model, top_k=1000)
    assert scores(rows[-1]) == pytest.approx({i: s for i, _, s in now.topk}, abs=1e-6)
    assert scores(rows[-1]) != pytest.approx(scores(rows[0]), abs=1e-6)  # not the photo it started as


def test_ctrl_c_keeps_what_was_printed_and_exits_130(weights, tmp_path):
    files = []
    for i in range(40):
        files.append(tmp_path / f"{i:02d}.jpg")
        files[-1].write_bytes(PHOTOS[i % len(PHOTOS)].read_bytes())
    for fmt in ("--jsonl", "--json"):
        proc = subprocess.Popen(
            [sys.executable, "-m", "tinyvit", "predict", *map(str, files), "--model", str(weights), fmt,
             "--batch-size", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            head = proc.stdout.readline() + (proc.stdout.readline() if fmt == "--json" else "")
            proc.send_signal(signal.SIGINT)
            tail = proc.stdout.read()  # not communicate(): it would skip what readline() buffered
            err = proc.stderr.read()
            proc.wait(timeout=120)
        finally:
            proc.kill()
        assert proc.returncode == 130, err
        assert "interrupted after" in err and f"of {len(files)} images" in err and "Traceback" not in err
        out = head + tail
        if fmt == "--jsonl":
            rows = [json.loads(line) for line in out.splitlines()]
        else:
            rows = json.loads(out)  # still one valid JSON document
        assert 1 <= len(rows) < len(files)
        assert [r["input"] for r in rows] == [str(f) for f in files[: len(rows)]]


def test_json_output_is_strict_json_when_an_image_fails(small, folder):
    out = cli("predict", str(folder), "--model", str(small), "--json")
    assert out.returncode == 1
    rows = json.loads(out.stdout, parse_constant=lambda c: pytest.fail(f"{c} in the JSON output"))
    failed = [r for r in rows if r["error"]]
    assert len(failed) == 3 and all(r["pred_score"] is None and r["pred_label"] is None for r in failed)
    lines = cli("predict", str(folder), "--model", str(small), "--jsonl").stdout.splitlines()
    assert [json.loads(line)["input"] for line in lines] == [r["input"] for r in rows]


def test_missing_inputs_fail_before_any_request(tmp_path):
    with HubServer() as hub:
        env = {"HF_HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
        (tmp_path / "empty").mkdir()
        for args in ([str(tmp_path / "typo.jpg")], [str(tmp_path / "empty")], ["s3://bucket/cat.jpg"]):
            start = time.monotonic()
            out = cli("predict", *args, env=env)
            assert out.returncode == 1 and "Traceback" not in out.stderr
            assert time.monotonic() - start < 30  # no download, no retries (the real bound is in the benchmark)
        code = "import tinyvit\ntry:\n    tinyvit.predict('typo.jpg')\nexcept tinyvit.ImageError as e:\n    print(e)\n"
        py = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, **env}, timeout=60)  # fmt: skip
        assert "typo.jpg': no such file" in py.stdout
        assert hub.requests == []  # not one request: the inputs were checked first


def test_embed_equals_extract_feat(model, folder, tmp_path):
    good = [p for p in image_files(folder) if p.name not in ("03.jpg", "07.jpg", "11.png")]
    feats = tinyvit.embed(good, model, batch_size=4)
    with torch.inference_mode():
        ref = torch.cat(
            [model.extract_feat(tinyvit.preprocess(good[i : i + 4], model)) for i in range(0, len(good), 4)]
        )
    assert feats.shape == (len(good), model.config.embed_dim) and torch.equal(feats, ref)
    unit = tinyvit.embed(good[:3], model, normalize=True)
    torch.testing.assert_close(unit, torch.nn.functional.normalize(ref[:3], dim=-1), atol=1e-6, rtol=0)
    assert tinyvit.embed(good[0], model).shape == (model.config.embed_dim,)


@pytest.mark.parametrize("suffix", [".safetensors", ".npy"])
def test_cli_embed_writes_features_inputs_and_record(small, model, folder, tmp_path, suffix):
    out_file = tmp_path / f"feats{suffix}"
    # --exact: the reference kernels, as the loaded model runs them, in the same batches of 3 (a kernel
    # may sum a row in another order in a batch of another size: MKL's AVX2 kernels do), so the rows
    # are the runner's bit for bit
    out = cli("embed", str(folder), "-o", str(out_file), "--model", str(small), "--batch-size", "3", "--exact")
    assert out.returncode == 1  # three images failed: said, and their rows marked
    assert "3 images failed" in out.stdout and "truncated" in out.stderr.lower()
    files = [str(p) for p in image_files(folder)]
    if suffix == ".safetensors":
        with safe_open(out_file, "pt") as f:
            meta = f.metadata()
            rows, valid = f.get_tensor("embeddings"), f.get_tensor("valid")
        info = {k.removeprefix("tinyvit."): json.loads(v) for k, v in meta.items() if k.startswith("tinyvit.")}
    else:
        rows, info = torch.from_numpy(np.load(out_file)), json.loads(Path(f"{out_file}.json").read_text())
        valid = torch.tensor([0 if str(i) in info["errors"] else 1 for i in range(len(files))], dtype=torch.uint8)
    assert info["inputs"] == files
    assert tinyvit.Weights.from_dict(info["weights"]).config == model.config
    assert sorted(int(i) for i in info["errors"]) == [
        files.index(str(folder / n)) for n in ("03.jpg", "07.jpg", "11.png")
    ]
    ok = [i for i, v in enumerate(valid.tolist()) if v]
    assert len(ok) == len(files) - 3 and rows[[i for i in range(len(files)) if i not in ok]].isnan().all()
    streamed = list(tinyvit.embed_iter(files, model, batch_size=3, errors="return"))
    assert [i for i, e in enumerate(streamed) if e.ok] == ok
    assert torch.equal(rows[ok], torch.stack([torch.as_tensor(streamed[i].vector) for i in ok]))


def test_interrupted_embed_leaves_no_file(weights, tmp_path):
    files = []
    for i in range(30):
        files.append(tmp_path / f"{i}.jpg")
        files[-1].write_bytes(PHOTOS[0].read_bytes())
    out_file = tmp_path / "feats.safetensors"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tinyvit", "embed", *map(str, files), "-o", str(out_file), "--model",
         str(weights), "--batch-size", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not list(tmp_path.glob(".feats.safetensors.*")):
            time.sleep(0.05)  # wait until it writes
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".jpg")) == []  # nothing, not a part


def test_fast_mode_uses_bfloat16_only_where_the_cpu_has_it(weights):
    assert fast_dtype("cpu") == (torch.bfloat16 if native_bf16_cpu() else None)
    runtime.clear_model_cache()
    tinyvit.predict(PHOTOS[0], str(weights), fast=True)
    dtypes = {str(k[2]) for k in runtime._MODELS if k[0] == parse_spec(str(weights))}
    assert dtypes == {str(fast_dtype("cpu"))}
    # a loaded model is used as it is (its dtype is the caller's choice)
    model = tinyvit.load(weights)
    assert tinyvit.predict(PHOTOS[0], model, fast=True).ok and next(model.parameters()).dtype == torch.float32


def test_pipeline_threads_stop_when_the_consumer_stops(model):
    before = {t.name for t in threading.enumerate()}
    it = tinyvit.predict_iter(PHOTOS * 10, model, batch_size=2, workers=2)
    next(it)
    it.close()
    time.sleep(0.2)
    leftover = {t.name for t in threading.enumerate()} - before
    assert not [n for n in leftover if n.startswith("tinyvit-decode")]


def test_freed_memory_goes_back_to_the_os_after_every_batch(model, monkeypatch):
    """Without a trim per batch, glibc keeps the pages of buffers freed across threads and a long
    run's peak memory creeps up (benchmarks/bench_pipeline.py measures the peak)."""
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert runner._malloc_trim() is not None
    calls = []
    monkeypatch.setattr(runner, "_release_free_memory", lambda: calls.append(1))
    data = PHOTOS[0].read_bytes()
    assert len(list(tinyvit.predict_iter([data] * 5, model, batch_size=2))) == 5
    assert len(calls) == 3
