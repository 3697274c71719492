"""``tinyvit serve``: an image classification or embedding HTTP server on LitServe (``tinyvit[serve]``).

LitServe gives the server its dynamic batching, worker processes per device and health endpoint;
tinyvit gives it the model, the preprocessing and the labels, through the same code as
:func:`tinyvit.predict`, so a served model answers exactly what ``predict`` answers.

* ``POST /predict``: the image bytes as the body (``image/*``, ``application/octet-stream`` or any
  other non-JSON type, ``?top_k=N`` optional), or JSON ``{"inputs": "<base64>", "parameters":
  {"top_k": 5}}``. The answer is the Hugging Face image-classification format:
  ``[{"label": "...", "score": 0.93}, ...]``, highest score first. A body that is not a readable
  image gives 400 with the reason, a body over ``max_body_bytes`` gives 413; errors are
  ``{"detail": "..."}``.
* ``POST /embed``, instead, for an image embedding model (DINOv2, CLIP and SigLIP towers): the same
  bodies; the answer is ``{"embedding": [...]}``, what :func:`tinyvit.embed` gives.
* ``GET /health``: 200 ``ok`` once the workers have loaded the model (503 before);
  ``GET /info``: the model record and the server settings.

Requests that arrive together are batched, up to ``max_batch_size`` per forward pass, waiting at
most ``batch_timeout`` seconds for a batch to fill. Bodies are read and checked in the HTTP
process; decoding and preprocessing run per request in the inference worker (``decode_request``),
where an unreadable image becomes that request's 400 without failing the rest of its batch. The
worker runs the images through the same :class:`~tinyvit.runner.Runner` as ``predict``; this
module only translates between HTTP and it.

    tinyvit serve vit-base-p32-384 --port 8000 --max-batch-size 8   (or python -m tinyvit.serve …)
"""

# No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation
# at runtime to build the endpoint, so it must be a real object, not a string.

import base64
import binascii
import json
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass
from typing import Annotated, Any

from tinyvit.errors import TinyViTError
from tinyvit.options import ServeOptions
from tinyvit.runner import ItemError, Runner, model_output
from tinyvit.runtime import model_for


class ServeExtraMissing(TinyViTError, ImportError):
    """LitServe (the ``tinyvit[serve]`` extra) is not installed."""


try:
    import litserve as ls
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ServeExtraMissing(f'tinyvit serve needs LitServe ({_e}): pip install "tinyvit[serve]"') from _e

__all__ = ["ServeExtraMissing", "ServeOptions", "TinyViTAPI", "build_server", "run"]

_LIMIT_STATE = "tinyvit_max_body_bytes"  # FastAPI app.state attribute holding the body limit


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
class _Item:
    decoded: Any  # (3, H, W) float32 tensor, or the ItemError saying why the image cannot be run
    top_k: int
    result: Any = None  # the Prediction, after predict


class TinyViTAPI(ls.LitAPI):
    """LitServe's API for a tinyvit model: ``model_spec`` is anything :func:`tinyvit.load` takes (a
    zoo name, ``"name:tag"``, a weights file, ``"hf-hub:..."``). ``task`` ``"classify"`` answers at
    ``/predict``, ``"embed"`` (image embedding models) at ``/embed``."""

    def __init__(self, model_spec: str, options: ServeOptions | None = None, task: str = "classify"):
        options = options or ServeOptions()
        path = "/embed" if task == "embed" else "/predict"
        super().__init__(max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout, api_path=path)
        self.model_spec = str(model_spec)
        self.options = options
        self.task = task
        self.runner: Runner | None = None

    def setup(self, device):
        import torch

        if str(device).startswith("cpu") and self.options.workers_per_device > 1:  # share the cores, not contend
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.options.workers_per_device))
        model = model_for(self.model_spec, device=device, dtype=self.options.dtype)
        self.runner = Runner(model, task=self.task, top_k=self.options.top_k)

    def decode_request(self, request: Annotated[dict, Depends(read_payload)]):
        # LitServe hands the payload from ``read_payload`` over unchanged (its annotation is not
        # ``Request``), so raw bodies arrive as bytes. The runner returns a bad image's error
        # instead of raising it: an exception here would fail every request of the batch.
        return _Item(self.runner.decode(request["image"]), request["top_k"] or self.options.top_k)

    def predict(self, x):
        items = x if isinstance(x, list) else [x]
        top_k = max(item.top_k for item in items) if self.task == "classify" else None
        results = self.runner.run_batch([item.decoded for item in items], [""] * len(items), top_k=top_k)
        for item, result in zip(items, results, strict=True):
            item.result = result
        return items if isinstance(x, list) else items[0]

    def encode_response(self, output):
        if isinstance(output.decoded, ItemError):
            status = 500 if output.decoded.internal else 400
            return JSONResponse(status_code=status, content={"detail": str(output.decoded)})
        if self.task == "embed":
            return {"embedding": output.result.vector.tolist()}
        return [{"label": name, "score": p} for _, name, p in output.result.topk[: output.top_k]]


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
    model = model_for(spec)
    record = model.weights
    accelerator = _accelerator(options.accelerator)
    api = TinyViTAPI(spec, options, task="embed" if model_output(model) == "embedding" else "classify")
    server = ls.LitServer(
        api,
        accelerator=accelerator,
        devices=1 if accelerator == "cpu" else options.devices,
        workers_per_device=options.workers_per_device,
        timeout=options.timeout,
        model_metadata=record.to_dict() if record is not None else {},
    )
    setattr(server.app.state, _LIMIT_STATE, options.max_body_bytes)
    server.tinyvit_about = record.describe() if record is not None else spec
    server.tinyvit_route = api.api_path
    return server


def banner(server: "ls.LitServer", options: ServeOptions) -> str:
    """What ``tinyvit serve`` prints at startup: where it listens, the model record, how it batches."""
    host = f"[{options.host}]" if ":" in options.host else options.host
    workers = server.workers_per_device * len(server.devices)
    devices = ", ".join(d if isinstance(d, str) else "+".join(d) for d in server.devices)  # cuda: [["cuda:0"], ...]
    about = "\n".join("  " + line for line in getattr(server, "tinyvit_about", "").splitlines())
    route = getattr(server, "tinyvit_route", "/predict")
    return (
        f"tinyvit serve: http://{host}:{options.port}  (POST {route}, GET /health, GET /info)\n{about}\n"
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


if __name__ == "__main__":  # `tinyvit serve`, through the imported module, so that workers unpickle its classes
    from tinyvit.cli import main as _main

    sys.exit(_main(["serve", *sys.argv[1:]]))
