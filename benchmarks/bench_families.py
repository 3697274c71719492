"""The ViT families: tinyvit's forward against timm's eager model and ONNX Runtime, and
``tinyvit.embed`` on a folder of real photos against timm with a DataLoader.

    PYTHONPATH=src .refs/bin/python benchmarks/bench_families.py --rounds 4

(timm needs torchvision, so this runs in the reference environment of scripts/make_fixtures.py,
with onnxruntime, onnx and onnxscript added, and tinyvit from the source tree.) Random weights
(speed does not depend on the values), made by timm and loaded by tinyvit from timm's own
``save_for_hf`` folder, so both run the same numbers. Contenders alternate within each round
(A B C A B C …); ratios are medians of per-round ratios. Reported with each: max |Δ| of the outputs.

* DINOv2-S/14 at 518 px (1,370 tokens), batch 4: long sequences, where attention is ~40 % of the
  time. ONNX Runtime runs tinyvit's own export of the model (CPU provider, the same threads).
* CLIP B/16 at 224 px (197 tokens, QuickGELU), batch 8.
* Attention alone at 1,370 tokens (B 4, H 6, Dh 64): SDPA (torch's CPU flash kernel, what the
  model runs) against the explicit softmax(QKᵀ)V and a blocked version of it.
* Embedding a folder of 32 ImageNet-size JPEGs (real photos) with the CLIP tower: ``tinyvit.embed``
  (threads decode ahead of the model) against timm's ``create_transform`` + a DataLoader with one
  worker per core + the model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_ab import cpu_name  # noqa: E402
from bench_pipeline import alternate as alternate_rounds  # noqa: E402
from bench_pipeline import make_set  # noqa: E402

import tinyvit  # noqa: E402


def alternate(contenders: dict, rounds: int) -> dict[str, list[float]]:
    """bench_pipeline's alternating rounds, after one warm-up call of each contender."""
    for fn in contenders.values():
        fn()
    return alternate_rounds(contenders, rounds)


def report(title: str, times: dict[str, list[float]], items: int, base: str, deviations: dict[str, str]) -> None:
    print(f"\n{title}\n\n| contender | images/s | vs {base} | max abs deviation |\n|---|---:|---:|---|")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(times[base], ts, strict=True))
        print(f"| {name} | {items / statistics.median(ts):.3f} | {ratio:.3f}x | {deviations.get(name, '')} |")


def pair(timm_name: str, size: int, folder: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """timm's model and tinyvit's, from timm's own saved folder (same random weights)."""
    import timm

    ref = timm.create_model(timm_name, pretrained=False, img_size=size).eval()
    timm.models.save_for_hf(ref, folder, safe_serialization=True)
    return ref, tinyvit.load(folder)


def forward_bench(timm_name: str, size: int, batch: int, rounds: int, with_ort: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        ref, tv = pair(timm_name, size, tmp)
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
        want = ref(x)
        contenders = {"timm (eager)": lambda: ref(x), "tinyvit": lambda: tv(x)}
        deviations = {"tinyvit": f"{(tv(x) - want).abs().max().item():.2g} vs timm"}
        if with_ort:
            import onnxruntime as ort

            from tinyvit.deploy.export import export_onnx

            path = export_onnx(tv, Path(tmp) / "m.onnx")
            options = ort.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            xn = x.numpy()
            got = session.run(None, {"pixel_values": xn})[0]
            deviations["ONNX Runtime (tinyvit's export)"] = f"{np.abs(got - want.numpy()).max():.2g} vs timm"
            contenders["ONNX Runtime (tinyvit's export)"] = lambda: session.run(None, {"pixel_values": xn})
        tokens = (size // tv.config.patch_size) ** 2 + tv.config.num_prefix_tokens
        title = f"{timm_name} at {size} px ({tokens} tokens), batch {batch}, median of {rounds} alternating rounds"
        report(title, alternate(contenders, rounds), batch, "timm (eager)", deviations)


def attention_bench(rounds: int) -> None:
    B, H, T, Dh = 4, 6, 1370, 64
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, T, Dh, generator=g) for _ in range(3))

    def explicit() -> torch.Tensor:
        return ((q * Dh**-0.5) @ k.transpose(-2, -1)).softmax(-1) @ v

    def blocked(block: int = 256) -> torch.Tensor:
        out, kt = torch.empty_like(q), k.transpose(-2, -1)
        for i in range(0, T, block):
            out[:, :, i : i + block] = ((q[:, :, i : i + block] * Dh**-0.5) @ kt).softmax(-1) @ v
        return out

    with torch.inference_mode():
        want = F.scaled_dot_product_attention(q.double(), k.double(), v.double()).float()
        contenders = {"SDPA (CPU flash kernel)": lambda: F.scaled_dot_product_attention(q, k, v),
                      "explicit softmax(QK^T)V": explicit, "blocked, 256 queries": blocked}  # fmt: skip
        deviations = {name: f"{(fn() - want).abs().max().item():.2g} vs float64" for name, fn in contenders.items()}
        flops = 4 * B * H * T * T * Dh
        times = alternate(contenders, rounds)
    print(f"\nattention alone, B {B} x H {H} x T {T} x Dh {Dh} ({flops / 1e9:.1f} GFLOP), median of {rounds} rounds\n")
    print("| attention | ms | GFLOP/s | vs SDPA | max abs deviation |\n|---|---:|---:|---:|---|")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(times["SDPA (CPU flash kernel)"], ts, strict=True))
        med = statistics.median(ts)
        print(f"| {name} | {med * 1000:.0f} | {flops / med / 1e9:.0f} | {ratio:.2f}x | {deviations[name]} |")


