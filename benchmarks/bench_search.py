"""Photo search (issue #27): indexing 12 MP JPEGs (against rclip), re-indexing an unchanged folder,
query latency exact and ANN, ANN recall@10.

    .venv/bin/python benchmarks/bench_search.py                                  # all of it
    .venv/bin/python benchmarks/bench_search.py --rclip-python /tmp/rclipenv/bin/python
    .venv/bin/python benchmarks/bench_search.py --only query --sizes 10000,100000

* **index**: a folder of ``--photos`` 12-megapixel JPEGs (4000x3000, made from scikit-image's
  ``skimage.data`` photos, else tests/fixtures/photos) indexed by ``tinyvit.Index.update`` (exact
  decoding, and ``fast=True``) and by rclip (``rclip.main.init_rclip``, which indexes the folder),
  each in a fresh process, timed from the indexing call (model loading included, the interpreter's
  start not). Same model size: rclip's ViT-B/32 at 256 px (its ``ViT-B-32-256-datacomp_s34b_b86k``);
  rclip's Hub models cannot be fetched here, so it is served an ONNX export (input renamed ``input``,
  as rclip feeds it) of the same random tinyvit ViT-B/32-256 tinyvit runs. Both at batch 8 (rclip's
  default), one decoding thread per core. Contenders alternate within each round (order reversed
  every other round); ratios are medians of per-round ratios.
* **reindex**: ``tinyvit index DIR -o INDEX`` on an unchanged folder of 10,000 small files (the whole
  command in a fresh process: its interpreter start included).
* **query**: synthetic libraries of ``--sizes`` unit vectors (512-d float16, as an index stores them
  with ``--vectors float16``), photo-library-like (topics → scenes → shots: see ``library``); a query
  is a new shot of an existing scene. Exact: ``Index.search_vector`` on the index on disk (memory
  map), p50 / p95 over ``--queries`` queries. ANN (faiss-cpu, the ``search`` extra when present):
  recall@10 against exact and p50 / p95, exact and ANN alternating query by query.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tinyvit
from tinyvit.run.search import Index
from tinyvit.run.search.store import Store

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine_line() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "?")
    flags = set(next((ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []))
    have = " ".join(f for f in FLAGS if f in flags) or "none of " + "/".join(FLAGS)
    return (f"{time.strftime('%Y-%m-%d')} | {cpu} ({have}) | {len(os.sched_getaffinity(0))} cores, torch threads "
            f"{torch.get_num_threads()} | Python {platform.python_version()} | torch {torch.__version__}, "
            f"numpy {np.__version__}, tinyvit {tinyvit.__version__}")  # fmt: skip


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


# ---------------------------------------------------------------------------------------------
# Indexing 12 MP JPEGs: tinyvit against rclip


def source_photos() -> list[np.ndarray]:
    try:
        import skimage.data as data

        names = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry", "retina")
        return [getattr(data, n)() for n in names]
    except ImportError:
        return [np.asarray(Image.open(p).convert("RGB")) for p in sorted((ROOT / "tests/fixtures/photos").glob("*"))]


def make_12mp(folder: Path, n: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    sources = source_photos()
    paths = []
    for i in range(n):
        img = Image.fromarray(sources[i % len(sources)])
        if i // len(sources) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = img.rotate(7 * (i // len(sources)), resample=Image.Resampling.BILINEAR)
        path = folder / f"IMG_{i:04d}.jpg"
        img.resize((4000, 3000), Image.Resampling.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def vit_b32_256(folder: Path) -> Path:
    """A random ViT-B/32 at 256 px (rclip's model size), CLIP's preprocessing, as a tinyvit file."""
    from safetensors.torch import save_file

    config = tinyvit.ViTConfig(image_size=256, patch_size=32, embed_dim=768, depth=12, num_heads=12, num_classes=0)
    torch.manual_seed(0)
    save_file(tinyvit.VisionTransformer(config).init_weights().state_dict(), str(folder / "b32.timm.safetensors"))
    spec = tinyvit.PreprocessSpec(resize=256, crop=256, interpolation="bicubic",
                                  mean=(0.48145466 * 255, 0.4578275 * 255, 0.40821073 * 255),
                                  std=(0.26862954 * 255, 0.26130258 * 255, 0.27577711 * 255))  # fmt: skip
    return tinyvit.convert(folder / "b32.timm.safetensors", folder / "b32.safetensors", arch=config, preprocess=spec)


def rclip_datadir(folder: Path, model_file: Path) -> Path:
    """rclip's data folder with its model files in place: the same weights as ONNX, input ``input``."""
    import onnx

    from tinyvit.deploy.export import export_onnx

    sub = folder / "ViT-B-32-256-datacomp_s34b_b86k"
    sub.mkdir(parents=True, exist_ok=True)
    onnx_path = export_onnx(tinyvit.load(model_file), sub / "visual.tinyvit.onnx")
    m = onnx.load(str(onnx_path))
    old = m.graph.input[0].name
    m.graph.input[0].name = "input"
    for node in m.graph.node:
        node.input[:] = ["input" if i == old else i for i in node.input]
    onnx.save(m, str(sub / "visual.onnx"))
    (sub / "textual.onnx").write_bytes(b"")  # present, so rclip fetches nothing; indexing never loads it
    (folder / "tokenizer").mkdir(exist_ok=True)
    shutil.copy(ROOT / "src/tinyvit/text/bpe_simple_vocab_16e6.txt.gz", folder / "tokenizer")
    return folder


TINYVIT_CHILD = """
import sys, time, torch
from tinyvit.run.search import Index
torch.set_num_threads({threads})
t = time.perf_counter()
s = Index.open(sys.argv[1], sys.argv[2], create=True, fast={fast}).update([sys.argv[3]], batch_size=8)
print(time.perf_counter() - t, s.added)
"""
RCLIP_CHILD = """
import sys, time
from rclip.main import init_rclip
t = time.perf_counter()
init_rclip(sys.argv[1], 8, None, False)
print(time.perf_counter() - t)
"""


def time_child(cmd: list[str], env: dict | None = None) -> float:
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {out.stderr[-2000:]}")
    return float(out.stdout.split()[0])


def bench_index(args: argparse.Namespace, work: Path) -> dict:
    photos = make_12mp(work / "photos", args.photos)
    model_file = vit_b32_256(work)
    threads = torch.get_num_threads()
    contenders = {
        "tinyvit": lambda r: time_child([sys.executable, "-c", TINYVIT_CHILD.format(threads=threads, fast=False),
                                         str(work / f"exact{r}.tvi"), str(model_file), str(photos[0].parent)]),
        "tinyvit fast": lambda r: time_child([sys.executable, "-c", TINYVIT_CHILD.format(threads=threads, fast=True),
                                              str(work / f"fast{r}.tvi"), str(model_file), str(photos[0].parent)]),
    }  # fmt: skip
    if args.rclip_python:
        datadir = rclip_datadir(work / "rclip", model_file)

        def rclip(r: int) -> float:
            (datadir / "db.sqlite3").unlink(missing_ok=True)
            return time_child([args.rclip_python, "-c", RCLIP_CHILD, str(photos[0].parent)],
                              {"RCLIP_DATADIR": str(datadir)})  # fmt: skip

        contenders["rclip"] = rclip
    seconds: dict[str, list[float]] = {name: [] for name in contenders}
    for r in range(args.rounds):
        for name in list(contenders)[:: 1 if r % 2 == 0 else -1]:
            seconds[name].append(contenders[name](r))
            print(f"  round {r + 1} {name}: {len(photos) / seconds[name][-1]:.2f} images/s", file=sys.stderr)
    rates = {name: [len(photos) / s for s in v] for name, v in seconds.items()}
    out = {"photos": len(photos), "images_per_s": {k: statistics.median(v) for k, v in rates.items()}}
    if "rclip" in rates:
        out["ratio_vs_rclip"] = {k: statistics.median([a / b for a, b in zip(v, rates["rclip"], strict=True)])
                                 for k, v in rates.items() if k != "rclip"}  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------------
# Re-indexing an unchanged folder


def bench_reindex(args: argparse.Namespace, work: Path) -> dict:
    folder = work / "many"
    rng = np.random.default_rng(0)
    for i in range(args.files):
        sub = folder / f"{i // 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(sub / f"{i:05d}.png")
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import small_vit_file

    (work / "small").mkdir(exist_ok=True)
    model_file = small_vit_file(work / "small")
    out = work / "many.tvi"
    t = time.perf_counter()
    built = Index.open(out, model_file, create=True).update([folder], batch_size=64)
    build = time.perf_counter() - t
    assert built.added == args.files, built
    walls, inproc = [], []
    for _ in range(args.rounds):
        t = time.perf_counter()
        ran = subprocess.run([sys.executable, "-m", "tinyvit", "index", str(folder), "-o", str(out), "--json"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
        walls.append(time.perf_counter() - t)
        assert json.loads(ran.stdout)["unchanged"] == args.files, ran.stdout + ran.stderr
        t = time.perf_counter()
        Index.open(out).update([folder])
        inproc.append(time.perf_counter() - t)
    return {"files": args.files, "first_index_s": build, "reindex_cli_s": statistics.median(walls),
            "reindex_update_s": statistics.median(inproc)}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Query latency and ANN recall on synthetic libraries


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def library(n: int, queries: int, d: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A photo library's structure: 1,000 topics; scenes (one per 10 photos) around them (cosine
    ~0.75 to their topic); shots around their scene (cosine ~0.85), as bursts and series are. Queries
    are new shots of existing scenes. (Isotropic noise alone, with no structure, would make every
    neighbour as near as any other: nothing a photo library looks like.)"""
    rng = np.random.default_rng(seed)
    topics = unit(rng.standard_normal((1000, d), dtype=np.float32))
    scenes = unit(topics[rng.integers(0, 1000, n // 10)] + 0.9 * unit(rng.standard_normal((n // 10, d), np.float32)))
    out = np.empty((n, d), np.float16)
    which = rng.integers(0, len(scenes), n)
    for a in range(0, n, 100_000):
        m = min(100_000, n - a)
        out[a : a + m] = unit(scenes[which[a : a + m]] + 0.6 * unit(rng.standard_normal((m, d), np.float32)))
    q = unit(scenes[rng.integers(0, len(scenes), queries)] + 0.6 * unit(rng.standard_normal((queries, d), np.float32)))
    return out, q.astype(np.float32)


def blobs(n: int, queries: int, d: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The hard case: 1,000 isotropic Gaussian clusters (cosine ~0.7 to their centre) and nothing
    finer, so that a query's ten nearest are barely nearer than the next thousand."""
    rng = np.random.default_rng(seed)
    centers = unit(rng.standard_normal((1000, d), dtype=np.float32))
    out = np.empty((n, d), np.float16)
    for a in range(0, n, 100_000):
        m = min(100_000, n - a)
        out[a : a + m] = unit(centers[rng.integers(0, 1000, m)] + unit(rng.standard_normal((m, d), np.float32)))
    q = unit(centers[rng.integers(0, 1000, queries)] + unit(rng.standard_normal((queries, d), np.float32)))
    return out, q.astype(np.float32)


def store_of(path: Path, vectors: np.ndarray, dtype: str) -> Index:
    """An index on disk holding ``vectors`` (as ``tinyvit index --ray`` would write them)."""
    identity = {"load": None, "name": "synthetic", "sha256": "synthetic", "preprocess": {}, "fast": False,
                "dim": vectors.shape[1]}  # fmt: skip
    store = Store.create(path, identity, vectors.shape[1], dtype)
    for a in range(0, len(vectors), 100_000):
        chunk = vectors[a : a + 100_000]
        store.commit_rows(((f"/photos/{a + i:07d}.jpg", 1, 1, "") for i in range(len(chunk))), chunk)
    store.close()
    return Index.open(path)


def timed(fn, *args, **kw) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t, out


def bench_query(args: argparse.Namespace, work: Path) -> list[dict]:
    from tinyvit.run.search import ann

    rows = []
    for n in args.sizes:
        vectors, queries = (blobs if args.data == "blobs" else library)(n, args.queries)
        for dtype in args.dtypes:
            index = store_of(work / f"q{n}-{dtype}.tvi", vectors, dtype)
            index.search_vector(queries[0], exact=True)  # the paths read and the file mapped once
            row = {"data": args.data, "n": n, "dtype": dtype}
            exact_s, ann_s, recall = [], [], []
            use_ann = args.ann and ann.available() and n >= args.ann_from
            if use_ann:
                ann.ANN_MIN_ROWS = 0
                row["ann_build_s"], _ = timed(ann.refresh, index._store)
            for q in queries:
                dt, truth = timed(index.search_vector, q, top_k=10, exact=True)
                exact_s.append(dt)
                if use_ann:
                    dt, hits = timed(index.search_vector, q, top_k=10)
                    ann_s.append(dt)
                    recall.append(len({h.path for h in hits} & {h.path for h in truth}) / 10)
            row.update(exact_p50_ms=1e3 * pct(exact_s, 50), exact_p95_ms=1e3 * pct(exact_s, 95))
            if use_ann:
                row.update(ann_p50_ms=1e3 * pct(ann_s, 50), ann_p95_ms=1e3 * pct(ann_s, 95),
                           recall_at_10=float(np.mean(recall)), nprobe=ann.NPROBE)  # fmt: skip
            print(f"  {row}", file=sys.stderr)
            rows.append(row)
            index.close()
            shutil.rmtree(work / f"q{n}-{dtype}.tvi")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("index", "reindex", "query"), action="append")
    parser.add_argument("--photos", type=int, default=16, help="12 MP JPEGs to index (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rclip-python", help="an interpreter with rclip installed (pip install rclip)")
    parser.add_argument("--files", type=int, default=10_000, help="small files to re-index (default %(default)s)")
    parser.add_argument("--sizes", default="10000,100000,1000000", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--dtypes", default="float16", type=lambda s: s.split(","))
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--data", choices=("library", "blobs"), default="library", help="the synthetic vectors")
    parser.add_argument("--no-ann", dest="ann", action="store_false")
    parser.add_argument("--ann-from", type=int, default=100_000, help="sizes from which ANN is measured")
    parser.add_argument("--work", help="a folder for the photos and indexes (default: a temporary one)")
    args = parser.parse_args()
    print(machine_line())
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_search."))
    work.mkdir(parents=True, exist_ok=True)
    parts = {"index": bench_index, "reindex": bench_reindex, "query": bench_query}
    for name in args.only or list(parts):
        print(json.dumps({name: parts[name](args, work)}), flush=True)


if __name__ == "__main__":
    main()
