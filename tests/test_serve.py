"""``tinyvit serve``: a real LitServe server on loopback, in a subprocess, against ``tinyvit.predict``.

Offline and bounded: the model is a small random ViT written to a temporary file; every server
runs in its own process group, is stopped with SIGTERM (as ``docker stop`` would), SIGINT (a
terminal's Ctrl-C) or the death of its worker, and then killed with its whole group whatever
happened; every request has a timeout. The test that kills the shared server's worker runs last.
"""

from __future__ import annotations

import base64
import http.client
import importlib
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import litserve  # noqa: E402, F401  (the test extra installs the serve extra: a broken one fails, never skips)
import pytest
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


def request(
    port: int, method: str, path: str, body: bytes | None = None, content_type: str | None = None,
    headers: dict | None = None,
):  # fmt: skip
    """(status, decoded JSON or text) over a fresh loopback connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT)
    try:
        headers = {**({"Content-Type": content_type} if content_type else {}), **(headers or {})}
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


def multipart(*fields: tuple[str, bytes, str | None]) -> tuple[bytes, str]:
    """A multipart/form-data body of (name, content, filename or None) fields, and its Content-Type."""
    boundary = "----tinyvit-test-7MA4YWxkTrZu0gW"
    body = b""
    for name, content, filename in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        kind = "Content-Type: application/octet-stream\r\n" if filename else ""
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n{kind}\r\n".encode() + content + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: Path):
        self.proc, self.port, self.log = proc, port, log

    def group_alive(self) -> bool:
        try:
            os.killpg(self.proc.pid, 0)
            return True
        except ProcessLookupError:
            return False

    def members(self) -> list[tuple[int, str]]:
        """(pid, command line) of the running processes of its group (Linux; zombies left out:
        some init processes reap orphans late)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if int(fields[2]) == self.proc.pid and fields[0] != "Z":
                found.append((int(stat.parent.name), cmdline))
        return found

    def wait_gone(self, timeout: float = 10) -> list[tuple[int, str]]:
        """Wait for the group's processes to exit; those still running then."""
        deadline = time.monotonic() + timeout
        while (left := self.members()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

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
def serving(model: Path, folder: Path, *args: str, env: dict | None = None):
    """A tinyvit server for ``model`` on 127.0.0.1, ready; always stopped (and its group killed)."""
    port = free_port()
    log = folder / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "tinyvit.serve", str(model), "--port", str(port), "--accelerator", "cpu"]
    cmd += ["--max-body-bytes", str(LIMIT), "--timeout", str(REQUEST_TIMEOUT), *args]
    environ = {k: v for k, v in os.environ.items() if k != "TINYVIT_API_KEY"} | (env or {})
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True, env=environ
        )
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

    from tinyvit.models.vit import VisionTransformer, ViTConfig

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


def test_multipart_uploads_and_wrapped_base64(server, small_model):
    """``curl -F file=@img.png`` (multipart/form-data, after any text field) answers as the raw body
    does; a multipart body without a file part gets 400 naming it; base64 wrapped in lines (what
    the ``base64`` command writes) is read."""
    data = image_bytes(45, 61, seed=21, fmt="PNG")  # PNG's signature holds \r\n: the bytes must come through as sent
    want = predict_raw(server.port, data, "image/png")
    assert want[0] == 200
    assert_same(want[1], expected(small_model, data))
    body, ctype = multipart(("note", b"hello", None), ("file", data, "bird.png"))
    assert request(server.port, "POST", "/predict", body, ctype) == want
    assert request(server.port, "POST", "/predict?top_k=2", body, ctype)[1] == want[1][:2]
    body, ctype = multipart(("note", b"no file here", None))
    status, answer = request(server.port, "POST", "/predict", body, ctype)
    assert status == 400 and "no file part" in answer["detail"], answer
    status, answer = request(server.port, "POST", "/predict", body, "multipart/form-data")
    assert status == 400 and "boundary" in answer["detail"], answer
    wrapped = json.dumps({"inputs": base64.encodebytes(data).decode()}).encode()  # lines of 76
    assert request(server.port, "POST", "/predict", wrapped, "application/json") == want


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
    status, body = request(server.port, "POST", "/embed", b"x", "image/jpeg")
    assert status == 404 and "answers at POST /predict" in body["detail"], body
    assert "no API key: loopback only" in text
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
    from tinyvit.run.options import ModelOptions
    from tinyvit.serve import ServeOptions, build_server, run

    with pytest.raises(ValueError, match="host"):
        ServeOptions(host="localhost")
    with pytest.raises(ValueError, match="max_batch_size"):
        ServeOptions(max_batch_size=0)
    with pytest.raises(ValueError, match="disagree"):
        ServeOptions(model=ModelOptions(device="cpu"), accelerator="cuda")
    with pytest.raises(tinyvit.TinyViTError, match="PreprocessSpec"):
        ModelOptions(preprocess=224)
    with pytest.raises(ValueError, match="ModelOptions"):
        ServeOptions(model={"device": "cpu"})
    with pytest.raises(tinyvit.TinyViTError):
        build_server(tmp_path / "missing.safetensors")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(tinyvit.TinyViTError, match="cannot listen"):
            run(small_model, ServeOptions(port=busy.getsockname()[1]))


