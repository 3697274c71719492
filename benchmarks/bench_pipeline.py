"""Folders of images, decode to labels: tinyvit's pipeline against timm's evaluation pipeline.

    PYTHONPATH=src .refs/bin/python benchmarks/bench_pipeline.py             # CPU, a few minutes
    PYTHONPATH=src .refs/bin/python benchmarks/bench_pipeline.py --device cuda --batch-size 64

(timm needs torchvision, so this runs in the reference environment of scripts/make_fixtures.py,
with tinyvit from the source tree.) The two sets are real photographs (tests/fixtures/photos)
re-encoded as JPEGs: ImageNet-size (about 500x375) and 12-megapixel phone-size (4000x3000).
Contenders, same weights (random ViT-B/32-384: speed does not depend on the values), same batch:

* timm: ``create_transform(**resolve_data_config(model=...))`` + a ``torch.utils.data.DataLoader``
  with ``num_workers`` = the machine's cores (pinned memory on CUDA), softmax and top-5;
* tinyvit exact: ``tinyvit.predict_iter(files, model)`` (the default path);
* tinyvit fast: ``tinyvit.predict_iter(files, weights_file, fast=True)`` (draft JPEG decoding, plus
  bfloat16 weights where the CPU has native bfloat16, float16 on CUDA);
* tinyvit forward only: the model on already preprocessed tensors (the ceiling of the exact path).

Contenders alternate within each round (A B A B …); ratios are medians of per-round ratios. Also
reported: the fast path's deviation from the exact one, and the peak RSS of classifying a folder
of ``--rss-images`` images against that of one image (fresh processes).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import torch
from PIL import Image

import tinyvit
from tinyvit.run.runtime import fast_dtype, native_bf16_cpu

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = sorted((ROOT / "tests" / "fixtures" / "photos").glob("*.jpg"))


def make_set(folder: Path, n: int, size: tuple[int, int]) -> list[Path]:
    """``n`` distinct JPEGs of about ``size`` from the photos (crops, flips and scales differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(n):
        img = Image.open(PHOTOS[i % len(PHOTOS)]).convert("RGB")
        if i // len(PHOTOS) % 2:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        w, h = img.size
        k = 0.8 + 0.05 * (i % 5)
        img = img.crop((0, 0, int(w * k), int(h * k)))
        target = size if img.width >= img.height else size[::-1]
        img = img.resize(target, Image.Resampling.LANCZOS)
        files.append(folder / f"{i:03d}.jpg")
        img.save(files[-1], quality=90)
    return files


def make_weights(folder: Path, arch: str) -> Path:
    """Random weights of a zoo architecture, saved in timm's layout and converted, as users'
    checkpoints are (speed does not depend on the values)."""
    from safetensors.torch import save_file

    model = tinyvit.get_model(arch)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "timm.safetensors"))
    return tinyvit.convert(folder / "timm.safetensors", folder / f"{arch}.safetensors", arch=arch)


def timm_pipeline(model, files: list[Path], batch_size: int, device: torch.device) -> list[int]:
    from timm.data import create_transform, resolve_data_config

    transform = create_transform(**resolve_data_config({}, model=model))

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            with Image.open(files[i]) as img:
                return transform(img.convert("RGB"))

    cores = len(os.sched_getaffinity(0))
    loader = torch.utils.data.DataLoader(
        Files(), batch_size=batch_size, num_workers=cores, pin_memory=device.type == "cuda"
    )
    labels = []
    with torch.inference_mode():
        for x in loader:
            probs = model(x.to(device, non_blocking=True)).softmax(-1)
            labels += probs.topk(5).indices[:, 0].tolist()
    return labels


def tinyvit_pipeline(model, files: list[Path], batch_size: int, fast: bool = False) -> list[int]:
    return [p.label for p in tinyvit.predict_iter(files, model, batch_size=batch_size, fast=fast)]


def forward_only(model, x: torch.Tensor, batch_size: int) -> None:
    with torch.inference_mode():
        for i in range(0, len(x), batch_size):
            model(x[i : i + batch_size]).softmax(-1)


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return times


def peak_rss_mib(code: str) -> float:
    """Peak RSS of a fresh process running ``code`` (its VmHWM: ``ru_maxrss`` would carry over the
    parent's peak across fork and exec)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


RSS_CODE = """
import tinyvit
n = 0
for p in tinyvit.predict_iter({files!r}, {weights!r}, batch_size=8):
    n += 1
