"""``tinyvit serve``: an image-classification HTTP server on LitServe (the ``tinyvit[serve]`` extra).

LitServe gives the server its dynamic batching, worker processes per device and health endpoint;
tinyvit gives it the model, the preprocessing and the labels, through the same code as
:func:`tinyvit.predict`, so a served model answers exactly what ``predict`` answers.

* ``POST /predict``: the image bytes as the body (``image/*``, ``application/octet-stream`` or any
  other non-JSON type, ``?top_k=N`` optional), or JSON ``{"inputs": "<base64>", "parameters":
  {"top_k": 5}}``. The answer is the Hugging Face image-classification format:
  ``[{"label": "...", "score": 0.93}, ...]``, highest score first. A body that is not a readable
  image gives 400 with the reason, a body over ``max_body_bytes`` gives 413; errors are
  ``{"detail": "..."}``.
* ``GET /health``: 200 ``ok`` once the workers have loaded the model (503 before);
  ``GET /info``: the model record and the server settings.

Requests that arrive together are batched, up to ``max_batch_size`` per forward pass, waiting at
most ``batch_timeout`` seconds for a batch to fill. Bodies are read and checked in the HTTP
process; decoding and preprocessing run per request in the inference worker (``decode_request``),
where an unreadable image becomes that request's 400 without failing the rest of its batch.

    python -m tinyvit.serve vit-base-p32-384 --port 8000 --max-batch-size 8
"""

# No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation
# at runtime to build the endpoint, so it must be a real object, not a string.

import argparse
import base64
import binascii
import json
import logging
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, fields
from typing import Annotated, Any

from tinyvit.api import load, resolve_preprocess
from tinyvit.errors import ImageError, TinyViTError
from tinyvit.pipeline import class_names
from tinyvit.preprocessing import preprocess_one


class ServeExtraMissing(TinyViTError, ImportError):
    """LitServe (the ``tinyvit[serve]`` extra) is not installed."""


try:
    import litserve as ls
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ServeExtraMissing(f'tinyvit serve needs LitServe ({_e}): pip install "tinyvit[serve]"') from _e

__all__ = ["ServeExtraMissing", "ServeOptions", "TinyViTAPI", "build_server", "main", "run"]

logger = logging.getLogger(__name__)

HOSTS = ("127.0.0.1", "0.0.0.0", "::")  # what LitServe can bind
_LIMIT_STATE = "tinyvit_max_body_bytes"  # FastAPI app.state attribute holding the body limit


