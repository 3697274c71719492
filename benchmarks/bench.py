"""tinyvit's speed and memory, side by side with timm and transformers when they are installed.

    python benchmarks/bench.py                        # vit-base-p32-384, a few minutes on 2 cores
    python benchmarks/bench.py --model vit-base-p16-384 --reps 3

Weights come from a local file: real ones with ``--weights FILE`` (a tinyvit or timm-layout
safetensors), else random weights written to a temporary folder (speed does not depend on the
values; the deviation figures are then only indicative). Every comparison alternates its
contenders (A B A B …) within one run and reports the median of the per-round ratios, so the
drift of a shared machine cancels. Prints the machine line and one table.
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
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tinyvit
from tinyvit.core.config import count_macs
from tinyvit.run.options import ModelOptions
from tinyvit.run.runtime import cached_model
from tinyvit.weights._builder import resolve_preprocess
from tinyvit.weights.manifest import entries

TIMM_NAMES = {  # the timm architecture of each zoo model, for side-by-side runs
    "vit-base-p32-384": "vit_base_patch32_384",
    "vit-base-p16-224": "vit_base_patch16_224",
    "vit-base-p16-384": "vit_base_patch16_384",
    "vit-large-p16-384": "vit_large_patch16_384",
}


def have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


# ---------------------------------------------------------------------------------------------
# Inputs


def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB picture: smooth shading, a few soft discs and fine grain."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width * 200 + 30, y / height * 180 + 40, (x + y) / (width + height) * 150 + 60], axis=-1)
    for _ in range(6):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.05, 0.3) * min(width, height)
        mask = np.clip(1 - np.hypot(x - cx, y - cy) / r, 0, 1)[..., None]
        img = img * (1 - mask) + rng.uniform(0, 255, 3) * mask
    img += rng.normal(0, 4, img.shape[:2])[..., None]
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def write_inputs(folder: Path, name: str, weights: Path | None) -> dict[str, Path]:
    """The weights files (tinyvit format and timm layout) and the test JPEGs."""
    from safetensors.torch import save_file

    paths = {"small_jpeg": folder / "small.jpg", "big_jpeg": folder / "big.jpg"}
    photo(500, 375, 1).save(paths["small_jpeg"], quality=90)
    photo(4000, 3000, 2).save(paths["big_jpeg"], quality=90)  # 12 megapixels
    if weights is None:
        model = tinyvit.get_model(name)
        paths["timm_weights"] = folder / "timm.safetensors"
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(paths["timm_weights"]))
    else:
        paths["timm_weights"] = weights
    paths["weights"] = tinyvit.convert(paths["timm_weights"], folder / "tinyvit.safetensors", arch=name)
    if have("transformers"):  # transformers' own randomly initialised model: speed does not depend on the values
        from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

        a = entries()[name].arch
        config = ViTConfig(
            image_size=a.image_size, patch_size=a.patch_size, hidden_size=a.embed_dim, num_hidden_layers=a.depth,
            num_attention_heads=a.num_heads, intermediate_size=a.mlp_dim, num_labels=a.num_classes, layer_norm_eps=1e-6,
        )  # fmt: skip
        paths["hf"] = folder / "hf"
        ViTForImageClassification(config).save_pretrained(paths["hf"])
        size = {"height": a.image_size, "width": a.image_size}
        ViTImageProcessor(size=size, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(paths["hf"])
    return paths


# ---------------------------------------------------------------------------------------------
# Measuring


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """Run each contender once per round, in turn; seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, fn in contenders.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


def median_ratio(times: dict[str, list[float]], slow: str, fast: str) -> float:
    """Median over rounds of time(slow) / time(fast): > 1 means ``fast`` is faster."""
    return statistics.median(a / b for a, b in zip(times[slow], times[fast], strict=True))


