"""``tinyvit serve`` throughput: dynamic batching vs one request per forward vs ``tinyvit.predict``.

    python benchmarks/bench_serve.py                          # ViT-B/32-384, random weights, 16 clients
    python benchmarks/bench_serve.py --model small            # the tests' small model: seconds, not minutes
    python benchmarks/bench_serve.py --weights my.safetensors --requests 64 --rounds 3

Three contenders classify the same JPEGs (``--image-size``-ish, a few shapes):

* ``serve, --max-batch-size B``: a server (``python -m tinyvit.serve``) on 127.0.0.1, with
  ``--clients`` concurrent HTTP clients, each sending its next request when the last is answered;
* ``serve, --max-batch-size 1``: the same server, one request per forward pass;
* ``predict``: ``tinyvit.predict(images, batch_size=B)`` in this process, no HTTP at all.

Each round runs the three in turn (A B C A B C …, so a shared machine's drift hits all alike); a
server is started before its measurement (and warmed up) and stopped after it, so an idle server
never competes with the one measured. The table gives requests (images) per second per round and
the median over rounds of the per-round ratios. Prints the machine line and one markdown table.
"""

from __future__ import annotations

import argparse
import http.client
import io
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import tinyvit
from tinyvit.models.vit import VisionTransformer, ViTConfig

ARCHS = {  # random-weight models, by --model
    "b32": ViTConfig(image_size=384, patch_size=32, embed_dim=768, depth=12, num_heads=12, num_classes=1000),
    "small": ViTConfig(image_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4, num_classes=10),
}


def write_model(name: str, folder: Path) -> Path:
    """Random weights in timm's layout, converted like a user's checkpoint (timm's 384 px spec)."""
    from safetensors.torch import save_file

    config = ARCHS[name]
    model = VisionTransformer(config).init_weights()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "timm.safetensors"))
    side = config.image_size
    spec = tinyvit.PreprocessSpec(
        resize=side + side // 8 if name == "small" else side,
        crop=side,
        interpolation="bicubic",
        mean=(127.5,) * 3,
        std=(127.5,) * 3,
    )
    return tinyvit.convert(folder / "timm.safetensors", folder / "model.safetensors", arch=config, preprocess=spec)


