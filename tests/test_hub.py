"""Loading by name from a Hub served on 127.0.0.1 (HF_ENDPOINT), with weights the tests make.

Each load runs in a fresh process, as a user's would: huggingface_hub reads HF_ENDPOINT,
HF_HOME and HF_HUB_OFFLINE when it is imported.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import case_input, case_state, cli, load_parity, mm_small_pth, readme_block, small_config
from hubserver import HubServer
from safetensors.torch import save

import tinyvit
from tinyvit.weights.manifest import resolve

META, EXPECTED = load_parity()
TIMM_REPO = resolve("vit-base-p32-384").source.repo_id
ROOT = Path(__file__).resolve().parents[1]


def run_py(code: str, home: Path, endpoint: str, offline: bool = False, timeout: float = 300) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON object as its last line."""
    env = {
        **os.environ,
        "HF_HOME": str(home),
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "PYTHONPATH": str(Path(__file__).parent),
    }
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def hub():
    with HubServer() as server:
        yield server


def weights_bytes(case_name: str, metadata: dict | None = None) -> bytes:
    return save(case_state(META["cases"][case_name]), metadata=metadata or {"format": "pt"})


LOAD_AND_RUN = """
    import json, torch, tinyvit
    from conftest import case_input, load_parity
    meta, expected = load_parity()
    case = meta["cases"][{case!r}]
    try:
        model = tinyvit.load({spec!r})
    except tinyvit.WeightsError as e:
        print(json.dumps({{"error": str(e)}}))
        raise SystemExit(0)
    with torch.inference_mode():
        logits = model(case_input(case["inputs"][0]))
    err = (logits - expected[{case!r} + "/0/logits"]).abs().max().item()
    w = model.weights
    print(json.dumps({{"err": err, "name": w.name, "tag": w.tag, "training": model.training,
                      "interpolation": w.preprocess.interpolation, "path": w.source.path}}))
"""


def test_load_by_name_from_the_hub_then_offline(hub, tmp_path):
    """Must show: the manifest's default repo for vit-base-p32-384 serving a timm state dict.
    The README's set-up line runs as written (from the repository's root, its photo, the default
    weights from the Hub); then tinyvit.load gives timm's logits offline, from the cache."""
    hub.add_file(TIMM_REPO, "model.safetensors", weights_bytes("timm_b32_384"))
    set_up = readme_block("test-command").strip("`\n").splitlines()[1].split(" && ")[-1].split()
    assert set_up[:2] == [".venv/bin/tinyvit", "predict"] and (ROOT / set_up[2]).is_file()
    env = {"HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0"}
    ran = cli(*set_up[1:], env=env, cwd=ROOT)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith(set_up[2] + "\n") and len(ran.stdout.splitlines()) == 6  # the photo, 5 classes
    assert any(path.endswith("/resolve/main/model.safetensors") for _, path in hub.requests)
    endpoint = hub.url
    hub.stop()
    code = LOAD_AND_RUN.format(case="timm_b32_384", spec="vit-base-p32-384")
    cached = run_py(code, tmp_path, endpoint, offline=True)
    assert cached["err"] <= 1e-5
    assert (cached["name"], cached["tag"], cached["training"]) == ("vit-base-p32-384", "augreg_in21k_ft_in1k", False)
    assert cached["interpolation"] == "bicubic" and cached["path"].startswith(str(tmp_path))


def test_hf_layout_source_is_converted_once(hub, tmp_path):
    """The original-paper weights are an HF-layout Hub file: fetched, converted, cached."""
    source = resolve("vit-base-p32-384:orig_in21k_ft_in1k").source
    hub.add_file(source.repo_id, "model.safetensors", weights_bytes("hf_b32_384"))
    code = LOAD_AND_RUN.format(case="hf_b32_384", spec="vit-base-p32-384:orig_in21k_ft_in1k")
    first = run_py(code, tmp_path, hub.url)
    assert first["err"] <= 1e-4 and first["tag"] == "orig_in21k_ft_in1k"
    assert "/tinyvit/converted/vit-base-p32-384/" in first["path"]
    endpoint = hub.url
    hub.stop()
    assert run_py(code, tmp_path, endpoint, offline=True)["path"] == first["path"]


FETCH = """
    import json, os, tinyvit
    from tinyvit.weights._hub import fetch_hf_hub
    try:
        p = fetch_hf_hub("acme/vit", "model.safetensors", sha256={sha!r})
        print(json.dumps({{"path": str(p), "blob": os.path.realpath(p)}}))
    except tinyvit.WeightsError as e:
        print(json.dumps({{"error": str(e)}}))
"""