@dataclass(frozen=True)
class ServeOptions:
    """How ``tinyvit serve`` runs: where it listens, how it batches, what it accepts.

    ``batch_timeout``: seconds a worker waits for a batch to fill before running what it has.
    ``accelerator``: ``"auto"`` (CUDA or MPS when torch can use them, else CPU), ``"cpu"``,
    ``"cuda"`` or ``"mps"``; ``devices``: how many (``"auto"``: all); ``workers_per_device``:
    inference processes per device, each with its own copy of the model. ``dtype``: ``None``
    (float32), ``"float16"`` or ``"bfloat16"``. ``top_k``: results per image unless a request asks
    otherwise. ``timeout``: seconds a request may wait for its answer (then 504).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    max_batch_size: int = 8
    batch_timeout: float = 0.01
    max_body_bytes: int = 32 * 2**20
    workers_per_device: int = 1
    accelerator: str = "auto"
    devices: int | str = "auto"
    dtype: str | None = None
    top_k: int = 5
    timeout: float = 30.0
    log_level: str = "warning"

    def __post_init__(self) -> None:
        def positive_int(name: str, low: int = 1) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"ServeOptions.{name} must be an int >= {low}, got {value!r}")

        if self.host not in HOSTS:
            raise ValueError(
                f"ServeOptions.host must be one of {', '.join(HOSTS)} (what LitServe binds), got {self.host!r}"
            )
        if not isinstance(self.port, int) or not 1024 <= self.port <= 65535:
            raise ValueError(f"ServeOptions.port must be from 1024 to 65535 (LitServe's range), got {self.port!r}")
        for name in ("max_batch_size", "max_body_bytes", "workers_per_device", "top_k"):
            positive_int(name)
        if not self.timeout > 0 or not 0 <= self.batch_timeout < self.timeout:
            raise ValueError("ServeOptions: need timeout > 0 and 0 <= batch_timeout < timeout")
        if self.accelerator not in ("auto", "cpu", "cuda", "mps"):
            raise ValueError(f"ServeOptions.accelerator must be auto, cpu, cuda or mps, got {self.accelerator!r}")
        if self.devices != "auto":
            positive_int("devices")
        if self.dtype not in (None, "float32", "float16", "bfloat16"):
            raise ValueError(f"ServeOptions.dtype must be None, float32, float16 or bfloat16, got {self.dtype!r}")


# ---------------------------------------------------------------------------------------------
# The one place serve reaches into tinyvit: load, preprocess, label, describe.


@dataclass
class _Pipeline:
    model: Any  # tinyvit.VisionTransformer, eval mode
    preprocess: Any  # image bytes -> (3, H, W) float32 tensor; raises ImageError
    labels: list[str]  # one per output class
    record: dict  # the weights record, JSON-ready (GET /info)
    about: str  # the same for people, a few lines (the startup banner)


def _pipeline(spec: str, device: str | None = None, dtype: str | None = None) -> _Pipeline:
    """The model with its own preprocessing and class names, exactly as :func:`tinyvit.predict`
    uses them: ``load`` → the record's preprocessing → ``preprocess_one`` per image, and
    ``class_names`` for the labels."""
    model = load(spec, device=device, dtype=dtype)
    pre = resolve_preprocess(model)
    record = model.weights
    about = record.describe() if record is not None else spec
    return _Pipeline(
        model, lambda data: preprocess_one(data, pre), class_names(model), record.to_dict() if record else {}, about
    )


# ---------------------------------------------------------------------------------------------
# The HTTP side: read and check a request body (runs in LitServe's API server process)


async def read_payload(request: Request) -> dict:
    """The request body as ``{"image": bytes, "top_k": int | None}``, or an HTTP error: 413 when
    it is over the limit (by Content-Length before reading, and by what actually arrives), 400
    when it is empty or a malformed JSON request."""
    limit = getattr(request.app.state, _LIMIT_STATE, ServeOptions.max_body_bytes)
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPException(400, f"invalid Content-Length {declared!r}")
        if int(declared) > limit:
            raise HTTPException(413, f"the request body ({int(declared)} bytes) is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return _parse_json(body)
    if not body:
        raise HTTPException(400, 'empty request body: send the image bytes, or JSON {"inputs": "<base64 image>"}')
    top_k = request.query_params.get("top_k")
    if top_k is not None:
        if not top_k.isdigit() or int(top_k) < 1:
            raise HTTPException(400, f"top_k must be an integer >= 1, got {top_k!r}")
        top_k = int(top_k)
    return {"image": body, "top_k": top_k}


def _parse_json(body: bytes) -> dict:
    usage = 'expected JSON {"inputs": "<base64 image>", "parameters": {"top_k": 5}}'
    try:
        doc = json.loads(body)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPException(400, f"the body is not valid JSON ({e}); {usage}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), str):
        raise HTTPException(400, usage)
    unknown = sorted(set(doc) - {"inputs", "parameters"})
    params = doc.get("parameters") or {}
    if unknown or not isinstance(params, dict) or set(params) - {"top_k"}:
        raise HTTPException(400, f"unknown fields ({', '.join(unknown) or 'in parameters'}); {usage}")
    top_k = params.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise HTTPException(400, f"parameters.top_k must be an integer >= 1, got {top_k!r}")
    text = doc["inputs"]
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:
        image = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "inputs is not valid base64") from None
    if not image:
        raise HTTPException(400, "inputs is empty: it must be the base64 of an image file")
    return {"image": image, "top_k": top_k}


# ---------------------------------------------------------------------------------------------
# The inference side (runs in LitServe's worker processes)


@dataclass
class _Rejected:
    """A request that failed on its own (unreadable image): answered with ``status`` and
    ``detail`` while the rest of its batch goes on."""

    status: int
    detail: str


@dataclass
class _Item:
    tensor: Any  # (3, H, W) float32 after decode_request; (num_classes,) probabilities after predict
    top_k: int


class TinyViTAPI(ls.LitAPI):
    """LitServe's API for a tinyvit image classifier: ``model_spec`` is anything
    :func:`tinyvit.load` takes (a zoo name, ``"name:tag"``, a weights file, ``"hf-hub:..."``)."""

    def __init__(self, model_spec: str, options: ServeOptions | None = None):
        options = options or ServeOptions()
        super().__init__(max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout)
        self.model_spec = str(model_spec)
        self.options = options
        self.pipeline: _Pipeline | None = None

    def setup(self, device):
        import torch

        if str(device).startswith("cpu") and self.options.workers_per_device > 1:  # share the cores, not contend
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.options.workers_per_device))
        self.pipeline = _pipeline(self.model_spec, device=device, dtype=self.options.dtype)

    def decode_request(self, request: Annotated[dict, Depends(read_payload)]):
        # LitServe hands the payload from ``read_payload`` over unchanged (its annotation is not
        # ``Request``), so raw bodies arrive as bytes. Errors are returned, never raised: an
        # exception here would fail every request of the batch.
        top_k = request["top_k"] or self.options.top_k
        try:
            return _Item(self.pipeline.preprocess(request["image"]), top_k)
        except ImageError as e:
            return _Rejected(400, str(e))
        except Exception as e:  # a bug, not a bad image: this request gets the 500, the batch goes on
            logger.exception("preprocessing failed")
            return _Rejected(500, f"preprocessing failed: {type(e).__name__}")

    def predict(self, x):
        import torch

        items = x if isinstance(x, list) else [x]
        ok = [item for item in items if isinstance(item, _Item)]
        if ok:
            param = next(self.pipeline.model.parameters())
            batch = torch.stack([item.tensor for item in ok]).to(device=param.device, dtype=param.dtype)
            with torch.inference_mode():
                probs = self.pipeline.model(batch).float().softmax(dim=-1).cpu()
            for item, p in zip(ok, probs, strict=True):
                item.tensor = p
        return items if isinstance(x, list) else items[0]

    def encode_response(self, output):
        if isinstance(output, _Rejected):
            return JSONResponse(status_code=output.status, content={"detail": output.detail})
        labels = self.pipeline.labels
        top_p, top_i = output.tensor.topk(min(output.top_k, len(labels)))
        return [{"label": labels[i], "score": p} for i, p in zip(top_i.tolist(), top_p.tolist(), strict=True)]


# ---------------------------------------------------------------------------------------------
# Building and running the server


def _accelerator(name: str) -> str:
    if name != "auto":
        return name
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else "cpu"


def build_server(model_spec: str | os.PathLike, *, options: ServeOptions | None = None) -> "ls.LitServer":
    """A LitServer for ``model_spec`` (not started: call :func:`run`, or ``server.run(...)``).

    The model is loaded once here, so a bad spec fails now with tinyvit's error (and a zoo
    weight is downloaded once, not by every worker); the workers load it again in ``setup``.
    """
    options = options or ServeOptions()
    spec = os.fspath(model_spec)
    pipeline = _pipeline(spec)
    accelerator = _accelerator(options.accelerator)
    server = ls.LitServer(
        TinyViTAPI(spec, options),
        accelerator=accelerator,
        devices=1 if accelerator == "cpu" else options.devices,
        workers_per_device=options.workers_per_device,
        timeout=options.timeout,
        model_metadata=pipeline.record,
    )
    setattr(server.app.state, _LIMIT_STATE, options.max_body_bytes)
    server.tinyvit_about = pipeline.about
    return server


def banner(server: "ls.LitServer", options: ServeOptions) -> str:
    """What ``tinyvit serve`` prints at startup: where it listens, the model record, how it batches."""
    host = f"[{options.host}]" if ":" in options.host else options.host
    workers = server.workers_per_device * len(server.devices)
    devices = ", ".join(d if isinstance(d, str) else "+".join(d) for d in server.devices)  # cuda: [["cuda:0"], ...]
    about = "\n".join("  " + line for line in getattr(server, "tinyvit_about", "").splitlines())
    return (
        f"tinyvit serve: http://{host}:{options.port}  (POST /predict, GET /health, GET /info)\n{about}\n"
        f"  batching:      up to {options.max_batch_size} requests per forward pass, waiting at most "
        f"{options.batch_timeout * 1000:g} ms; {workers} worker(s) on {devices}; "
        f"bodies up to {options.max_body_bytes} bytes"
    )


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise TinyViTError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(model_spec: str | os.PathLike, options: ServeOptions | None = None) -> None:
    """Serve ``model_spec`` until interrupted (Ctrl+C or SIGTERM), then stop the workers."""
    options = options or ServeOptions()
    _check_port_free(options.host, options.port)
    server = build_server(model_spec, options=options)
    print(banner(server, options), flush=True)
    previous = None
    if threading.current_thread() is threading.main_thread():  # SIGTERM: the same clean shutdown as Ctrl+C
        main_pid = os.getpid()

        def interrupt(signum, frame):
            if os.getpid() == main_pid:
                raise KeyboardInterrupt
            signal.signal(signum, signal.SIG_DFL)  # a forked child (uvicorn, the queue manager): die as usual
            signal.raise_signal(signum)

        previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        server.run(
            host=options.host,
            port=options.port,
            log_level=options.log_level,
            generate_client_file=False,
            access_log=False,
        )
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``tinyvit serve``'s arguments, defaults from :class:`ServeOptions`."""
    d = ServeOptions()
    parser.add_argument("model", help="zoo name, name:tag, tinyvit weights file or hf-hub:owner/repo")
    parser.add_argument("--host", default=d.host, choices=HOSTS, help="interface to bind (default %(default)s)")
    parser.add_argument("--port", type=int, default=d.port, help="default %(default)s")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="default %(default)s")
    parser.add_argument(
        "--batch-timeout", type=float, default=d.batch_timeout, help="seconds to fill a batch (default %(default)s)"
    )
    parser.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="larger bodies get 413")
    parser.add_argument("--workers-per-device", type=int, default=d.workers_per_device, help="default %(default)s")
    parser.add_argument("--accelerator", default=d.accelerator, choices=("auto", "cpu", "cuda", "mps"))
    parser.add_argument("--devices", default=d.devices, help="how many devices (default: all)")
    parser.add_argument("--dtype", default=d.dtype, choices=("float32", "float16", "bfloat16"))
    parser.add_argument("--top-k", type=int, default=d.top_k, help="results per image (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request (default %(default)s)")
    parser.add_argument("--log-level", default=d.log_level, choices=("critical", "error", "warning", "info", "debug"))


def options_from_args(args: argparse.Namespace) -> ServeOptions:
    devices = args.devices if args.devices == "auto" else int(args.devices)
    keys = [f.name for f in fields(ServeOptions) if f.name != "devices"]
    return ServeOptions(devices=devices, **{k: getattr(args, k) for k in keys})


def main(argv: list[str] | None = None) -> int:
    """``python -m tinyvit.serve MODEL [options]``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="tinyvit serve", description="Serve an image classifier over HTTP.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options = options_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    try:
        run(args.model, options)
    except TinyViTError as e:
        print(f"tinyvit serve: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # run the imported module's main, so that workers unpickle tinyvit.serve's classes
    from tinyvit.serve import main as _main

    sys.exit(_main())