@pytest.fixture(scope="module")
def bare_checkpoint(tmp_path_factory) -> Path:
    """A timm ``.pth`` that says nothing but its tensors: no preprocessing, no class names."""
    import torch

    from tinyvit.models.vit import VisionTransformer, ViTConfig

    config = ViTConfig(image_size=32, patch_size=16, embed_dim=192, depth=1, num_heads=3, num_classes=10)
    path = tmp_path_factory.mktemp("bare") / "bare.pth"
    torch.save(VisionTransformer(config).init_weights().state_dict(), path)
    return path


def test_refused_before_anything_starts(small_model, bare_checkpoint, monkeypatch, capsys):
    """CUDA asked for where there is none, or a checkpoint without its preprocessing: one line,
    exit 1, no banner, nothing started."""
    import torch

    from tinyvit.deploy.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    port = str(free_port())
    for args in ([str(small_model), "--accelerator", "cuda"], [str(small_model), "--device", "cuda:1"],
                 [str(bare_checkpoint), "--arch", "num_heads=3"]):  # fmt: skip
        assert main(["serve", *args, "--port", port]) == 1, args
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, (args, out, err)
        assert ("not available" in err) if "cuda" in str(args) else ("--preprocess-like" in err), err
    with pytest.raises(SystemExit):  # a usage error (2)
        main(["serve", str(small_model), "--device", "cpu", "--accelerator", "cuda"])


def test_predict_options_for_a_bare_checkpoint_then_ctrl_c(bare_checkpoint, tmp_path, capsys):
    """serve takes predict's model options (--preprocess-like and explicit sizes over it,
    --labels) and answers what ``tinyvit predict`` answers with them. Ctrl-C (SIGINT to the
    process group, as a terminal sends it) then stops every process: one line, exit code 130."""
    from tinyvit.deploy.cli import main

    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"kind {i}\n" for i in range(10)))
    options = ["--preprocess-like", "vit-base-p32-384", "--crop", "32", "--resize", "40", "--labels", str(labels),
               "--arch", "num_heads=3"]  # fmt: skip
    images = []
    for i, (w, h) in enumerate([(50, 40), (33, 70), (64, 64)]):
        images.append(tmp_path / f"img{i}.jpg")
        images[-1].write_bytes(image_bytes(w, h, seed=30 + i))
    assert main(["predict", "--model", str(bare_checkpoint), *options, "--json", *map(str, images)]) == 0
    want = [[(t["name"], t["score"]) for t in row["topk"]] for row in json.loads(capsys.readouterr().out)]
    with serving(bare_checkpoint, tmp_path, *options) as s:
        for path, top in zip(images, want, strict=True):
            status, body = predict_raw(s.port, path.read_bytes())
            assert status == 200, body
            assert_same(body, top)
        assert "kind 0" in s.log.read_text() and "crop 32" in s.log.read_text()
        os.killpg(s.proc.pid, signal.SIGINT)
        assert s.proc.wait(30) == 130, s.log.read_text()
        log = s.log.read_text()
        assert "Traceback" not in log and log.rstrip().endswith("tinyvit serve: stopped"), log
        assert s.wait_gone() == []