def photos(side: int, count: int) -> list[bytes]:
    """JPEGs around ``side`` px: smooth shading and grain, in a few aspect ratios."""
    shapes = [(side, side), (side * 5 // 4, side), (side, side * 7 // 6), (side * 4 // 3, side)]
    out = []
    for i in range(count):
        w, h = shapes[i % len(shapes)]
        rng = np.random.default_rng(i)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([x / w * 200 + 30, y / h * 180 + 40, (x + y) / (w + h) * 150 + 60], axis=-1)
        img += rng.normal(0, 6, (h, w, 1))
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


# ---------------------------------------------------------------------------------------------
# Servers and clients


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port: int, body: bytes, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/predict", body=body, headers={"Content-Type": "image/jpeg"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


class Server:
    """``python -m tinyvit.serve`` in its own process group; stopped with SIGTERM, then killed."""

    def __init__(self, model: Path, folder: Path, batch: int, batch_timeout: float, timeout: float):
        self.port = free_port()
        self.log = folder / f"serve-b{batch}-{self.port}.log"
        cmd = [sys.executable, "-m", "tinyvit.serve", str(model), "--port", str(self.port), "--accelerator", "cpu"]
        cmd += ["--max-batch-size", str(batch), "--batch-timeout", str(batch_timeout), "--timeout", str(timeout)]
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the server did not start:\n{self.log.read_text()}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever is left of the group
        except ProcessLookupError:
            pass
        self.proc.wait()


def drive(port: int, images: list[bytes], requests: int, clients: int, timeout: float) -> float:
    """``requests`` requests from ``clients`` closed-loop client threads; requests per second."""
    lock = threading.Lock()
    state = {"next": 0, "failed": 0}

    def client() -> None:
        while True:
            with lock:
                i = state["next"]
                state["next"] += 1
            if i >= requests:
                return
            if post(port, images[i % len(images)], timeout) != 200:
                with lock:
                    state["failed"] += 1

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    if state["failed"]:
        raise RuntimeError(f"{state['failed']} of {requests} requests failed")
    return requests / seconds


def measure_server(model, folder, images, args, batch: int, requests: int) -> float:
    server = Server(model, folder, batch, args.batch_timeout, args.timeout)
    try:
        warm = min(args.clients, batch)  # one full batch through the model before timing
        drive(server.port, images, warm, warm, args.timeout)
        return drive(server.port, images, requests, args.clients, args.timeout)
    finally:
        server.stop()


def measure_predict(model, images, args) -> float:
    batch = [images[i % len(images)] for i in range(args.requests)]
    start = time.perf_counter()
    tinyvit.predict(batch, model=model, batch_size=args.batch_size, progress=False)
    return args.requests / (time.perf_counter() - start)


# ---------------------------------------------------------------------------------------------


def machine_line() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.1f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?"
    return (
        f"machine: {cpu}, {os.cpu_count()} logical CPUs (load {load}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), litserve {metadata.version('litserve')}, "
        f"Python {platform.python_version()}, {platform.system()} {platform.release()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(ARCHS), default="b32", help="random-weight model (default b32)")
    parser.add_argument("--weights", type=Path, help="a tinyvit weights file instead of random weights")
    parser.add_argument("--image-size", type=int, help="JPEG size (default: the model's input size)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=32, help="timed requests (images) per measurement")
    parser.add_argument(
        "--unbatched-requests", type=int, default=16, help="timed requests for --max-batch-size 1 (the slow one)"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8, help="--max-batch-size and predict's batch_size")
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="tinyvit-bench-serve-") as tmp:
        folder = Path(tmp)
        model = args.weights or write_model(args.model, folder)
        config = tinyvit.load(model).config
        images = photos(args.image_size or config.image_size, 16)
        warm = [images[i % len(images)] for i in range(2 * args.batch_size)]
        tinyvit.predict(warm, model=model, batch_size=args.batch_size, progress=False)  # load + warm up

        rows = {"batched": [], "unbatched": [], "predict": []}
        for r in range(args.rounds):
            rows["batched"].append(measure_server(model, folder, images, args, args.batch_size, args.requests))
            rows["unbatched"].append(measure_server(model, folder, images, args, 1, args.unbatched_requests))
            rows["predict"].append(measure_predict(model, images, args))
            print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}/s" for k, v in rows.items()), file=sys.stderr)

    vs_unbatched = statistics.median(b / u for b, u in zip(rows["batched"], rows["unbatched"], strict=True))
    vs_predict = statistics.median(b / p for b, p in zip(rows["batched"], rows["predict"], strict=True))
    what = args.weights.name if args.weights else f"{args.model} (random weights)"
    arch = f"ViT {config.image_size}px/p{config.patch_size}, dim {config.embed_dim}, depth {config.depth}"
    print(machine_line())
    print(
        f"model: {what}, {arch}; {args.clients} concurrent clients; timed requests per measurement: "
        f"{args.requests} ({args.unbatched_requests} unbatched); {args.rounds} rounds (A B C, A B C, ...); "
        f"JPEGs ~{args.image_size or config.image_size} px\n"
    )
    head = " | ".join(f"round {i + 1}" for i in range(args.rounds))
    print(f"| contender | {head} | median | ratio (median of per-round ratios) |")
    print("|---|" + "---:|" * (args.rounds + 2))
    labels = {
        "batched": (f"serve, --max-batch-size {args.batch_size} (req/s)", "1.00"),
        "unbatched": ("serve, --max-batch-size 1 (req/s)", f"batched = {vs_unbatched:.2f}x this (goal >= 1.5x)"),
        "predict": (
            f"predict(batch_size={args.batch_size}), in-process (img/s)",
            f"batched = {vs_predict:.0%} of this (goal >= 80 %)",
        ),
    }
    for key, (label, ratio) in labels.items():
        values = " | ".join(f"{v:.2f}" for v in rows[key])
        print(f"| {label} | {values} | {statistics.median(rows[key]):.2f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