assert n == {n}
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) / 1024)
"""


def machine_line(device: torch.device) -> str:
    import timm

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    gpu = f" | {torch.cuda.get_device_name()}" if device.type == "cuda" else ""
    bf16 = "native bf16" if native_bf16_cpu() else "no native bf16"
    return (
        f"{time.strftime('%Y-%m-%d')} | {cpu} ({bf16}) | {len(os.sched_getaffinity(0))} cores, torch threads "
        f"{torch.get_num_threads()}{gpu} | Python {platform.python_version()} | torch {torch.__version__}, "
        f"tinyvit {tinyvit.__version__}, timm {timm.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--images", type=int, default=32, help="images per set")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-images", type=int, default=2000, help="0 to skip the memory measure")
    args = parser.parse_args()
    import timm

    device = torch.device(args.device)
    tmp = Path(tempfile.mkdtemp(prefix="tinyvit-bench-"))
    weights = make_weights(tmp, "vit-base-p32-384")  # the same random weights in both libraries
    exact = tinyvit.load(weights, device=device)
    fast_model = tinyvit.load(weights, device=device, dtype=fast_dtype(device))
    ref = timm.create_model("vit_base_patch32_384", pretrained=False).eval()
    ref.load_state_dict(exact.state_dict())
    ref = ref.to(device)

    sets = {
        "ImageNet-size JPEGs (500x375)": make_set(tmp / "small", args.images, (500, 375)),
        "12 MP JPEGs (4000x3000)": make_set(tmp / "big", args.images, (4000, 3000)),
    }
    bs = args.batch_size
    rows = []
    for title, files in sets.items():
        assert tinyvit_pipeline(exact, files, bs) == timm_pipeline(ref, files, bs, device), "different labels"
        x = tinyvit.preprocess(files, exact).to(device)
        contenders = {
            "timm": lambda f=files: timm_pipeline(ref, f, bs, device),
            "exact": lambda f=files: tinyvit_pipeline(exact, f, bs),
            "fast": lambda f=files: tinyvit_pipeline(fast_model, f, bs, fast=True),
            "forward": lambda x=x: forward_only(exact, x, bs),
        }
        times = alternate(contenders, args.rounds)
        n = len(files)

        def ips(name: str, times=times, n=n) -> float:
            return n / statistics.median(times[name])

        def ratio(a: str, b: str, times=times) -> float:
            return statistics.median(tb / ta for ta, tb in zip(times[a], times[b], strict=True))

        workers = len(os.sched_getaffinity(0))
        rows.append((title, f"timm pipeline (DataLoader, {workers} workers)", ips("timm"), ""))
        rows.append((title, "tinyvit exact", ips("exact"), f"{ratio('exact', 'timm'):.2f}x timm; "
                     f"{ratio('exact', 'forward') * 100:.0f}% of its forward-only speed"))  # fmt: skip
        rows.append((title, f"tinyvit fast ({fast_dtype(device) or torch.float32})", ips("fast"),
                     f"{ratio('fast', 'timm'):.2f}x timm"))  # fmt: skip
        rows.append((title, "tinyvit forward only (preprocessed)", ips("forward"), ""))

    # the fast path's deviation from the exact one, on the 12 MP set
    files = sets["12 MP JPEGs (4000x3000)"]
    with torch.inference_mode():
        a = exact(tinyvit.preprocess(files, exact).to(device)).float()
        b = fast_model(tinyvit.preprocess(files, exact, fast=True).to(device, fast_model.pos_embed.dtype)).float()
    deviation = (a - b).abs().max().item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item() * 100

    rss = None
    if args.rss_images:
        many = tmp / "many"
        many.mkdir()
        small = sets["ImageNet-size JPEGs (500x375)"]
        links = []
        for i in range(args.rss_images):
            links.append(many / f"{i:05d}.jpg")
            os.symlink(small[i % len(small)], links[-1])
        one = peak_rss_mib(textwrap.dedent(RSS_CODE.format(files=[str(links[0])], weights=str(weights), n=1)))
        lots = peak_rss_mib(
            textwrap.dedent(RSS_CODE.format(files=[str(p) for p in links], weights=str(weights), n=len(links)))
        )
        rss = (one, lots)

    print(machine_line(device))
    print(f"\nViT-B/32-384, batch {bs}, {args.images} images per set, median of {args.rounds} alternating rounds\n")
    print("| set | pipeline | images/s | ratio |")
    print("|---|---|---:|---|")
    for title, name, speed, note in rows:
        print(f"| {title} | {name} | {speed:.2f} | {note} |")
    print(f"\nfast vs exact on the 12 MP set: max |dlogit| {deviation:.3g}, top-1 agreement {agree:.0f}% "
          f"of {len(files)} (random weights: near-flat logits flip easily)")  # fmt: skip
    if rss:
        print(f"peak RSS: one image {rss[0]:.0f} MiB; {args.rss_images} images {rss[1]:.0f} MiB "
              f"({rss[1] / rss[0]:.2f}x, target <= 1.3x)")  # fmt: skip


if __name__ == "__main__":
    main()
