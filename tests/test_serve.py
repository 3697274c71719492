"""``tinyvit serve``: a real LitServe server on loopback, in a subprocess, against ``tinyvit.predict``.

Offline and bounded: the model is a small random ViT written to a temporary file; every server
runs in its own process group, is stopped with SIGTERM (as ``docker stop`` would) and then
killed with its whole group whatever happened; every request has a timeout.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("litserve")

import refdata  # noqa: E402  (tests/ is on sys.path: conftest.py)
from PIL import Image  # noqa: E402

import tinyvit  # noqa: E402

LIMIT = 100_000  # the servers' --max-body-bytes
START_TIMEOUT = 60  # seconds for a server to answer GET /health
REQUEST_TIMEOUT = 30  # seconds per request


# ---------------------------------------------------------------------------------------------
# Helpers


def image_bytes(width: int, height: int, seed: int, fmt: str = "JPEG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(refdata.make_image(width, height, seed)).save(buf, fmt)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
    """(status, decoded JSON or text) over a fresh loopback connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data)
        except ValueError:
            return response.status, data.decode("utf-8", "replace")
    finally:
        conn.close()


def predict_raw(port: int, data: bytes, content_type: str = "image/jpeg", query: str = ""):
    return request(port, "POST", "/predict" + query, data, content_type)


def predict_json(port: int, data: bytes, top_k: int | None = None):
    doc = {"inputs": base64.b64encode(data).decode("ascii")}
    if top_k is not None:
        doc["parameters"] = {"top_k": top_k}
    return request(port, "POST", "/predict", json.dumps(doc).encode(), "application/json")


def expected(model: Path, data: bytes, top_k: int = 5) -> list[tuple[str, float]]:
    p = tinyvit.predict(data, model=model, top_k=top_k)
    return [(name, score) for _, name, score in p.topk]


def assert_same(answer, want: list[tuple[str, float]]) -> None:
    assert isinstance(answer, list), answer
    assert [a["label"] for a in answer] == [name for name, _ in want]
    assert [a["score"] for a in answer] == pytest.approx([s for _, s in want], abs=1e-5)
    assert all(a["score"] >= b["score"] for a, b in zip(answer, answer[1:], strict=False))


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def stop(self, grace: float = 20) -> bool:
        """SIGTERM, wait for the whole process group to exit; True when it did by itself."""
        deadline = time.monotonic() + grace
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(grace)  # reap it: a zombie still counts as a member of its group
        except subprocess.TimeoutExpired:
            pass
        while self.group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        clean = self.proc.poll() is not None and not self.group_alive()
        if not clean:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass
        return clean