@pytest.mark.parametrize("family, case", [("test_families", "hf_dinov2"), ("test_rope", "timm_dinov3")])
def test_an_embedding_model_is_served_at_embed(family, case, tmp_path):
    """An image embedding model (a transformers DINOv2 folder; a timm DINOv3 folder, rotary) answers
    at /embed with what tinyvit.embed gives; there is no /predict to ask for classes."""
    folder = importlib.import_module(family).write_case(case, tmp_path / case)
    data = image_bytes(70, 50, seed=11)
    want = tinyvit.embed(data, str(folder))
    with serving(folder, tmp_path) as s:
        status, body = request(s.port, "POST", "/embed", data, "image/jpeg")
        assert status == 200 and len(body["embedding"]) == want.shape[0]
        assert max(abs(a - b) for a, b in zip(body["embedding"], want.tolist(), strict=True)) <= 1e-5
        status, body = request(s.port, "POST", "/predict", data, "image/jpeg")
        assert status == 404 and "answers at POST /embed" in body["detail"], body  # not a bare "Not Found"
        assert request(s.port, "POST", "/embed", b"not an image", "image/jpeg")[0] == 400
        assert "POST /embed" in s.log.read_text()


# ---------------------------------------------------------------------------------------------
# An API key


KEY = "tinyvit-test-key-5f1c9e"


