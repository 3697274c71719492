"""fp32 (and bf16) on this CPU: the GEMM paths the machine has, and how close tinyvit gets.

    .venv/bin/python benchmarks/bench_cpu.py --rounds 5

Other classes of CPU, stood in for on this one by the variables MKL, oneDNN and torch read (the
machine line says which were set; the path is measured apart for each, see ``run/cpu.isa_caps``):

    MKL_ENABLE_INSTRUCTIONS=AVX2 .venv/bin/python benchmarks/bench_cpu.py     # MKL as it runs on AMD
    MKL_ENABLE_INSTRUCTIONS=AVX2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 \
        .venv/bin/python benchmarks/bench_cpu.py --no-cold-start                 # an AVX2-only CPU

The first is the fp32 condition of an AMD processor with AVX-512 (MKL's AVX2 kernels, oneDNN's
AVX-512 ones; its bf16 is not reproduced: this CPU's AVX512-BF16 path is not Zen 4's). In the
second ONNX Runtime is not capped (it has no such variable): it keeps AVX-512, an upper bound.

One process, alternating rounds (A B C A B C …, so drift and neighbours hit every variant alike),
the median per variant and the median of the per-round ratios:

* GEMM figures, 1160 × 768 → 3072 (ViT-B/32-384 at batch 8, the first MLP layer): torch's
  ``F.linear`` (MKL), oneDNN with the weight prepacked (``torch.ops.mkldnn``), numpy's BLAS, and
  bf16 through both torch paths;
* ViT-B/32-384 batch 8 and DINOv2-S/14-518 batch 4 (random weights, ``tinyvit.get_model``):
  tinyvit on the path ``run/cpu.py`` chooses, tinyvit ``exact`` (torch's reference kernels),
  ONNX Runtime on tinyvit's exported graph, timm eager (in a process of ``.refs``, another torch,
  that runs one forward per round when told: alternated too), bf16 for B/32 (``fast`` on a CPU
  that multiplies bf16 natively: bf16 weights on the chosen bf16 path); the fp32 and bf16 GEMM
  ceilings are measured again within the same rounds, and the percentages use those;
* a fresh process loading a B/32 checkpoint and predicting one image, on the chosen path and
  exact (``TINYVIT_CPU_GEMM=default``), alternating: wall time and peak RSS.
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
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import tinyvit
from tinyvit.core.config import count_macs
from tinyvit.models._linear import prepack
from tinyvit.run import cpu

ROOT = Path(__file__).resolve().parents[1]
REFS = ROOT / ".refs" / "bin" / "python"
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
MODELS = {"ViT-B/32-384 b8": ("vit-base-p32-384", 8, "vit_base_patch32_384", {}),
          "DINOv2-S/14-518 b4": ("dinov2-small", 4, "vit_small_patch14_dinov2", {"img_size": 518})}  # fmt: skip
GEMM_SHAPE = (1160, 768, 3072)


def machine_line() -> str:
    flags = set()
    if Path("/proc/cpuinfo").is_file():
        flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")
                 for f in line.split(":", 1)[1].split()}  # fmt: skip
    has = " ".join(f if f in flags else f"no-{f}" for f in FLAGS)
    ort = _version("onnxruntime")
    caps = "".join(f"; capped: {c}" for c in cpu.isa_caps())  # e.g. MKL's kernels as it runs them on AMD
    return (f"{cpu.cpu_model()}, {os.cpu_count()} cores ({has}); torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads; onnxruntime {ort}; {platform.system()}{caps}")  # fmt: skip


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def alternate(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call, per variant, in alternating rounds (after one warm-up call each). Each round
    starts one variant later, so that no variant always runs right after the same other (ONNX
    Runtime's threads keep spinning for a while after a run, which slows whatever comes next)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {k: [] for k in calls}
    keys = list(calls)
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            start = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - start)
    return times


def gemm_figures(rounds: int) -> dict[str, float]:
    """GFLOP/s (median of alternating rounds) of one ViT-shaped GEMM through each path."""
    m, k, n = GEMM_SHAPE
    x, w, b = torch.randn(m, k), torch.randn(n, k) * 0.02, torch.randn(n)
    xb, wb, bb = x.bfloat16(), w.bfloat16(), b.bfloat16()
    xn, wn = x.numpy(), w.T.numpy().copy()
    calls = {"fp32 torch F.linear (MKL)": lambda: F.linear(x, w, b), "fp32 numpy": lambda: xn @ wn,
             "bf16 torch F.linear": lambda: F.linear(xb, wb, bb)}  # fmt: skip
    for label, (xx, ww, bias) in {"fp32": (x, w, b), "bf16": (xb, wb, bb)}.items():
        if cpu.onednn_available(ww.dtype):  # bf16: not below AVX-512
            calls[f"{label} oneDNN prepacked"] = partial(torch.ops.mkldnn._linear_pointwise, xx, prepack(ww), bias,
                                                         "none", [], "")  # fmt: skip
    with torch.inference_mode():
        times = alternate(calls, rounds * 3)
    return {name: 2 * m * k * n / statistics.median(t) / 1e9 for name, t in times.items()}


def ort_runner(model: tinyvit.VisionTransformer, folder: Path) -> Callable[[torch.Tensor], np.ndarray] | None:
    try:
        import onnxruntime as ort

        from tinyvit.export import export_onnx
    except ImportError as e:
        print(f"ONNX Runtime skipped: {e}", file=sys.stderr)
        return None
    path = export_onnx(model, folder / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


TIMM_CHILD = """
import json, sys, time, torch, timm
torch.set_num_threads({threads})
model = timm.create_model({arch!r}, pretrained=False, **{kwargs!r}).eval()
x = torch.randn({batch}, 3, {size}, {size})
with torch.inference_mode():
    model(x)
    print(json.dumps({{"torch": torch.__version__, "timm": timm.__version__}}), flush=True)
    for _ in sys.stdin:  # one forward per line read: the parent alternates it with its own
        t = time.perf_counter(); model(x); print(time.perf_counter() - t, flush=True)