def embed_bench(rounds: int, images: int) -> None:
    from timm.data import create_transform, resolve_data_config
    from torch.utils.data import DataLoader, Dataset

    class Files(Dataset):
        def __init__(self, files, transform):
            self.files, self.transform = files, transform

        def __len__(self):
            return len(self.files)

        def __getitem__(self, i):
            from PIL import Image

            with Image.open(self.files[i]) as img:
                return self.transform(img.convert("RGB"))

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        ref, tv = pair("vit_base_patch16_clip_quickgelu_224", 224, str(Path(tmp) / "m"))
        files = make_set(Path(tmp) / "photos", images, (500, 375))
        transform = create_transform(**resolve_data_config({}, model=ref))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

        def timm_embed() -> torch.Tensor:
            loader = DataLoader(Files(files, transform), batch_size=8, num_workers=cores)
            return torch.cat([ref(x) for x in loader])

        def tinyvit_embed() -> torch.Tensor:
            return tinyvit.embed(files, tv, batch_size=8, progress=False)

        deviation = f"{(tinyvit_embed() - timm_embed()).abs().max().item():.2g} vs timm"
        times = alternate({"timm + DataLoader": timm_embed, "tinyvit.embed": tinyvit_embed}, rounds)
    title = f"embedding {images} ImageNet-size JPEGs (500x375) with the CLIP B/16 tower, batch 8, {rounds} rounds"
    report(title, times, images, "timm + DataLoader", {"tinyvit.embed": deviation})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--skip", default="", help="comma-separated: dinov2, clip, attention, embed")
    args = p.parse_args()
    skip = set(args.skip.split(","))
    import timm

    threads = torch.get_num_threads()
    print(f"{time.strftime('%Y-%m-%d')} | {cpu_name()} | {os.cpu_count()} cores, torch threads {threads} | "
          f"Python {platform.python_version()} | torch {torch.__version__}, tinyvit {tinyvit.__version__}, "
          f"timm {timm.__version__}")  # fmt: skip
    if "dinov2" not in skip:
        forward_bench("vit_small_patch14_dinov2", 518, 4, args.rounds, with_ort=True)
    if "clip" not in skip:
        forward_bench("vit_base_patch16_clip_quickgelu_224", 224, 8, args.rounds, with_ort=True)
    if "attention" not in skip:
        attention_bench(args.rounds)
    if "embed" not in skip:
        embed_bench(args.rounds, args.images)


if __name__ == "__main__":
    main()
