"""Throughput of tinyvit on Ray Data against ``tinyvit.predict`` in-process, on the same folder.

    python benchmarks/bench_ray.py                      # CPU, about 3 minutes on 2 cores
    python benchmarks/bench_ray.py --images 256 --rounds 3 --batch-size 32

The folder: ``--images`` ImageNet-size (about 500x375) JPEGs made from tests/fixtures/photos
(crops, flips and scales differ). The model: ViT-B/32-384 with random weights (speed does not
depend on the values), converted to a file as users' checkpoints are. Contenders, same batch size:

* ``tinyvit.predict(folder)`` in this process (torch's default threads, decoding on the cores torch
  does not use);
* ``tinyvit.ray.run_job`` — what ``tinyvit predict --ray`` runs — on a local Ray started once
  (every core, loopback only), with 1 actor of 1 CPU, 1 actor of every CPU, and one actor per CPU.
  The wall time is the whole job: actors start and load the model, the images are classified, the
  Parquet is written and read back for the summary.

Contenders alternate within each round; the table quotes the median over rounds. Also reported:
the time to start the local Ray, the fixed cost of a Ray job (a one-image job: actor start, model
load, Parquet write and read-back) and each Ray job's throughput once that cost is taken off —
what a long job approaches.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # before Ray is imported: no usage reporting,
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # and the local Ray on loopback only

import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from bench_pipeline import make_set, make_weights  # noqa: E402  (this folder: the same photos and weights)

import tinyvit  # noqa: E402


def machine_line(library: str = "ray") -> str:
    """The date, CPU, cores, Python, and the versions of torch, tinyvit and ``library``."""
    from importlib import metadata

    lines = open("/proc/cpuinfo").read().splitlines()
    cpu = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")
    have = set(next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), []))
    flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have) or "no AVX2"
    return (
        f"{time.strftime('%Y-%m-%d')} | {cpu} ({flags}) | {len(os.sched_getaffinity(0))} cores, torch threads "
        f"{torch.get_num_threads()} | Python {platform.python_version()} | torch {torch.__version__}, "
        f"tinyvit {tinyvit.__version__}, {library} {metadata.version(library)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", default="vit-base-p32-384", help="zoo architecture (random weights)")
    args = parser.parse_args()

    import ray

    import tinyvit.deploy.ray as tvray

    cores = len(os.sched_getaffinity(0))
    work = Path(tempfile.mkdtemp(prefix="bench_ray_"))
    try:
        folder = work / "images"
        files = make_set(folder, args.images, (500, 375))  # ImageNet-size
        weights = make_weights(work, args.model)
        n, bs = len(files), args.batch_size

        t = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        start_s = time.perf_counter() - t

        def in_process() -> None:
            preds = tinyvit.predict(folder, str(weights), batch_size=bs, errors="return", progress=False)
            assert len(preds) == n

        def on_ray(actors: int, cpus: int, images=folder, count: int = n):
            def run() -> None:
                out, model = work / "out", str(weights)
                s = tvray.run_job(images, out, model, actors=actors, num_cpus=cpus, batch_size=bs, overwrite=True)
                assert s.rows == count and s.failed == 0

            return run

        contenders = {
            "`tinyvit.predict(folder)`, in-process": in_process,
            "Ray Data, 1 actor x 1 CPU": on_ray(1, 1),
            f"Ray Data, 1 actor x {cores} CPUs": on_ray(1, cores),
            f"Ray Data, {cores} actors x 1 CPU": on_ray(cores, 1),
        }
        in_process()  # warm: the model cached in this process, the files in the page cache
        times: dict[str, list[float]] = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name, fn in contenders.items():
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
                print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", flush=True)
        one = on_ray(1, 1, images=[files[0]], count=1)
        overhead = []
        for _ in range(args.rounds):
            t = time.perf_counter()
            one()
            overhead.append(time.perf_counter() - t)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    base = statistics.median(times["`tinyvit.predict(folder)`, in-process"])
    print()
    print(machine_line())
    print(
        f"\n{n} JPEGs of 500x375, {args.model} (random weights, fp32), batch {bs}; median of {args.rounds} rounds; "
        f"local Ray with {cores} CPUs started in {start_s:.1f} s (once)\n"
    )
    fixed = statistics.median(overhead)
    print("| contender | wall | images/s | vs predict | images/s after the fixed cost |")
    print("|---|---:|---:|---:|---:|")
    for name, ts in times.items():
        wall = statistics.median(ts)
        net = f"{n / (wall - fixed):.2f}" if name.startswith("Ray") and wall > fixed else ""
        print(f"| {name} | {wall:.1f} s | {n / wall:.2f} | {base / wall:.2f}x | {net} |")
    print(f"| Ray Data job, fixed cost (a 1-image job, 1 actor) | {fixed:.1f} s | | | |")


if __name__ == "__main__":
    main()