@contextmanager
def serving(model: Path, folder: Path, *args: str):
    """A tinyvit server for ``model`` on 127.0.0.1, ready; always stopped (and its group killed)."""
    port = free_port()
    log = folder / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "tinyvit.serve", str(model), "--port", str(port), "--accelerator", "cpu"]
    cmd += ["--max-body-bytes", str(LIMIT), "--timeout", str(REQUEST_TIMEOUT), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True)
    server = Server(proc, port, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the server exited with {proc.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not become healthy in {START_TIMEOUT} s:\n{log.read_text()}")
            try:
                if request(port, "GET", "/health")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> Path:
    """A small random ViT, saved in timm's layout and converted like any user checkpoint."""
    from safetensors.torch import save_file

    from tinyvit.model import VisionTransformer, ViTConfig

    folder = tmp_path_factory.mktemp("serve_model")
    config = ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10)
    model = VisionTransformer(config).init_weights()
    save_file(model.state_dict(), str(folder / "timm.safetensors"))
    spec = tinyvit.PreprocessSpec(resize=36, crop=32, interpolation="bicubic", mean=(127.5,) * 3, std=(127.5,) * 3)
    return tinyvit.convert(folder / "timm.safetensors", folder / "small.safetensors", arch=config, preprocess=spec)


@pytest.fixture(scope="module")
def server(small_model, tmp_path_factory):
    with serving(small_model, tmp_path_factory.mktemp("serve"), "--max-batch-size", "8") as s:
        yield s


# ---------------------------------------------------------------------------------------------
# The must-show: concurrency, batching, errors, nothing lost


def test_concurrent_clients_mixed_valid_and_invalid(server, small_model):
    """64 requests from 16 concurrent clients, a quarter invalid: every valid one gets predict's
    top-5, every invalid one a 400 (413 when oversized), none is lost, the server stays healthy."""
    sizes = [(32, 32), (36, 48), (50, 40), (64, 64), (100, 37), (41, 77)]
    jobs = []  # (kind, send, want)
    for i in range(48):
        w, h = sizes[i % len(sizes)]
        data = image_bytes(w, h, seed=i, fmt="PNG" if i % 2 else "JPEG")
        want = expected(small_model, data)
        if i % 4 == 3:
            jobs.append(("valid", lambda d=data: predict_json(server.port, d, top_k=5), want))
        else:
            ctype = ["image/jpeg", "image/png", "application/octet-stream"][i % 3]
            jobs.append(("valid", lambda d=data, c=ctype: predict_raw(server.port, d, c), want))
    jpeg = image_bytes(64, 48, seed=99)
    rng = random.Random(0)
    oversized = rng.randbytes(LIMIT + 1000)
    for _ in range(4):
        jobs.append(("400", lambda: predict_raw(server.port, b"this is not an image\n" * 20), None))
        jobs.append(("400", lambda: predict_raw(server.port, b"", "image/png"), None))
        jobs.append(("400", lambda: predict_raw(server.port, jpeg[: len(jpeg) // 2]), None))
        jobs.append(("413", lambda: predict_raw(server.port, oversized, "application/octet-stream"), None))
    rng.shuffle(jobs)
    assert len(jobs) == 64 and sum(kind != "valid" for kind, _, _ in jobs) == 16

    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        futures = [pool.submit(send) for _, send, _ in jobs]
        results = [f.result(timeout=120) for f in futures]
    assert time.monotonic() - start < 120

    assert len(results) == 64  # none lost
    for (kind, _, want), (status, body) in zip(jobs, results, strict=True):
        if kind == "valid":
            assert status == 200, body
            assert_same(body, want)
        else:
            assert status == int(kind), (kind, status, body)
            assert isinstance(body, dict) and body["detail"], body
    assert request(server.port, "GET", "/health") == (200, "ok")
    assert predict_raw(server.port, jpeg)[0] == 200  # and still answers


def test_a_bad_image_does_not_fail_its_batch(small_model):
    """decode_request turns an unreadable image into that request's 400; the batch goes on."""
    from tinyvit.serve import ServeOptions, TinyViTAPI

    api = TinyViTAPI(str(small_model), ServeOptions(max_batch_size=4))
    api.setup("cpu")
    good = [image_bytes(40, 30, seed=1), image_bytes(30, 40, seed=2, fmt="PNG")]
    payloads = [
        {"image": good[0], "top_k": None},
        {"image": b"GIF89a but not really", "top_k": None},
        {"image": good[1], "top_k": 3},
    ]
    outputs = api.predict([api.decode_request(p) for p in payloads])  # LitServe's batch() keeps the list
    answers = [api.encode_response(o) for o in outputs]
    assert_same(answers[0], expected(small_model, good[0]))
    assert answers[1].status_code == 400 and b"not an image" in answers[1].body
    assert_same(answers[2], expected(small_model, good[1], top_k=3))


# ---------------------------------------------------------------------------------------------
# Body kinds, parameters and errors


def test_raw_and_json_bodies(server, small_model):
    data = image_bytes(57, 43, seed=7)
    for ctype in ("image/jpeg", "image/webp", "application/octet-stream"):  # the type is not trusted: bytes are
        status, body = predict_raw(server.port, data, ctype)
        assert status == 200
        assert_same(body, expected(small_model, data))
    status, body = predict_json(server.port, data, top_k=3)
    assert status == 200 and len(body) == 3
    assert_same(body, expected(small_model, data, top_k=3))
    status, body = predict_json(server.port, data)  # no parameters: the server's --top-k (5)
    assert status == 200 and len(body) == 5
    status, body = predict_raw(server.port, data, query="?top_k=2")
    assert status == 200
    assert_same(body, expected(small_model, data, top_k=2))
    assert len(predict_json(server.port, data, top_k=50)[1]) == 10  # capped at the number of classes


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not valid JSON"),
        (b'{"inputs": 3}', "expected JSON"),
        (b'{"inputs": "%%%%"}', "not valid base64"),
        (b'{"inputs": "aGVsbG8="}', "not an image"),
        (b'{"inputs": "aGVsbG8=", "parameters": {"top_k": 0}}', "top_k"),
        (b'{"inputs": "aGVsbG8=", "parameters": {"topk": 3}}', "unknown"),
    ],
)
def test_bad_json_requests(server, body, reason):
    status, answer = request(server.port, "POST", "/predict", body, "application/json")
    assert status == 400 and reason in answer["detail"], answer


def test_oversized_bodies(server):
    """413 by Content-Length, before reading, and by what arrives when there is none (chunked)."""
    status, answer = predict_raw(server.port, bytes(LIMIT + 1))
    assert status == 413 and str(LIMIT) in answer["detail"]
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_TIMEOUT)
    try:
        chunks = (bytes(10_000) for _ in range(LIMIT // 10_000 + 2))
        conn.request("POST", "/predict", body=chunks, headers={"Content-Type": "image/jpeg"}, encode_chunked=True)
        response = conn.getresponse()
        assert response.status == 413, response.read()
    finally:
        conn.close()
    assert predict_raw(server.port, bytes(LIMIT))[0] == 400  # at the limit: read, then not an image
    assert request(server.port, "GET", "/health") == (200, "ok")


# ---------------------------------------------------------------------------------------------
# Binding, startup, shutdown


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as /proc/net/tcp* write them) listening on ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hexport = fields[1].split(":")
            if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux's /proc/net/tcp")
def test_binds_loopback_only(server):
    assert listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, and nothing else


def test_startup_prints_url_and_model(server, small_model):
    text = server.log.read_text()
    assert f"http://127.0.0.1:{server.port}" in text
    assert str(small_model) in text and "bicubic" in text and "10 classes" in text  # the model record
    assert request(server.port, "GET", "/openapi.json")[0] == 200  # the endpoint's signature is sound
    status, info = request(server.port, "GET", "/info")
    assert status == 200 and info["model"]["preprocess"]["crop"] == 32 and info["model"]["config"]["num_classes"] == 10


def test_unbatched_server_answers_the_same_and_stops_cleanly(small_model, tmp_path):
    """--max-batch-size 1 runs LitServe's other loop: same answers, same errors; SIGTERM then
    stops every process the server started."""
    data = image_bytes(48, 48, seed=3, fmt="PNG")
    with serving(small_model, tmp_path, "--max-batch-size", "1") as s:
        status, body = predict_raw(s.port, data, "image/png")
        assert status == 200
        assert_same(body, expected(small_model, data))
        status, body = predict_raw(s.port, b"\xff\xd8\xff\xe0 truncated")
        assert status == 400 and "detail" in body
        assert request(s.port, "GET", "/health") == (200, "ok")
        assert s.stop(), f"processes left after SIGTERM:\n{s.log.read_text()}"
        assert "Traceback" not in s.log.read_text(), s.log.read_text()


def test_bad_options_and_missing_model(small_model, tmp_path):
    from tinyvit.serve import ServeOptions, build_server, run

    with pytest.raises(ValueError, match="host"):
        ServeOptions(host="localhost")
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeOptions(max_batch_size=0)
    with pytest.raises(tinyvit.TinyViTError):
        build_server(tmp_path / "missing.safetensors")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(tinyvit.TinyViTError, match="cannot listen"):
            run(small_model, ServeOptions(port=busy.getsockname()[1]))


def test_an_embedding_model_is_served_at_embed(tmp_path):
    """An image embedding model (a transformers DINOv2 folder) answers at /embed with what
    tinyvit.embed gives; there is no /predict to ask for classes."""
    from test_families import write_case

    folder = write_case("hf_dinov2", tmp_path / "dinov2")
    data = image_bytes(70, 50, seed=11)
    want = tinyvit.embed(data, str(folder))
    with serving(folder, tmp_path) as s:
        status, body = request(s.port, "POST", "/embed", data, "image/jpeg")
        assert status == 200 and len(body["embedding"]) == want.shape[0]
        assert max(abs(a - b) for a, b in zip(body["embedding"], want.tolist(), strict=True)) <= 1e-5
        assert request(s.port, "POST", "/predict", data, "image/jpeg")[0] == 404
        assert request(s.port, "POST", "/embed", b"not an image", "image/jpeg")[0] == 400
        assert "POST /embed" in s.log.read_text()