def test_an_api_key_with_huggingface_hubs_inference_client(small_model, tmp_path, monkeypatch):
    """TINYVIT_API_KEY set: huggingface_hub's real InferenceClient with the key as its token gets
    predict's answer; without it, or with another key, 401. /health stays open (probes), /info and
    /docs are closed; the key appears nowhere in the log or in /info."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import HfHubHTTPError

    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):  # the client would send these when token is None
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # nor a token saved by `hf auth login`
    data = image_bytes(52, 41, seed=13)
    with serving(small_model, tmp_path, env={"TINYVIT_API_KEY": KEY}) as s:
        url = f"http://127.0.0.1:{s.port}/predict"
        answer = InferenceClient(model=url, token=KEY, timeout=REQUEST_TIMEOUT).image_classification(data, top_k=3)
        assert_same([{"label": a.label, "score": a.score} for a in answer], expected(small_model, data, top_k=3))
        for token in (None, "another-key"):
            with pytest.raises(HfHubHTTPError) as refused:
                InferenceClient(model=url, token=token, timeout=REQUEST_TIMEOUT).image_classification(data)
            assert refused.value.response.status_code == 401
        status, body = predict_raw(s.port, data)
        assert status == 401 and "Authorization: Bearer" in body["detail"]
        for scheme in ("Bearer", "bearer"):
            status, body = request(s.port, "POST", "/predict", data, "image/jpeg", {"Authorization": f"{scheme} {KEY}"})
            assert status == 200, body
            assert_same(body, expected(small_model, data))
        assert request(s.port, "POST", "/predict", data, "image/jpeg", {"Authorization": KEY})[0] == 401  # no scheme
        assert request(s.port, "GET", "/health") == (200, "ok")
        assert request(s.port, "GET", "/info")[0] == 401 and request(s.port, "GET", "/docs")[0] == 401
        status, info = request(s.port, "GET", "/info", headers={"Authorization": f"Bearer {KEY}"})
        assert status == 200 and KEY not in json.dumps(info)
        assert "API key" in s.log.read_text()
    assert KEY not in s.log.read_text()


def test_refuses_to_listen_beyond_loopback_without_a_key(small_model, monkeypatch, capsys):
    """--host 0.0.0.0 (or ::) without a key: one line naming the way out, exit 1, nothing started;
    --no-auth says it should be open; an empty key, or a key with --no-auth, is refused too."""
    from tinyvit.deploy.cli import main
    from tinyvit.serve import check_exposure

    monkeypatch.delenv("TINYVIT_API_KEY", raising=False)
    port = str(free_port())
    for host in ("0.0.0.0", "::"):
        assert main(["serve", str(small_model), "--host", host, "--port", port]) == 1
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1, (out, err)
        assert f"refusing to listen on {host} without an API key" in err and "--no-auth" in err, err
    monkeypatch.setenv("TINYVIT_API_KEY", "")
    assert main(["serve", str(small_model), "--port", port]) == 1
    assert "API key is empty" in capsys.readouterr().err
    check_exposure("0.0.0.0", None, no_auth=True)  # open, as asked
    check_exposure("::", KEY, no_auth=False)
    with pytest.raises(tinyvit.TinyViTError, match="choose one"):
        check_exposure("0.0.0.0", KEY, no_auth=True)
    with pytest.raises(SystemExit):  # a usage error (2)
        main(["serve", str(small_model), "--api-key", KEY, "--no-auth"])


def test_bearer_auth_compares_in_constant_time(monkeypatch):
    """The key is kept as its SHA-256 and compared with hmac.compare_digest, whatever was sent."""
    import hmac

    from tinyvit.serve import BearerAuth, key_digest

    compared = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: compared.append((a, b)) or real(a, b))
    auth = BearerAuth(None, key_digest(KEY))
    assert auth.digest != KEY.encode() and len(auth.digest) == 32
    assert auth.authorized([(b"authorization", f"Bearer {KEY}".encode())])
    for sent in ([], [(b"authorization", b"Bearer")], [(b"authorization", b"Basic " + KEY.encode())],
                 [(b"authorization", f"Bearer {KEY}".encode())] * 2):  # fmt: skip
        assert not auth.authorized(sent), sent
    assert len(compared) == 5 and all(len(a) == len(b) == 32 for a, b in compared)


# ---------------------------------------------------------------------------------------------
# Last: the shared server's worker is killed


def test_a_killed_worker_leaves_no_request_waiting(server, small_model):
    """SIGKILL of the inference worker under 12 concurrent clients: every request that was waiting
    is answered at once (503, or 200 if its batch was done), new ones get 503 (or a refused
    connection once the server is gone), /health says 503; the server exits 1 promptly with one
    line, and leaves no process behind."""
    if not Path("/proc/self/stat").exists():
        pytest.skip("finds the worker through /proc")
    worker = [pid for pid, cmdline in server.members() if "spawn_main" in cmdline]
    assert len(worker) == 1, server.members()
    data = image_bytes(40, 40, seed=5)
    results: list[tuple[float, float, object]] = []  # (sent, answered, status or exception name)
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
                conn.request("POST", "/predict", body=data, headers={"Content-Type": "image/jpeg"})
                response = conn.getresponse()
                response.read()
                outcome = response.status
            except OSError as e:  # refused or reset once the server stops; never timed out
                outcome = "no connection" if isinstance(e, ConnectionError) else type(e).__name__
                time.sleep(0.05)
            results.append((sent, time.monotonic(), outcome))

    pool = ThreadPoolExecutor(max_workers=12)
    try:
        for _ in range(12):
            pool.submit(client)
        deadline = time.monotonic() + 30
        while sum(r[2] == 200 for r in results) < 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        killed = time.monotonic()
        os.kill(worker[0], signal.SIGKILL)
        time.sleep(0.2)
        health = request(server.port, "GET", "/health")[0]
        code = server.proc.wait(15)
        stopped = time.monotonic()
    finally:
        stop.set()
        pool.shutdown()
    assert health == 503 and code == 1 and stopped - killed < 10, (health, code, stopped - killed)
    log = server.log.read_text()
    assert log.count("tinyvit serve: inference worker died (signal 9); stopping") == 1 and "Traceback" not in log, log
    waiting = [r for r in results if r[0] < killed <= r[1]]
    after = [r for r in results if r[0] >= killed]
    assert any(r[2] == 503 for r in waiting), waiting  # a batch finished just before the kill may give 200
    assert all(r[2] in (200, 503) and r[1] - killed < 3 for r in waiting), waiting
    assert all(r[1] - r[0] < 5 for r in results), max(r[1] - r[0] for r in results)
    assert {r[2] for r in after} <= {503, "no connection"}, after
    assert server.wait_gone() == []