def run_child(code: str) -> tuple[float, dict]:
    """Wall time of a fresh interpreter running ``code``, and the JSON it prints last."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return wall, json.loads(out.stdout.strip().splitlines()[-1])


# Peak RSS of the child itself: VmHWM starts afresh at exec (ru_maxrss would include the parent's
# resident set at fork time, inherited across exec on Linux).
PEAK = """
import json
hwm = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmHWM:"))
print(json.dumps({"rss_mib": hwm / 1024}))
"""

COLD = {
    "tinyvit": """
        import tinyvit
        p = tinyvit.predict({image!r}, {weights!r})
        print(p.name, p.score)
    """,
    "timm": """
        import timm, torch
        from PIL import Image
        model = timm.create_model({arch!r}, pretrained=True, pretrained_cfg_overlay=dict(file={timm_weights!r})).eval()
        cfg = timm.data.resolve_model_data_config(model)
        transform = timm.data.create_transform(**cfg)
        x = transform(Image.open({image!r}).convert("RGB"))[None]
        with torch.inference_mode():
            p = model(x).softmax(-1)
        print(p.max().item(), p.argmax().item())
    """,
    "transformers": """
        from transformers import pipeline
        classify = pipeline("image-classification", model={hf!r})
        print(classify({image!r})[0])
    """,
}


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str, str]] = []
        self.data: dict[str, dict] = {}

    def add(self, what: str, tinyvit_value: str, reference: str = "", ratio: str = "", value: float | None = None):
        """One table row; ``value`` is the figure a target is judged on (kept for --json)."""
        self.rows.append((what, tinyvit_value, reference, ratio))
        self.data[what] = {"value": value}
        print(f"  {what}: {tinyvit_value}  {reference}  {ratio}", file=sys.stderr, flush=True)

    def table(self) -> str:
        head = ("measure", "tinyvit", "reference", "ratio (median of rounds)")
        widths = [max(len(r[i]) for r in [head, *self.rows]) for i in range(4)]
        line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(head), sep, *map(line, self.rows)])


# ---------------------------------------------------------------------------------------------
# Sections


def bench_startup(report: Report, paths: dict, name: str, rounds: int) -> None:
    imports = {
        "import torch": "import torch",
        "import tinyvit": "import tinyvit",
        "import torch + tinyvit's loading path": "import torch, tinyvit.api, tinyvit.images.transforms",
    }
    walls: dict[str, list[float]] = {k: [] for k in imports}
    for _ in range(max(rounds, 7)):  # cheap, and noisy: more rounds
        for k, stmt in imports.items():
            walls[k].append(run_child(f"{stmt}\n{PEAK}")[0])
    t_torch = statistics.median(walls["import torch"])
    added = statistics.median(
        a - b for a, b in zip(walls["import torch + tinyvit's loading path"], walls["import torch"], strict=True)
    )
    report.add("import torch (fresh process)", f"{t_torch:.2f} s")
    report.add("import tinyvit (lazy)", f"{statistics.median(walls['import tinyvit']):.2f} s")
    report.add("time tinyvit adds to import torch", f"{added:+.3f} s", "target <= +0.15 s", value=added)

    contenders = {lib: code for lib, code in COLD.items() if lib == "tinyvit" or have(lib)}
    fmt = dict(image=str(paths["small_jpeg"]), weights=str(paths["weights"]), arch=TIMM_NAMES[name],
               timm_weights=str(paths["timm_weights"]), hf=str(paths.get("hf")))  # fmt: skip
    wall: dict[str, list[float]] = {k: [] for k in contenders}
    rss: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, code in contenders.items():
            w, data = run_child(textwrap.dedent(code).format(**fmt) + PEAK)
            wall[k].append(w)
            rss[k].append(data["rss_mib"])
    compare(report, "cold predict, one JPEG: wall", wall, lambda t: f"{t:.2f} s", target="<= 0.5")
    compare(report, "cold predict, one JPEG: peak RSS", rss, lambda m: f"{m:.0f} MiB", target="<= 0.8")


def compare(report: Report, what: str, samples: dict[str, list[float]], show, target: str = "") -> None:
    """A cost (time, memory) row: tinyvit's median, each reference's, and the median over rounds of
    tinyvit / reference (< 1: tinyvit costs less). ``target`` applies to the ratio to timm."""
    refs = [k for k in samples if k != "tinyvit"]
    reference = "; ".join(f"{k} {show(statistics.median(samples[k]))}" for k in refs)
    ratios = {k: statistics.median(a / b for a, b in zip(samples["tinyvit"], samples[k], strict=True)) for k in refs}
    ratio = "; ".join(
        f"{r:.2f}x {k}'s" + (f" (target {target})" if k == "timm" and target else "") for k, r in ratios.items()
    )
    report.add(what, show(statistics.median(samples["tinyvit"])), reference, ratio, value=ratios.get("timm"))


def bench_load(report: Report, paths: dict, name: str, rounds: int) -> None:
    contenders = {"tinyvit": lambda: tinyvit.load(paths["weights"])}
    if have("timm"):
        import timm

        overlay = dict(file=str(paths["timm_weights"]))
        contenders["timm"] = lambda: timm.create_model(
            TIMM_NAMES[name], pretrained=True, pretrained_cfg_overlay=overlay
        )
    if "hf" in paths:
        from transformers import ViTForImageClassification

        contenders["transformers"] = lambda: ViTForImageClassification.from_pretrained(paths["hf"])
    times = alternate(contenders, rounds)
    compare(report, "load weights from a cached safetensors file", times, lambda t: f"{t:.3f} s")


def gemm_ceiling(dtype: torch.dtype, n: int = 2048, rounds: int = 8) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = alternate({"mm": lambda: a @ b}, rounds)["mm"]
    return 2 * n**3 / min(times) / 1e9


def bench_forward(report: Report, paths: dict, name: str, rounds: int, batch_sizes: list[int]) -> None:
    arch = entries()[name].arch
    flops = 2 * count_macs(arch)
    ceiling = {"fp32": gemm_ceiling(torch.float32), "bf16": gemm_ceiling(torch.bfloat16)}
    report.add("GEMM ceiling, fp32 / bf16 (2048^3 matmul)", f"{ceiling['fp32']:.0f} / {ceiling['bf16']:.0f} GFLOP/s")
    model = tinyvit.load(paths["weights"])
    model_bf16 = tinyvit.load(paths["weights"], dtype=torch.bfloat16)
    references = {}  # library → its model as a function of the input batch
    if have("timm"):
        import timm

        overlay = dict(file=str(paths["timm_weights"]))
        references["timm"] = timm.create_model(TIMM_NAMES[name], pretrained=True, pretrained_cfg_overlay=overlay).eval()
    if "hf" in paths:
        from transformers import ViTForImageClassification

        hf = ViTForImageClassification.from_pretrained(paths["hf"]).eval()
        references["transformers"] = lambda x: hf(pixel_values=x).logits
    for bs in batch_sizes:
        x = torch.randn(bs, 3, arch.image_size, arch.image_size)
        contenders = forward_contenders(x, model, model_bf16, references)
        with torch.inference_mode():
            for fn in contenders.values():
                fn()  # warm up
            times = alternate(contenders, rounds)
        ips = {k: bs / statistics.median(v) for k, v in times.items()}
        for variant, ref_variant, ceil in (("fp32", "fp32", "fp32"), ("bf16 weights", "bf16 autocast", "bf16"),
                                           ("bf16 autocast", "bf16 autocast", "bf16")):  # fmt: skip
            frac = ips[f"tinyvit {variant}"] * flops / 1e9 / ceiling[ceil]
            value = f"{ips[f'tinyvit {variant}']:.2f} img/s = {100 * frac:.0f}% of {ceil} ceiling"
            reference = "; ".join(f"{lib} {ref_variant} {ips[f'{lib} {ref_variant}']:.2f} img/s" for lib in references)
            speedups = {lib: median_ratio(times, f"{lib} {ref_variant}", f"tinyvit {variant}") for lib in references}
            target = TARGETS.get((name, variant, bs)) or TARGETS.get((None, variant, bs))
            ratio = "; ".join(
                f"{r:.2f}x {lib}'s speed" + (f" (target {target})" if lib == "timm" and target else "")
                for lib, r in speedups.items()
            )
            report.add(f"forward {variant}, batch {bs}", value, reference, ratio, value=speedups.get("timm"))


# throughput targets on timm (issue [5/6]): (model or any, tinyvit variant, batch size) → speed ratio
TARGETS = {
    (None, "fp32", 8): ">= 1.05",
    (None, "bf16 weights", 8): ">= 1.25",
    ("vit-base-p16-384", "bf16 weights", 1): ">= 1.4",
}


def forward_contenders(x: torch.Tensor, model, model_bf16, references: dict) -> dict:
    """The forward passes compared: tinyvit fp32, bf16 weights and bf16 autocast; each reference
    library in fp32 and bf16 autocast."""

    def autocast(net):
        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x)

        return run

    xb = x.bfloat16()
    contenders = {
        "tinyvit fp32": lambda: model(x),
        "tinyvit bf16 weights": lambda: model_bf16(xb),
        "tinyvit bf16 autocast": autocast(model),
    }
    for lib, net in references.items():
        contenders[f"{lib} fp32"] = lambda net=net: net(x)
        contenders[f"{lib} bf16 autocast"] = autocast(net)
    return contenders


def bench_preprocess(report: Report, paths: dict, name: str, rounds: int) -> None:
    spec = resolve_preprocess(name)
    timm_transform = None
    if have("timm"):
        import timm

        cfg = timm.data.resolve_model_data_config(timm.create_model(TIMM_NAMES[name], pretrained=False))
        timm_transform = timm.data.create_transform(**cfg)
    for label, key in (("500x375 JPEG", "small_jpeg"), ("12 MP JPEG", "big_jpeg")):
        path = paths[key]
        contenders = {
            "exact": lambda p=path: tinyvit.preprocess(p, spec),
            "fast": lambda p=path: tinyvit.preprocess(p, spec, fast=True),
        }
        if timm_transform is not None:
            contenders["timm"] = lambda p=path, t=timm_transform: t(Image.open(p).convert("RGB"))
        times = alternate(contenders, rounds)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        for variant in ("exact", "fast"):
            ref = f"timm {ms['timm']:.0f} ms" if "timm" in ms else ""
            ratio = f"{median_ratio(times, 'timm', variant):.1f}x timm's speed" if "timm" in ms else ""
            if variant == "fast" and "timm" in ms and key == "big_jpeg":
                ratio += " (target >= 3)"
            report.add(f"preprocess {label}, {variant}", f"{ms[variant]:.0f} ms", ref, ratio)


def bench_deviation(report: Report, paths: dict, name: str, n_images: int, folder: Path) -> None:
    """How far every non-exact path lands from the exact fp32 one, over generated photos."""
    images = []
    for i in range(n_images):
        w, h = [(4000, 3000), (3000, 4000), (1600, 1200), (2048, 1365)][i % 4]
        path = folder / f"dev{i}.jpg"
        photo(w, h, 100 + i).save(path, quality=90)
        images.append(path)
    spec = resolve_preprocess(name)
    model = cached_model(paths["weights"])
    model_bf16 = cached_model(paths["weights"], ModelOptions(dtype="bfloat16"))
    exact = torch.stack([tinyvit.preprocess(p, spec) for p in images])
    fast = torch.stack([tinyvit.preprocess(p, spec, fast=True) for p in images])
    with torch.inference_mode():
        ref = model(exact)
        variants = {
            "bf16 weights": model_bf16(exact.bfloat16()).float(),
            "bf16 autocast": _autocast(model, exact),
            "fast JPEG decode (fp32)": model(fast),
        }
    d = (fast - exact).abs()
    report.add("fast decode: pixel tensor deviation", f"max {d.max():.3f}, mean {d.mean():.4f}", "(normalized units)")
    for variant, logits in variants.items():
        agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
        value = f"max |dlogit| {(logits - ref).abs().max():.3g}, top-1 agreement {100 * agree:.0f}% of {n_images}"
        report.add(f"deviation of {variant} from exact fp32", value)


def _autocast(model, x):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model(x).float()


def machine_line() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    versions = [f"torch {torch.__version__}", f"tinyvit {tinyvit.__version__}"]
    for lib in ("timm", "transformers"):
        if have(lib):
            versions.append(f"{lib} {__import__(lib).__version__}")
    return (
        f"{time.strftime('%Y-%m-%d')} | {cpu} | {os.cpu_count()} cores, torch threads {torch.get_num_threads()} | "
        f"Python {platform.python_version()} | {', '.join(versions)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vit-base-p32-384", choices=list(TIMM_NAMES))
    parser.add_argument("--weights", type=Path, help="a timm-layout or tinyvit safetensors file (default: random)")
    parser.add_argument("--reps", type=int, default=5, help="rounds per comparison")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--deviation-images", type=int, default=8)
    parser.add_argument(
        "--skip", default="", help="comma-separated sections to skip: startup,load,forward,preprocess,deviation"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    report = Report()
    print(f"benchmarking {args.model} ...", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        paths = write_inputs(folder, args.model, args.weights)
        if "startup" not in skip:
            bench_startup(report, paths, args.model, args.reps)
        if "load" not in skip:
            bench_load(report, paths, args.model, args.reps)
        if "forward" not in skip:
            bench_forward(report, paths, args.model, args.reps, [int(b) for b in args.batch_sizes.split(",")])
        if "preprocess" not in skip:
            bench_preprocess(report, paths, args.model, max(args.reps, 5))
        if "deviation" not in skip:
            bench_deviation(report, paths, args.model, args.deviation_images, folder)
    print(machine_line())
    print(f"model {args.model}, weights {'from ' + str(args.weights) if args.weights else 'random'}")
    print(report.table())
    if args.json:
        args.json.write_text(
            json.dumps({"machine": machine_line(), "rows": report.rows, "data": report.data}, indent=1)
        )


if __name__ == "__main__":
    main()
