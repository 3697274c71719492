"""Two source trees of tinyvit, same images, same weights: is one slower? (For refactors.)

    .venv/bin/python benchmarks/bench_ab.py --a /path/to/old/src --b src --rounds 6

Each round runs each tree in a fresh process (alternating A B A B …, so drift hits both
alike); the process loads the weights (timed: ``tinyvit.load`` of a timm Hub folder,
``config.json`` + ``model.safetensors``, as both trees read it), warms up on one batch, then
times ``tinyvit.predict_iter`` over the set (the exact path and the fast path),
``tinyvit.embed_iter`` (exact) and, separately, the model's forward on preprocessed tensors.
Reported: the median time per set and the median of the per-round ratios B/A in throughput (>1:
B is faster). The sets are real photos re-encoded as JPEGs (tests/fixtures/photos):
ImageNet-size (500x375) and 12 MP (4000x3000); the weights are a random ViT-B/32-384 (speed does
not depend on the values). With ``--by-name``, predict and embed get the checkpoint's path, so the
runtime loads it as ``tinyvit predict`` does (on the CPU GEMM path ``run/cpu.py`` chooses).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_pipeline import make_set  # noqa: E402

CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
import torch, tinyvit
assert tinyvit.__file__.startswith({src!r}), tinyvit.__file__
files = {files!r}
import gc; gc.collect()  # a collection pending from the imports would land in whichever load comes first
t = time.perf_counter()
model = tinyvit.load({weights!r})
out = {{"load": time.perf_counter() - t}}
run = {weights!r} if {by_name!r} else model  # by name: the runtime loads it (on the CPU path it chooses)
bs = {batch_size}
list(tinyvit.predict_iter(files[:bs], run, batch_size=bs))  # warm-up
for mode in ("exact", "fast"):
    t = time.perf_counter()
    n = sum(1 for _ in tinyvit.predict_iter(files, run, batch_size=bs, fast=mode == "fast"))
    out[mode] = time.perf_counter() - t
t = time.perf_counter()
n = sum(1 for _ in tinyvit.embed_iter(files, run, batch_size=bs))
out["embed"] = time.perf_counter() - t
x = tinyvit.preprocess(files[:bs], model)
t = time.perf_counter()
with torch.inference_mode():
    for _ in range(len(files) // bs):
        model(x).softmax(-1)
out["forward"] = time.perf_counter() - t
print(json.dumps(out))
"""


def run(src: str, files: list[str], weights: str, batch_size: int, by_name: bool = False) -> dict[str, float]:
    code = textwrap.dedent(CHILD.format(src=os.path.abspath(src), files=files, weights=weights, batch_size=batch_size,
                                        by_name=by_name))  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def timm_folder(folder: Path, model) -> str:
    """A timm Hub snapshot of ``model`` (random weights): what every version of tinyvit reads."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    pre = model.weights.preprocess
    pretrained_cfg = {"input_size": [3, pre.crop, pre.crop], "crop_pct": pre.crop / pre.resize,
                      "interpolation": pre.interpolation, "mean": [m / 255 for m in pre.mean],
                      "std": [s / 255 for s in pre.std]}  # fmt: skip
    config = {"architecture": "vit_base_patch32_384", "num_classes": 1000, "pretrained_cfg": pretrained_cfg}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--a", required=True, help="the baseline's src folder (holding tinyvit/)")
    p.add_argument("--b", default=str(ROOT / "src"), help="the candidate's src folder (default: this tree)")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--by-name", action="store_true", help="predict and embed get the checkpoint's path, not the "
                   "loaded model: the runtime loads it, on the CPU GEMM path it chooses (forward: the loaded "
                   "model); TINYVIT_CPU_GEMM=default forces torch's own kernels")  # fmt: skip
    args = p.parse_args()

    sys.path.insert(0, args.b)
    import torch

    import tinyvit

    with tempfile.TemporaryDirectory() as tmp:
        weights = timm_folder(Path(tmp) / "b32", tinyvit.get_model("vit-base-p32-384"))
        sets = {
            "ImageNet-size JPEGs (500x375)": make_set(Path(tmp) / "small", args.images, (500, 375)),
            "12 MP JPEGs (4000x3000)": make_set(Path(tmp) / "big", args.images, (4000, 3000)),
        }
        print(f"{cpu_name()} | {os.cpu_count()} cores | Python {platform.python_version()} | torch {torch.__version__}")
        print(f"A {args.a} | B {args.b} | {args.rounds} rounds, {args.images} images, batch {args.batch_size}")
        print("| set | path | A s | B s | B/A throughput (median of rounds) |")
        print("|---|---|---:|---:|---:|")
        for name, files in sets.items():
            times: dict[str, list[dict]] = {"A": [], "B": []}
            for _ in range(args.rounds):
                for label, src in (("A", args.a), ("B", args.b)):
                    times[label].append(run(src, [str(f) for f in files], weights, args.batch_size, args.by_name))
            for mode in ("load", "exact", "fast", "embed", "forward"):
                a = [t[mode] for t in times["A"]]
                b = [t[mode] for t in times["B"]]
                ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
                print(f"| {name} | {mode} | {statistics.median(a):.2f} | {statistics.median(b):.2f} | {ratio:.3f} |")


if __name__ == "__main__":
    main()
