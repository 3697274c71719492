"""Bad images, bad weights, bad networks: clear errors, nothing lost, nothing half-used."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import struct
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import refdata
import torch
from conftest import FIXTURES, case_state, cli, load_parity, mm_small_pth, small_config
from hubserver import HubServer
from PIL import Image
from test_hub import run_py, weights_bytes

import tinyvit
from tinyvit.images.decode import load_image
from tinyvit.images.spec import PreprocessSpec

META, EXPECTED = load_parity()
SPEC = PreprocessSpec(40, 32, "bicubic", (127.5,) * 3, (127.5,) * 3)


# ---------------------------------------------------------------------------------------------
# Images


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


def make_corpus(folder: Path) -> dict[str, str | None]:
    """Write the test images; returns file name → the error expected (None: it must work)."""
    rgb = Image.fromarray(refdata.make_image(64, 48, seed=9))
    jpeg, png = _encode(rgb, "JPEG", quality=90), _encode(rgb, "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    palette.info["transparency"] = 0
    gray16 = Image.fromarray((np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21 % 65536).astype(np.uint16))
    frames = [Image.new("RGB", (30, 20), c) for c in ((200, 10, 10), (10, 10, 200))]
    corpus: dict[str, tuple[bytes, str | None]] = {
        "empty.jpg": (b"", "empty file"),
        "truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated or corrupt"),
        "truncated.png": (png[: len(png) // 3], "truncated or corrupt"),
        "notes.jpg": (b"shopping list: milk, eggs\n" * 20, "not an image"),
        "error_page.png": (b"<!DOCTYPE html><html><body><h1>502 Bad Gateway</h1></body></html>", "not an image"),
        "bomb.png": (refdata.png_claiming(60000, 60000), "too large"),
        "garbage.bmp": (b"BM" + os.urandom(200), "image"),
        "header_only.gif": (b"GIF89a\x10\x00\x10\x00", "image"),
        "one_pixel.png": (_encode(Image.new("RGB", (1, 1), (9, 99, 199)), "PNG"), None),
        "gray16.png": (_encode(gray16, "PNG"), None),
        "cmyk.jpg": (_encode(rgb.convert("CMYK"), "JPEG"), None),
        "palette_transparent.png": (_encode(palette, "PNG"), None),
        "palette.gif": (_encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "GIF"), None),
        "la.png": (_encode(Image.merge("LA", [rgb.convert("L"), rgb.convert("L")]), "PNG"), None),
        "rgba.png": (_encode(rgb.convert("RGBA"), "PNG"), None),
        "gray.jpg": (_encode(rgb.convert("L"), "JPEG"), None),
        "bilevel.png": (_encode(rgb.convert("1"), "PNG"), None),
        "animated.gif": (_encode(frames[0], "GIF", save_all=True, append_images=frames[1:]), None),
        "rotated.jpg": (_encode(rgb, "JPEG", exif=exif), None),
        "photo.webp": (_encode(rgb, "WEBP", lossless=True), None),
        "actually_jpeg.png": (jpeg, None),
        "photo.tiff": (_encode(rgb, "TIFF"), None),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, (data, _) in corpus.items():
        (folder / name).write_bytes(data)
    return {name: expected for name, (_, expected) in corpus.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_corpus(folder)


def test_every_corpus_image_works_or_fails_clearly(corpus):
    folder, expected = corpus
    assert len(expected) >= 20
    for name, error in expected.items():
        path = folder / name
        if error is None:
            x = tinyvit.preprocess(path, SPEC)
            assert x.shape == (3, 32, 32) and torch.isfinite(x).all(), name
        else:
            with pytest.raises(tinyvit.ImageError, match=error) as err:
                tinyvit.preprocess(path, SPEC)
            assert name in str(err.value)


def test_corpus_images_decode_to_the_right_pixels(corpus):
    folder, _ = corpus
    rgb = refdata.make_image(64, 48, seed=9)
    rotated = np.asarray(load_image(folder / "rotated.jpg"))
    assert rotated.shape == (64, 48, 3)  # EXIF orientation 6: displayed rotated by 90°
    stored = np.asarray(Image.open(folder / "rotated.jpg").convert("RGB"))  # as stored, orientation ignored
    assert np.array_equal(rotated, np.rot90(stored, -1))
    assert np.array_equal(np.asarray(load_image(folder / "photo.webp")), rgb)  # lossless
    assert np.array_equal(np.asarray(load_image(folder / "one_pixel.png")), [[[9, 99, 199]]])
    first = np.asarray(load_image(folder / "animated.gif"))
    assert first[..., 0].mean() > 150 and first[..., 2].mean() < 60


def test_paths_that_are_not_files(tmp_path, monkeypatch):
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(tinyvit.ImageError, match="folder.jpg.*is a directory"):
        tinyvit.preprocess(tmp_path / "folder.jpg", SPEC)
    with pytest.raises(tinyvit.ImageError, match="missing.jpg.*no such file"):
        tinyvit.preprocess(tmp_path / "missing.jpg", SPEC)
    locked = tmp_path / "locked.png"
    locked.write_bytes(_encode(Image.new("RGB", (4, 4)), "PNG"))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(locked), "read_bytes", denied)
    with pytest.raises(tinyvit.ImageError, match="locked.png.*cannot read"):
        tinyvit.preprocess(locked, SPEC)


@pytest.fixture(scope="module")
def small_weights(tmp_path_factory) -> Path:
    from tinyvit.weights.convert import convert

    folder = tmp_path_factory.mktemp("small")
    from safetensors.torch import save_file

    save_file(case_state(META["cases"]["timm_small"]), str(folder / "timm.safetensors"))
    return convert(folder / "timm.safetensors", folder / "small.safetensors", arch=small_config(META), preprocess=SPEC)


def test_predict_over_a_folder_keeps_the_good_ones(corpus, small_weights):
    folder, expected = corpus
    (folder / "subdir.jpg").mkdir(exist_ok=True)  # a directory named like an image is not an image file
    model = tinyvit.load(small_weights)
    results = tinyvit.predict(folder, model, errors="return", batch_size=4)
    by_name = {Path(r.input).name: r for r in results}
    assert set(by_name) == set(expected)
    for name, error in expected.items():
        r = by_name[name]
        assert r.ok == (error is None), (name, r.error)
        if error is not None:
            assert name in r.error_line() and name not in r.error and r.label == -1  # the path once
        else:
            assert 0 <= r.label < 10 and r.name == f"class {r.label}"
    with pytest.raises(tinyvit.ImageError):
        tinyvit.predict(folder, model)  # errors="raise" stops at the first bad one


def test_cli_summarises_a_folder_with_bad_images(corpus, small_weights):
    folder, expected = corpus
    out = subprocess.run(
        [sys.executable, "-m", "tinyvit", "predict", str(folder), "--model", str(small_weights)],
        capture_output=True,
        text=True,
    )
    good = sum(e is None for e in expected.values())
    assert out.returncode == 1
    assert good > 1 and f"{good} images classified, {len(expected) - good} failed" in out.stderr
    assert "Traceback" not in out.stderr
    assert out.stdout.count("class ") >= good  # every good image got its top-k


def test_predict_from_threads_matches_serial(corpus, small_weights):
    folder, expected = corpus
    paths = [folder / n for n, e in expected.items() if e is None] * 3
    model = tinyvit.load(small_weights)
    serial = [tinyvit.predict(p, model) for p in paths]
    results: dict[int, list] = {}

    def worker(k: int) -> None:
        results[k] = tinyvit.predict(paths[k::4], model, batch_size=2)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(4):
        for got, want in zip(results[k], serial[k::4], strict=True):
            assert got.label == want.label
            torch.testing.assert_close(got.scores, want.scores, atol=1e-6, rtol=0)


def test_threads_share_one_cached_model(small_weights):
    from tinyvit.run.runtime import cached_model

    got = []
    threads = [threading.Thread(target=lambda: got.append(cached_model(str(small_weights)))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(m) for m in got}) == 1


# ---------------------------------------------------------------------------------------------
# Weights


def _safetensors_header(header: dict, payload: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + payload


@pytest.mark.parametrize(
    "name, make, reason",
    [
        ("truncated", lambda good: good[: len(good) // 2], "safetensors"),
        ("huge_header_length", lambda good: struct.pack("<Q", 1 << 60) + good[8:], "safetensors"),
        (
            "huge_tensor",
            lambda good: _safetensors_header(
                {"w": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 40_000_000_000]}}, b"\0" * 16
            ),
            "safetensors",
        ),
        ("not_safetensors", lambda good: b"PK\x03\x04 a zip file, not weights", "safetensors"),
        ("empty", lambda good: b"", "safetensors"),
    ],
)
def test_broken_weight_files(name, make, reason, small_weights, tmp_path):
    bad = tmp_path / f"{name}.safetensors"
    bad.write_bytes(make(small_weights.read_bytes()))
    with pytest.raises(tinyvit.WeightsError, match=reason) as err:
        tinyvit.load(bad)
    assert name in str(err.value)


def test_config_that_does_not_match_the_tensors(tmp_path):
    from safetensors.torch import save_file

    wrong = tinyvit.ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=3, num_heads=4, num_classes=10)
    record = tinyvit.Weights(config=wrong, preprocess=None, categories=None, source=tinyvit.Source("file", "timm"))
    state = case_state(META["cases"]["timm_small"])
    for key, value in [("tinyvit.weights", record.to_json()), ("tinyvit.config", json.dumps(wrong.to_dict()))]:
        save_file(state, str(tmp_path / "w.safetensors"), metadata={key: value})  # this version's header, and 0.1's
        with pytest.raises(tinyvit.WeightsError, match="missing keys: blocks.2"):
            tinyvit.load(tmp_path / "w.safetensors")
    for key in ("tinyvit.weights", "tinyvit.config"):
        save_file(state, str(tmp_path / "g.safetensors"), metadata={key: "{not json"})
        with pytest.raises(tinyvit.WeightsError, match="invalid tinyvit metadata in the header"):
            tinyvit.load(tmp_path / "g.safetensors")


def test_failed_loads_leave_no_model_behind(tmp_path):
    from tinyvit.run.runtime import _MODELS

    before = dict(_MODELS)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nonsense")
    with pytest.raises(tinyvit.WeightsError):
        tinyvit.predict(refdata.make_image(8, 8), str(bad))
    assert _MODELS == before


def test_bad_converted_cache_file_is_removed_and_fetched_again(tmp_path):
    """A converted URL download that went bad on disk is deleted, and the next load re-fetches it."""
    content = mm_small_pth(tmp_path)
    sha = hashlib.sha256(content).hexdigest()
    code = f"""
        import json, tinyvit
        from conftest import small_config, load_parity
        from tinyvit.weights._builder import load_model
        from tinyvit.weights.specs import ZooSpec
        spec = tinyvit.PreprocessSpec(40, 32, "bilinear", (127.5,) * 3, (127.5,) * 3)
        source = tinyvit.Source(kind="url", layout="mmpretrain", url=URL, sha256_prefix={sha[:8]!r})
        record = tinyvit.Weights(config=small_config(load_parity()[0]), preprocess=spec, categories=None,
                                 source=source, name="tiny", tag="mmpretrain")
        try:
            m = load_model(ZooSpec(record))
            print(json.dumps({{"path": m.weights.source.path}}))
        except tinyvit.WeightsError as e:
            print(json.dumps({{"error": str(e)}}))
    """
    with HubServer() as hub:
        hub.files["mm.pth"] = content
        code = code.replace("URL", repr(f"{hub.url}/files/mm.pth"))
        first = run_py(code, tmp_path / "home", hub.url)
        cached = Path(first["path"])
        cached.write_bytes(cached.read_bytes()[:1000])  # the disk filled up, say
        broken = run_py(code, tmp_path / "home", hub.url)
        assert "cached file was removed" in broken["error"] and not cached.exists()
        n = len(hub.requests)
        again = run_py(code, tmp_path / "home", hub.url)
        assert again["path"] == first["path"] and len(hub.requests) == n + 1  # downloaded afresh


def test_tampered_hub_file_is_rejected_then_fetched_again(tmp_path):
    metadata = {"format": "pt", "tinyvit.config": json.dumps(small_config(META).to_dict())}
    code = """
        import json, os, tinyvit
        try:
            m = tinyvit.load("hf-hub:acme/tiny-vit")
            print(json.dumps({"path": os.path.realpath(m.weights.source.path)}))
        except tinyvit.WeightsError as e:
            print(json.dumps({"error": str(e)}))
    """
    with HubServer() as hub:
        hub.add_file("acme/tiny-vit", "model.safetensors", weights_bytes("timm_small", metadata))
        first = run_py(code, tmp_path, hub.url)
        blob = Path(first["path"])
        data = bytearray(blob.read_bytes())
        data[-3] ^= 0x10
        blob.write_bytes(bytes(data))
        tampered = run_py(code, tmp_path, hub.url)
        assert "SHA-256 mismatch" in tampered["error"] and not blob.exists()
        assert "path" in run_py(code, tmp_path, hub.url)


# ---------------------------------------------------------------------------------------------
# Network


FETCH = """
    import json, tinyvit
    from tinyvit.weights._hub import fetch_hf_hub
    try:
        print(json.dumps({{"path": str(fetch_hf_hub({repo!r}, "model.safetensors"))}}))
    except tinyvit.WeightsError as e:
        print(json.dumps({{"error": str(e)}}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_blobs(home: Path) -> bool:
    return not [p for p in home.rglob("blobs/*") if p.is_file() and not p.name.endswith(".incomplete")]


def test_server_down(tmp_path):
    """A Hub that is not there at all is known at once: no retries (huggingface_hub's would take
    ~25 s and print a line each), one error naming why."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    out = run_py(FETCH.format(repo="acme/vit"), tmp_path, endpoint)
    assert "could not be reached (Connection refused)" in out["error"] and "not in the cache" in out["error"]
    # the command line: one line, as the README says (the default zoo weights, then a Hub repository)
    env = {"HF_HOME": str(tmp_path), "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0"}
    for model in ("vit-base-p32-384", "hf-hub:acme/vit"):
        ran = cli("predict", FIXTURES / "photos" / "chelsea.jpg", "--model", model, env=env)
        assert ran.returncode == 1 and len(ran.stderr.splitlines()) == 1, ran.stderr
        assert ran.stderr.startswith("tinyvit: error: ") and "could not be reached" in ran.stderr


def test_404_and_500(tmp_path):
    with HubServer() as hub:
        hub.add_file("acme/vit", "other.bin", b"x")
        missing = run_py(FETCH.format(repo="acme/vit"), tmp_path, hub.url)
        assert "file not found in the repository" in missing["error"]
        hub.add_file("acme/broken", "model.safetensors", b"x")
        hub.faults["/acme/broken/"] = "500"
        # after huggingface_hub's five retries (their waits, 1 s to 8 s, skipped here)
        no_waits = "import time; time.sleep = lambda seconds: None\n"
        failing = run_py(no_waits + textwrap.dedent(FETCH.format(repo="acme/broken")), tmp_path, hub.url)
        assert "could not be reached" in failing["error"]
        assert sum(path.startswith("/acme/broken/") for _, path in hub.requests) > 5  # retried
        assert _no_blobs(tmp_path)


def test_server_slower_than_the_timeout(tmp_path):
    with HubServer(slow_seconds=4) as hub:
        hub.add_file("acme/slow", "model.safetensors", weights_bytes("timm_small"))
        hub.faults["/acme/slow/"] = "slow"
        env_code = "import os; os.environ['HF_HUB_ETAG_TIMEOUT'] = '1'; os.environ['HF_HUB_DOWNLOAD_TIMEOUT'] = '1'\n"
        env_code += "import time; time.sleep = lambda seconds: None\n"  # huggingface_hub's waits between retries
        out = run_py(env_code + textwrap.dedent(FETCH.format(repo="acme/slow")), tmp_path, hub.url)
        assert "error" in out and _no_blobs(tmp_path)

        url_code = """
            import json, tinyvit, tinyvit.weights._hub
            tinyvit.weights._hub.URL_TIMEOUT = 1
            from pathlib import Path
            try:
                tinyvit.weights._hub.download_url(@URL@, Path(tinyvit.weights._hub.cache_dir()) / "dl", "test")
                print(json.dumps({"ok": True}))
            except tinyvit.WeightsError as e:
                print(json.dumps({"error": str(e)}))
        """.replace("@URL@", repr(f"{hub.url}/files/slow.pth"))
        hub.files["slow.pth"] = b"x" * 1000
        hub.faults["/files/slow"] = "slow"
        out = run_py(url_code, tmp_path, hub.url)
        assert "download failed" in out["error"] and "timed out" in out["error"]
        assert not list((tmp_path / "tinyvit" / "dl").iterdir())


def run_at_once(code: str, home: Path, endpoint: str, n: int = 2) -> list[dict]:
    """Start ``n`` fresh processes running ``code`` together; their JSON results."""
    results: list[dict] = []
    threads = [threading.Thread(target=lambda: results.append(run_py(code, home, endpoint))) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_processes_loading_the_same_model_at_once(tmp_path):
    content = weights_bytes("timm_small", {"format": "pt", "tinyvit.config": json.dumps(small_config(META).to_dict())})
    code = """
        import json, os, tinyvit
        m = tinyvit.load("hf-hub:acme/tiny-vit")
        print(json.dumps({"path": os.path.realpath(m.weights.source.path)}))
    """
    with HubServer() as hub:
        hub.add_file("acme/tiny-vit", "model.safetensors", content)
        results = run_at_once(code, tmp_path, hub.url)
    assert len(results) == 2 and results[0]["path"] == results[1]["path"]
    blobs = [p for p in tmp_path.rglob("blobs/*") if p.is_file()]
    assert len(blobs) == 1 and blobs[0].read_bytes() == content


def test_two_processes_fetching_the_same_url_source_at_once(tmp_path):
    content = mm_small_pth(tmp_path)
    sha = hashlib.sha256(content).hexdigest()
    from test_hub import URL_FETCH

    with HubServer() as hub:
        hub.files["mm.pth"] = content
        code = URL_FETCH.format(url=f"{hub.url}/files/mm.pth", prefix=sha[:8])
        home = tmp_path / "home"
        results = run_at_once(code, home, hub.url)
    assert len(results) == 2 and results[0]["path"] == results[1]["path"]
    files = [p for p in (home / "tinyvit").rglob("*") if p.is_file() and "verified" not in p.parts]
    assert [p.name for p in files] == [Path(results[0]["path"]).name]  # one file, no leftovers