def test_pinned_sha256_is_honoured_and_a_tampered_file_rejected(hub, tmp_path):
    content = weights_bytes("timm_small")
    sha = hashlib.sha256(content).hexdigest()
    hub.add_file("acme/vit", "model.safetensors", content)

    wrong = run_py(FETCH.format(sha="0" * 64), tmp_path, hub.url)
    assert "SHA-256 mismatch" in wrong["error"] and "removed from the cache" in wrong["error"]
    assert not list((tmp_path / "hub" / "models--acme--vit" / "blobs").iterdir())

    ok = run_py(FETCH.format(sha=sha), tmp_path, hub.url)
    blob = Path(ok["blob"])
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit in the cached file
    blob.write_bytes(bytes(data))
    tampered = run_py(FETCH.format(sha=sha), tmp_path, hub.url, offline=True)
    assert "SHA-256 mismatch" in tampered["error"]
    assert not blob.exists() and not Path(ok["path"]).exists()  # removed: never used again

    again = run_py(FETCH.format(sha=sha), tmp_path, hub.url)  # fetched afresh
    assert Path(again["blob"]).read_bytes() == content


def test_unpinned_file_is_checked_against_the_hub_etag(hub, tmp_path):
    hub.add_file("acme/vit", "model.safetensors", weights_bytes("timm_small"))
    ok = run_py(FETCH.format(sha=None), tmp_path, hub.url)
    blob = Path(ok["blob"])
    assert blob.name == hashlib.sha256(blob.read_bytes()).hexdigest()
    with open(blob, "r+b") as f:
        f.seek(100)
        f.write(b"\xff")
    tampered = run_py(FETCH.format(sha=None), tmp_path, hub.url, offline=True)
    assert "SHA-256 mismatch" in tampered["error"] and not blob.exists()


URL_FETCH = """
    import json, tinyvit
    from conftest import small_config, load_parity
    from tinyvit.weights._builder import download
    from tinyvit.weights.specs import ZooSpec
    meta, _ = load_parity()
    spec = tinyvit.PreprocessSpec(40, 32, "bilinear", (127.5,) * 3, (127.5,) * 3)
    source = tinyvit.Source(kind="url", layout="mmpretrain", url={url!r}, sha256_prefix={prefix!r})
    record = tinyvit.Weights(config=small_config(meta), preprocess=spec, categories=None, source=source,
                             name="tiny", tag="mmpretrain")
    try:
        path = download(ZooSpec(record))  # fetched, verified, converted into the cache
    except tinyvit.WeightsError as e:
        print(json.dumps({{"error": str(e)}}))
        raise SystemExit(0)
    model = tinyvit.load(path)
    print(json.dumps({{"path": str(path), "interpolation": model.weights.preprocess.interpolation,
                      "source": model.weights.source.to_dict()}}))
"""


def test_url_source_is_downloaded_verified_and_converted(hub, tmp_path):
    content = mm_small_pth(tmp_path)
    sha = hashlib.sha256(content).hexdigest()
    hub.files["mm_small-" + sha[:8] + ".pth"] = content
    url = f"{hub.url}/files/mm_small-{sha[:8]}.pth"
    home = tmp_path / "home"

    bad = run_py(URL_FETCH.format(url=url, prefix="deadbeef"), home, hub.url)
    assert "SHA-256 mismatch" in bad["error"]
    assert not [p for p in home.rglob("*") if p.is_file() and "converted" in str(p)]  # nothing kept

    first = run_py(URL_FETCH.format(url=url, prefix=sha[:8]), home, hub.url)
    assert first["interpolation"] == "bilinear" and first["source"]["sha256"] == sha
    n = len(hub.requests)
    again = run_py(URL_FETCH.format(url=url, prefix=sha[:8]), home, hub.url, offline=True)
    assert again["path"] == first["path"] and len(hub.requests) == n  # read from the cache

    model = __import__("tinyvit").load(first["path"])
    x = case_input(META["cases"]["mm_small"]["inputs"][0])
    torch.testing.assert_close(model(x), EXPECTED["mm_small/0/logits"], atol=1e-5, rtol=0)


def test_dropped_connection_leaves_nothing_a_later_load_would_use(hub, tmp_path):
    content = weights_bytes("timm_small")
    hub.add_file("acme/vit", "model.safetensors", content)
    hub.faults["/acme/vit/resolve/"] = "drop"
    dropped = run_py(FETCH.format(sha=None), tmp_path, hub.url)
    assert "download failed" in dropped["error"]
    blobs = tmp_path / "hub" / "models--acme--vit" / "blobs"
    assert not [p for p in blobs.iterdir() if not p.name.endswith(".incomplete")]
    offline = run_py(FETCH.format(sha=None), tmp_path, hub.url, offline=True)
    assert "offline" in offline["error"]  # the partial file is not offered as a cached copy
    hub.faults.clear()
    ok = run_py(FETCH.format(sha=None), tmp_path, hub.url)
    assert Path(ok["blob"]).read_bytes() == content

    # the same for a URL source
    pth = mm_small_pth(tmp_path)
    sha = hashlib.sha256(pth).hexdigest()
    hub.files["mm.pth"] = pth
    hub.faults["/files/mm.pth"] = "drop"
    home = tmp_path / "home2"
    url_dropped = run_py(URL_FETCH.format(url=f"{hub.url}/files/mm.pth", prefix=sha[:8]), home, hub.url)
    assert "download failed" in url_dropped["error"] or "connection closed" in url_dropped["error"]
    assert not [p for p in home.rglob("*") if p.is_file() and "tinyvit" in str(p)]