"""


class TimmWorker:
    """timm's forward in ``.refs`` (its own torch) in a process that waits for its turn: one
    forward per :meth:`step`, so it alternates with the in-process variants."""

    def __init__(self, arch: str, kwargs: dict, batch: int, size: int):
        code = TIMM_CHILD.format(threads=torch.get_num_threads(), arch=arch, kwargs=kwargs, batch=batch, size=size)
        self.proc = subprocess.Popen([str(REFS), "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.versions = json.loads(self.proc.stdout.readline() or "null")

    def step(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        float(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def timm_worker(arch: str, kwargs: dict, batch: int, size: int) -> TimmWorker | None:
    if not REFS.exists():
        print("timm skipped: no .refs environment", file=sys.stderr)
        return None
    worker = TimmWorker(arch, kwargs, batch, size)
    if worker.versions is None:
        print("timm skipped: its process failed (see above)", file=sys.stderr)
        return None
    return worker


def ceilings() -> dict[str, Callable[[], object]]:
    """The GEMM ceilings, as variants of the same rounds (so the percentages share their conditions)."""
    m, k, n = GEMM_SHAPE
    x, w = torch.randn(m, k), torch.randn(n, k) * 0.02
    calls = {"_fp32 MKL": lambda: F.linear(x, w), "_bf16 MKL": lambda: F.linear(x.bfloat16(), w.bfloat16())}
    if cpu.onednn_available():
        pw = prepack(w)
        calls["_fp32 oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(x, pw, None, "none", [], "")
    if cpu.onednn_available(torch.bfloat16):
        pwb, xb = prepack(w.bfloat16()), x.bfloat16()
        calls["_bf16 oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(xb, pwb, None, "none", [], "")
    return {k: (lambda c=c: [c() for _ in range(5)]) for k, c in calls.items()}


def random_model(name: str, dtype: str | None = None, fast: bool = False) -> tinyvit.VisionTransformer:
    """``name``'s architecture with the same random weights each time; ``fast``: on the chosen path."""
    torch.manual_seed(0)
    model = tinyvit.get_model(name, dtype=dtype)
    if fast:
        cpu.apply_cpu_path(model)
    return model


def bench_model(label: str, rounds: int, folder: Path) -> dict:
    name, batch, arch, kwargs = MODELS[label]
    exact, fast = random_model(name), random_model(name, fast=True)
    size, gflop = exact.config.image_size, 2 * count_macs(exact.config) / 1e9
    assert torch.equal(fast.state_dict()["blocks.0.mlp.fc1.weight"], exact.state_dict()["blocks.0.mlp.fc1.weight"])
    x = torch.randn(batch, 3, size, size)
    reference = random_model(name).double()
    with torch.inference_mode():
        want = reference(x.double())
        rel = ((fast(x).double() - want).abs().max() / want.abs().max()).item()
    del reference
    calls = {"tinyvit (chosen path)": lambda: fast(x), "tinyvit exact": lambda: exact(x)}
    if (run_ort := ort_runner(exact, folder)) is not None:
        calls["ONNX Runtime (tinyvit's graph)"] = lambda: run_ort(x)
    if label.startswith("ViT-B/32") and cpu.onednn_available(torch.bfloat16):  # else bf16 is emulated: slow
        fast16, exact16, x16 = random_model(name, "bf16", fast=True), random_model(name, "bf16"), x.bfloat16()
        calls |= {"tinyvit bf16 (fast)": lambda: fast16(x16), "tinyvit bf16 exact": lambda: exact16(x16)}
    if (timm := timm_worker(arch, kwargs, batch, size)) is not None:
        calls[f"timm eager (torch {timm.versions['torch']}, own process)"] = timm.step
    calls |= ceilings()
    with torch.inference_mode():
        times = alternate(calls, rounds)
    if timm is not None:
        timm.close()
    m, k, n = GEMM_SHAPE
    gemm = {key[1:]: 5 * 2 * m * k * n / statistics.median(times.pop(key)) / 1e9 for key in list(times)
            if key.startswith("_")}  # fmt: skip
    base, rows = times["tinyvit exact"], {}
    for key, t in times.items():
        ratio = statistics.median(b / a for a, b in zip(t, base, strict=True))  # > 1: faster than exact
        rows[key] = {"img_s": batch / statistics.median(t), "vs_exact": ratio}
    return {"gflop_per_image": gflop, "rel_err_vs_float64": rel, "rows": rows, "gemm": gemm}


# VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark into ru_maxrss across exec
COLD_CHILD = """
import time
t = time.perf_counter()
import tinyvit
r = tinyvit.predict({image!r}, {weights!r})
seconds = time.perf_counter() - t
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(seconds, int(hwm.split()[1]) / 1024)
"""


def cold_start(folder: Path, rounds: int) -> dict[str, dict[str, float]]:
    """A fresh process: import, load a B/32 checkpoint, predict one image; chosen path vs exact."""
    from PIL import Image

    weights = tinyvit.get_model("vit-base-p32-384")
    from bench_ab import timm_folder

    ckpt = timm_folder(folder / "b32", weights)
    image = folder / "photo.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (375, 500, 3), dtype=np.uint8)).save(image)
    code = textwrap.dedent(COLD_CHILD.format(image=str(image), weights=ckpt))
    envs = {"chosen path": {}, "exact (default kernels)": {cpu.ENV: "default"}}
    out: dict[str, list[tuple[float, float]]] = {k: [] for k in envs}
    for _ in range(rounds + 1):  # the first round warms the page cache and measures the path (once per machine)
        for k, extra in envs.items():
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 env=os.environ | extra)  # fmt: skip
            out[k].append(tuple(float(v) for v in run.stdout.split()[-2:]))
    return {k: {"seconds": statistics.median(s for s, _ in v[1:]), "peak_mib": statistics.median(m for _, m in v[1:])}
            for k, v in out.items()}  # fmt: skip


def report(machine: str, gemm: dict[str, float], models: dict[str, dict], cold: dict) -> str:
    lines = [f"Machine: {machine}", f"Chosen: {'; '.join(cpu.cpu_summary()['describe'])}", "",
             "| GEMM 1160×768→3072 | GFLOP/s |", "|---|---|"]  # fmt: skip
    lines += [f"| {k} | {v:.0f} |" for k, v in gemm.items()]
    for label, m in models.items():
        fp32_best = max(v for k, v in m["gemm"].items() if k.startswith("fp32"))
        bf16_best = max(v for k, v in m["gemm"].items() if k.startswith("bf16"))
        title = f"{label} ({m['gflop_per_image']:.1f} GFLOP/img; chosen path vs float64: {m['rel_err_vs_float64']:.1e})"
        same = ", ".join(f"{k} {v:.0f}" for k, v in m["gemm"].items())
        lines += ["", f"GEMM in the same rounds, GFLOP/s: {same}", "",
                  f"| {title} | img/s | × exact | % of fastest GEMM |", "|---|---|---|---|"]  # fmt: skip
        for k, r in m["rows"].items():
            ceiling = bf16_best if "bf16" in k else fp32_best
            ratio = f"{r['vs_exact']:.2f}"
            share = 100 * r["img_s"] * m["gflop_per_image"] / ceiling
            lines.append(f"| {k} | {r['img_s']:.2f} | {ratio} | {share:.0f} % |")
    if cold:
        lines += ["", "| fresh process: load B/32 + predict one image | seconds | peak RSS MiB |", "|---|---|---|"]
        lines += [f"| {k} | {v['seconds']:.2f} | {v['peak_mib']:.0f} |" for k, v in cold.items()]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--no-cold-start", action="store_true", help="skip the fresh-process runs")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    machine = machine_line()
    print(machine, file=sys.stderr)
    gemm = gemm_figures(args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        models = {label: bench_model(label, args.rounds, Path(tmp)) for label in args.models}
        cold = {} if args.no_cold_start else cold_start(Path(tmp), args.rounds)
    print(report(machine, gemm, models, cold))
    if args.json:
        figures = {"machine": machine, "gemm": gemm, "models": models, "cold": cold}
        Path(args.json).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
