"""DINOv3-S/16 (issue #26): tinyvit's forward against timm's eager model and against ONNX Runtime
on tinyvit's own export (rotary embeddings inside the graph), at 224 and 512 px, batch 4 — and, with
``--timm-model``, another rotary family the same way (EVA02-B/14 at 448 px:
``--timm-model eva02_base_patch14_448 --sizes 448 --photos 0``).

    PYTHONPATH=src .refs/bin/python benchmarks/bench_dinov3.py   # against timm (the reference env)
    .venv/bin/python benchmarks/bench_dinov3.py                  # against ONNX Runtime (the project env)

Whichever of timm and onnxruntime the interpreter has runs against tinyvit in the same alternating
rounds (A B C A B C …, after a warm-up call each); ratios are medians of per-round ratios to
tinyvit's plain load, so each table's ratios come from one run. Random weights: with timm, timm's
``vit_small_patch16_dinov3`` saved by its ``save_for_hf`` and loaded by tinyvit from that folder
(the same numbers); without it, the zoo's ``dinov3-small`` architecture, randomly initialised.
"tinyvit, CPU GEMM path" is the model as ``predict`` / ``embed`` / the server run it
(``run/cpu.py``: oneDNN prepacked linear layers where this CPU measured them faster).

With timm (``--photos N``, default 64): the patch features of N real photos (ImageNet-size JPEGs
made from tests/fixtures/photos) through each library's preprocessing at the weights' 256 px:
tinyvit's runner (what ``tinyvit embed --patches`` streams; decoding threads ahead of the model)
against timm's ``create_transform`` + a DataLoader with one worker per core + ``forward_features``
without the prefix tokens.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_cpu import alternate, machine_line  # noqa: E402
from bench_pipeline import make_set  # noqa: E402

import tinyvit  # noqa: E402
from tinyvit.run.cpu import apply_cpu_path  # noqa: E402
from tinyvit.weights.manifest import resolve  # noqa: E402

TIMM_NAME = "vit_small_patch16_dinov3"
BASE = "tinyvit"


def models(folder: Path, timm_name: str = TIMM_NAME) -> tuple[torch.nn.Module | None, tinyvit.VisionTransformer]:
    """timm's model (None without timm) and tinyvit's, with the same random weights (without timm:
    those a run with timm saved in ``--work``, else the zoo's ``dinov3-small`` architecture)."""
    if importlib.util.find_spec("timm") is None and (folder / "config.json").is_file():
        return None, tinyvit.load(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if importlib.util.find_spec("timm") is not None:
        import timm

        ref = timm.create_model(timm_name, pretrained=False, dynamic_img_size=True).eval()
        timm.models.save_for_hf(ref, str(folder), safe_serialization=True)
        return ref, tinyvit.load(folder)
    if timm_name != TIMM_NAME:
        raise SystemExit(f"--timm-model {timm_name}: needs timm, or the --work folder a run with timm wrote")
    config = resolve("dinov3-small").config
    with torch.random.fork_rng():
        torch.manual_seed(0)
        save_file(tinyvit.VisionTransformer(config).init_weights().state_dict(), str(folder / "timm.safetensors"))
    return None, tinyvit.load(tinyvit.convert(folder / "timm.safetensors", folder / "tv.safetensors", arch=config))


def ort_session(model: tinyvit.VisionTransformer, path: Path):
    import onnxruntime as ort

    from tinyvit.deploy.export import export_onnx

    export_onnx(model, path, dynamic_size=True)
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def bench(size: int, batch: int, rounds: int, folder: Path, timm_name: str = TIMM_NAME) -> None:
    ref, tv = models(folder / f"m{size}", timm_name)
    packed = copy.deepcopy(tv)
    choice = apply_cpu_path(packed)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        want = tv(x)
        calls = {BASE: lambda: tv(x), "tinyvit, CPU GEMM path": lambda: packed(x)}
        dev = {"tinyvit, CPU GEMM path": (packed(x) - want).abs().max().item()}
        if ref is not None:
            calls["timm (eager)"] = lambda: ref(x)
            dev["timm (eager)"] = (ref(x) - want).abs().max().item()
        if importlib.util.find_spec("onnxruntime") is not None:
            session, xn = ort_session(tv, folder / f"m{size}.onnx"), x.numpy()
            calls["ONNX Runtime (tinyvit's export)"] = lambda: session.run(None, {"pixel_values": xn})
            dev["ONNX Runtime (tinyvit's export)"] = float(np.abs(session.run(None, {"pixel_values": xn})[0]
                                                                  - want.numpy()).max())  # fmt: skip
        times = alternate(calls, rounds)
    tokens = (size // tv.config.patch_size) ** 2 + tv.config.num_prefix_tokens
    path = choice.path if choice is not None else "none"
    title = "DINOv3-S/16" if timm_name == TIMM_NAME else f"timm's {timm_name}"
    print(f"\n{title} at {size} px ({tokens} tokens), batch {batch}, {rounds} alternating rounds "
          f"(CPU GEMM path: {path})\n")  # fmt: skip
    print(f"| contender | images/s | vs {BASE} | max abs deviation from {BASE} |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(times[BASE], ts, strict=True))
        print(f"| {name} | {batch / statistics.median(ts):.3f} | {ratio:.2f}x | {dev.get(name, 0.0):.2g} |")


def patches_bench(rounds: int, images: int, folder: Path) -> None:
    import timm
    from PIL import Image
    from torch.utils.data import DataLoader, Dataset

    from tinyvit.run.runner import Runner

    class Files(Dataset):
        def __init__(self, files, transform):
            self.files, self.transform = files, transform

        def __len__(self):
            return len(self.files)

        def __getitem__(self, i):
            with Image.open(self.files[i]) as img:
                return self.transform(img.convert("RGB"))

    ref, tv = models(folder / "patches")
    files = make_set(folder / "photos", images, (500, 375))
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(ref))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    runner = Runner(tv, task="patches")

    def timm_patches() -> torch.Tensor:
        loader = DataLoader(Files(files, transform), batch_size=8, num_workers=cores)
        return torch.cat([ref.forward_features(x)[:, ref.num_prefix_tokens :] for x in loader])

    def tinyvit_patches() -> torch.Tensor:
        return torch.stack([e.vector for e in runner.stream(files, batch_size=8)])

    with torch.inference_mode():
        got, want = tinyvit_patches(), timm_patches()
        deviation = (got.flatten(1, 2) - want).abs().max().item()
        times = alternate({"timm + DataLoader": timm_patches, BASE: tinyvit_patches}, rounds)
    print(f"\npatch features of {images} JPEGs (500x375) at {runner.spec.crop} px, grid {tuple(got.shape[1:3])}, "
          f"batch 8, {rounds} alternating rounds\n")  # fmt: skip
    print("| contender | images/s | vs timm + DataLoader | max abs deviation from timm |\n|---|---:|---:|---:|")
    for name, ts in times.items():
        ratio = statistics.median(a / b for a, b in zip(times["timm + DataLoader"], ts, strict=True))
        dev = f"{deviation:.2g}" if name == BASE else "0"
        print(f"| {name} | {images / statistics.median(ts):.3f} | {ratio:.2f}x | {dev} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--sizes", type=int, nargs="+", default=[224, 512])
    p.add_argument("--photos", type=int, default=64, help="photos for the patch-features run (0: none; needs timm)")
    p.add_argument("--timm-model", default=TIMM_NAME, help="another rotary family by timm's name (needs timm)")
    p.add_argument("--work", help="keep the models here (a run without timm then loads the weights a run "
                   "with timm saved: tinyvit vs ONNX Runtime on the same weights)")  # fmt: skip
    args = p.parse_args()
    print(f"{machine_line()}; Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work) if args.work else Path(tmp)
        for size in args.sizes:
            bench(size, args.batch, args.rounds, work, args.timm_model)
        if args.photos and importlib.util.find_spec("timm") is not None:
            patches_bench(args.rounds, args.photos, work)


if __name__ == "__main__":
    main()