def test_offline_without_cache_is_one_clear_error(tmp_path):
    out = run_py(
        LOAD_AND_RUN.format(case="timm_b32_384", spec="vit-base-p32-384"), tmp_path, "http://127.0.0.1:9", True
    )
    assert "offline" in out["error"] and "tinyvit download vit-base-p32-384:augreg_in21k_ft_in1k" in out["error"]
    cli = subprocess.run(
        [sys.executable, "-m", "tinyvit", "download", "vit-base-p32-384:mmpretrain"],
        env={**os.environ, "HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
    )
    assert cli.returncode == 1 and "Traceback" not in cli.stderr
    assert "vit-base-p32-384:mmpretrain" in cli.stderr and "offline" in cli.stderr and "not in the cache" in cli.stderr
    assert "tinyvit download" not in cli.stderr  # no advice to run the command that just failed


def test_hf_hub_spec_loads_a_converted_upload(hub, tmp_path):
    record = tinyvit.Weights(
        config=small_config(META), preprocess=None, categories=None, source=tinyvit.Source(kind="file", layout="timm")
    )
    metadata = {"format": "pt", "tinyvit.weights": record.to_json()}
    hub.add_file("acme/tiny-vit", "model.safetensors", weights_bytes("timm_small", metadata))
    code = """
        import json, torch, tinyvit
        m = tinyvit.load("hf-hub:acme/tiny-vit")
        print(json.dumps({"classes": m(torch.zeros(1, 3, 32, 32)).shape[-1], "loc": m.weights.source.location}))
    """
    out = run_py(code, tmp_path, hub.url)
    assert out["classes"] == 10 and out["loc"].startswith("hf://acme/tiny-vit/model.safetensors@")


def test_cli_download_then_offline_load(hub, tmp_path):
    hub.add_file(TIMM_REPO, "model.safetensors", weights_bytes("timm_b32_384"))
    env = {**os.environ, "HF_HOME": str(tmp_path), "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "tinyvit", "download", "vit-base-p32-384"], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    endpoint = hub.url
    hub.stop()
    code = LOAD_AND_RUN.format(case="timm_b32_384", spec="vit-base-p32-384")
    assert run_py(code, tmp_path, endpoint, offline=True)["err"] <= 1e-5


def test_pin_manifest_fills_revisions_and_checksums(hub, tmp_path):
    manifest = json.loads((ROOT / "weights_manifest.json").read_text())
    url_sources = [s for m in manifest["models"].values() for s in m["sources"] if s["kind"] == "url"]
    for model in manifest["models"].values():
        for s in model["sources"]:
            if s["kind"] == "hub":
                hub.add_file(s["repo_id"], s["filename"], f"weights of {s['repo_id']}".encode())
    for i, s in enumerate(url_sources):
        name = f"ckpt{i}.pth"
        content = f"checkpoint {i}".encode()
        hub.files[name] = content
        s["url"] = f"{hub.url}/files/{name}"
        if i == 0:  # give one source the prefix its served file really has
            s["sha256_prefix"] = hashlib.sha256(content).hexdigest()[:8]
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(manifest))
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "home"), "HF_HUB_DISABLE_TELEMETRY": "1"}
    cmd = [sys.executable, str(ROOT / "scripts" / "pin_manifest.py"), "--manifest", str(path), "--urls"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    pinned = json.loads(path.read_text())
    for before, after in zip(manifest["models"].values(), pinned["models"].values(), strict=True):
        for s0, s in zip(before["sources"], after["sources"], strict=True):
            if s["kind"] == "hub":
                content = hub.repos[s["repo_id"]][s["filename"]]
                assert s["revision"] == hub.commits[s["repo_id"]]
                # a SHA-256 already in the manifest is never overwritten, even when the Hub disagrees
                assert s["sha256"] == (s0["sha256"] or hashlib.sha256(content).hexdigest())
    url_after = [s for m in pinned["models"].values() for s in m["sources"] if s["kind"] == "url"]
    assert url_after[0]["sha256"] == hashlib.sha256(b"checkpoint 0").hexdigest()
    # served files that do not match their prefix, or a known checksum, are left alone
    assert [s["sha256"] for s in url_after[1:]] == [s["sha256"] for s in url_sources[1:]]
    assert out.returncode == 1  # the disagreements are problems
    assert "does not match the prefix" in out.stderr and "differs from the manifest's" in out.stderr
