"""``tinyvit serve``: an image classification or embedding HTTP server on LitServe (``tinyvit[serve]``).

LitServe gives the server its dynamic batching, worker processes per device and health endpoint;
tinyvit gives it the model, the preprocessing and the labels, through the same code as
:func:`tinyvit.predict`, so a served model answers exactly what ``predict`` answers (with the same
``labels`` and ``preprocess`` options, for checkpoints that do not say them).

* ``POST /predict``: the image bytes as the body (``image/*``, ``application/octet-stream`` or any
  other non-JSON type, ``?top_k=N`` optional), a ``multipart/form-data`` upload (its first file
  part: ``curl -F file=@img.jpg``), or JSON ``{"inputs": "<base64>", "parameters": {"top_k": 5}}``.
  The answer is the Hugging Face image-classification format: ``[{"label": "...", "score": 0.93},
  ...]``, highest score first. A body that is not a readable image gives 400 with the reason, a
  body over ``max_body_bytes`` gives 413; errors are ``{"detail": "..."}``.
* ``POST /embed``, instead, for an image embedding model (DINOv2, CLIP and SigLIP towers): the same
  bodies; the answer is ``{"embedding": [...]}``, what :func:`tinyvit.embed` gives.
* ``GET /health``: 200 ``ok`` once the workers have loaded the model, 503 before and after an
  inference worker died; ``GET /info``: the model record and the server settings.
* With an API key (``--api-key`` or ``TINYVIT_API_KEY``), every request but ``GET /health`` must
  send ``Authorization: Bearer <key>`` (as huggingface_hub's ``InferenceClient(token=...)`` does),
  else 401. Without a key the server listens on 127.0.0.1 only, unless ``--no-auth``.

Requests that arrive together are batched, up to ``max_batch_size`` per forward pass, waiting at
most ``batch_timeout`` seconds for a batch to fill. Bodies are read and checked in the HTTP
process; decoding and preprocessing run per request in the inference worker (``decode_request``),
where an unreadable image becomes that request's 400 without failing the rest of its batch. The
worker runs the images through the same :class:`~tinyvit.run.runner.Runner` as ``predict``.

The processes are supervised (:class:`SupervisedServer`): Ctrl-C stops them all with one line; a
worker that dies (killed, out of memory) is noticed at once: every waiting and new request gets
503, and the server stops with one line and exit status 1, for its supervisor to restart it.

    tinyvit serve vit-base-p32-384 --port 8000 --max-batch-size 8   (or python -m tinyvit.serve …)
"""

# No ``from __future__ import annotations`` here: LitServe reads ``decode_request``'s annotation
# at runtime to build the endpoint, so it must be a real object, not a string.

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from email.message import Message
from email.parser import BytesHeaderParser
from multiprocessing.connection import wait as wait_for_any
from multiprocessing.process import BaseProcess
from typing import Annotated, Any

from tinyvit.core.errors import TinyViTError
from tinyvit.run.options import ServeOptions
from tinyvit.run.runner import ItemError, Runner, model_output
from tinyvit.run.runtime import model_for
from tinyvit.run.session import runner_for
from tinyvit.run.zeroshot import templates_of, text_encoder_for, zero_shot_head


class ServeExtraMissing(TinyViTError, ImportError):
    """LitServe (the ``tinyvit[serve]`` extra) is not installed."""


try:
    import litserve as ls
    from fastapi import Depends, HTTPException, Request
    from fastapi.responses import JSONResponse

    from tinyvit.deploy._litserve import HookedLitServer, WorkerSetupStatus
except ImportError as _e:  # pragma: no cover - depends on the environment
    raise ServeExtraMissing(f'tinyvit serve needs LitServe ({_e}): pip install "tinyvit[serve]"') from _e

__all__ = [
    "API_KEY_ENV", "BearerAuth", "ServeExtraMissing", "ServeOptions", "SupervisedServer", "TinyViTAPI", "build_server",
    "check_exposure", "key_digest", "run",
]  # fmt: skip

_LIMIT_STATE = "tinyvit_max_body_bytes"  # FastAPI app.state attribute holding the body limit
_UNAVAILABLE_STATE = "tinyvit_unavailable"  # app.state attribute: why requests get 503 (None: they do not)
WORKER_GONE = "the inference worker died; the server is stopping"
API_KEY_ENV = "TINYVIT_API_KEY"  # where run() finds the API key when it is not given
OPEN_PATHS = frozenset({"/health"})  # answered without the key: what load balancers and supervisors probe


# ---------------------------------------------------------------------------------------------
# The HTTP side: read and check a request body (runs in LitServe's API server process)


async def read_payload(request: Request) -> dict:
    """The request body as ``{"image": bytes, "top_k": int | None}``, or an HTTP error: 503 when
    no worker can answer, 413 when the body is over the limit (by Content-Length before reading,
    and by what actually arrives), 400 when it is empty or a malformed JSON or multipart request."""
    unavailable = getattr(request.app.state, _UNAVAILABLE_STATE, None)
    if unavailable:
        raise HTTPException(503, unavailable)
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
    header = request.headers.get("content-type", "")
    content_type = header.split(";")[0].strip().lower()
    if content_type == "application/json" or content_type.endswith("+json"):
        return _parse_json(body)
    if content_type == "multipart/form-data":
        body = _multipart_file(body, header)
    if not body:
        raise HTTPException(400, 'empty request body: send the image bytes, or JSON {"inputs": "<base64 image>"}')
    top_k = request.query_params.get("top_k")
    if top_k is not None:
        if not top_k.isdigit() or int(top_k) < 1:
            raise HTTPException(400, f"top_k must be an integer >= 1, got {top_k!r}")
        top_k = int(top_k)
    return {"image": body, "top_k": top_k}


def _parse_json(body: bytes) -> dict:
    """A JSON body in the Hugging Face formats: ``{"inputs": "<base64 image>", "parameters":
    {...}}`` — image classification (``top_k``), zero-shot (``candidate_labels``,
    ``hypothesis_template``: what ``InferenceClient.zero_shot_image_classification`` sends) — or
    ``{"inputs": ["text", ...]}`` (text embeddings: what ``InferenceClient.feature_extraction``
    sends for a list; a string is always an image)."""
    usage = 'expected JSON {"inputs": "<base64 image>", "parameters": {"top_k": 5}}'
    try:
        doc = json.loads(body)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise HTTPException(400, f"the body is not valid JSON ({e}); {usage}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), (str, list)):
        raise HTTPException(400, usage)
    unknown = sorted(set(doc) - {"inputs", "parameters"})
    params = doc.get("parameters") or {}
    known = {"top_k", "candidate_labels", "hypothesis_template", "normalize", "truncate", "truncation_direction",
             "prompt_name"}  # fmt: skip  (feature_extraction sends the last four; tinyvit's towers truncate)
    if unknown or not isinstance(params, dict) or set(params) - known:
        raise HTTPException(400, f"unknown fields ({', '.join(unknown) or 'in parameters'}); {usage}")
    top_k = params.get("top_k")
    if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
        raise HTTPException(400, f"parameters.top_k must be an integer >= 1, got {top_k!r}")
    inputs = doc["inputs"]  # a string is an image (base64); texts come as a list, even one
    if isinstance(inputs, list):
        return {"texts": _texts(inputs), "normalize": bool(params.get("normalize", False)), "top_k": None}
    return {"image": _base64_image(inputs), "top_k": top_k, **_zero_shot_params(params)}


def _texts(inputs: list) -> list[str]:
    if not inputs or not all(isinstance(t, str) for t in inputs):
        raise HTTPException(400, 'inputs: a list of texts to embed (["a red car", ...]), or a base64 image')
    return inputs


def _zero_shot_params(params: dict) -> dict:
    """``candidate_labels`` and ``hypothesis_template`` (transformers' pipeline's names), checked."""
    labels, template = params.get("candidate_labels"), params.get("hypothesis_template")
    if labels is None:
        if template is not None:
            raise HTTPException(400, "parameters.hypothesis_template goes with parameters.candidate_labels")
        return {}
    if isinstance(labels, str):
        labels = [label.strip() for label in labels.split(",")]
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x.strip() for x in labels):
        raise HTTPException(400, "parameters.candidate_labels: a list of class names")
    if template is not None and (not isinstance(template, str) or "{}" not in template):
        raise HTTPException(400, "parameters.hypothesis_template: a text with {} where the class name goes")
    return {"classes": tuple(labels), "template": template}


def _base64_image(text: str) -> bytes:
    if text.startswith("data:") and "," in text:  # a data URL: data:image/png;base64,....
        text = text.split(",", 1)[1]
    try:  # line breaks and spaces are left out: `base64` wraps its output at 76 columns
        image = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(400, "inputs is not valid base64") from None
    if not image:
        raise HTTPException(400, "inputs is empty: it must be the base64 of an image file")
    return image


def _multipart_file(body: bytes, content_type: str) -> bytes:
    """The content of the first file part (a part whose Content-Disposition has a ``filename``) of
    a ``multipart/form-data`` body: what ``curl -F file=@img.jpg``, HTML forms and most HTTP
    clients send."""
    header = Message()
    header["content-type"] = content_type
    boundary = header.get_boundary()
    if not boundary:
        raise HTTPException(400, "multipart/form-data without a boundary in its Content-Type")
    for part in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if part.startswith(b"--"):  # the closing delimiter
            break
        head, blank, content = part.partition(b"\r\n\r\n")
        if blank and BytesHeaderParser().parsebytes(head.lstrip(b"\r\n") + blank).get_filename() is not None:
            return content.removesuffix(b"\r\n")  # that line break belongs to the next delimiter
    raise HTTPException(
        400, 'the multipart/form-data body has no file part: send the image as a file field (curl -F "file=@img.jpg")'
    )


# ---------------------------------------------------------------------------------------------
# Authentication: a Bearer key on every path but /health (an ASGI middleware, LitServe's public hook)


def key_digest(api_key: str) -> bytes:
    """What the server keeps of the key: its SHA-256 (compared in constant time, never printed)."""
    return hashlib.sha256(api_key.encode("utf-8")).digest()


class BearerAuth:
    """ASGI middleware: a request must carry ``Authorization: Bearer <key>`` (what huggingface_hub's
    ``InferenceClient(token=...)`` and Inference Endpoints send), else it gets 401 before its body
    is read. ``GET /health`` stays open. The key is held as its SHA-256 digest, compared with
    :func:`hmac.compare_digest`: the time taken says nothing about the key."""

    def __init__(self, app, digest: bytes, open_paths: frozenset[str] = OPEN_PATHS):
        self.app = app
        self.digest = digest
        self.open_paths = open_paths

    def authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        values = [v for k, v in headers if k.lower() == b"authorization"]
        scheme, _, token = (values[0] if len(values) == 1 else b"").partition(b" ")
        match = hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self.digest)
        return match and scheme.lower() == b"bearer"

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.open_paths or self.authorized(scope["headers"]):
            await self.app(scope, receive, send)
            return
        detail = "missing or wrong API key: send the header 'Authorization: Bearer <key>'"
        await JSONResponse({"detail": detail}, 401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)


def check_exposure(host: str, api_key: str | None, no_auth: bool) -> None:
    """A server that other machines can reach needs a key, unless ``no_auth`` says it should be
    open (behind a proxy that authenticates, say); an empty key, or a key with ``no_auth``, is a
    mistake. Raises :class:`TinyViTError` in one line."""
    if api_key is not None and not api_key.strip():
        raise TinyViTError(f"the API key is empty: set {API_KEY_ENV} (or --api-key) to a secret")
    if api_key is not None and no_auth:
        raise TinyViTError("an API key and --no-auth were both given: choose one")
    if api_key is None and not no_auth and host != "127.0.0.1":
        raise TinyViTError(
            f"refusing to listen on {host} without an API key: anyone who reaches this machine could use the "
            f"model; set {API_KEY_ENV} (or --api-key), or pass --no-auth to serve it open"
        )


# ---------------------------------------------------------------------------------------------
# The inference side (runs in LitServe's worker processes)


@dataclass
class _Item:
    decoded: Any  # (3, H, W) float32 tensor, or the ItemError saying why the request cannot be run
    top_k: int
    classes: tuple[str, ...] | None = None  # zero-shot: the candidate labels, through the text tower
    template: str | None = None
    texts: list[str] | None = None  # a text embedding request instead of an image
    normalize: bool = False
    result: Any = None  # the Prediction or Embedding (a list of vectors for texts), after predict


class TinyViTAPI(ls.LitAPI):
    """LitServe's API for a tinyvit model: ``model_spec`` is anything :func:`tinyvit.load` takes (a
    zoo name, ``"name:tag"``, a weights file, ``"hf-hub:..."``), loaded with the options' dtype,
    labels and preprocessing. ``task`` ``"classify"`` answers at ``/predict``, ``"embed"`` (image
    embedding models) at ``/embed``."""

    def __init__(self, model_spec: str, options: ServeOptions | None = None, task: str = "classify"):
        options = options or ServeOptions()
        path = "/embed" if task == "embed" else "/predict"
        super().__init__(max_batch_size=options.max_batch_size, batch_timeout=options.batch_timeout, api_path=path)
        self.model_spec = str(model_spec)
        self.options = options
        self.task = task
        self.runner: Runner | None = None
        self.unavailable: str | None = None  # in an API server: why /health says 503

    def make_runner(self, device=None) -> Runner:
        """The runner of the model as the options state it, on ``device``."""
        return runner_for(self.model_spec, replace(self.options.model, device=device), task=self.task,
                          top_k=self.options.top_k)  # fmt: skip

    def setup(self, device):
        import torch

        if str(device).startswith("cpu") and self.options.workers_per_device > 1:  # share the cores, not contend
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.options.workers_per_device))
        self.runner = self.make_runner(device)

    def health(self) -> bool:
        return self.unavailable is None

    def decode_request(self, request: Annotated[dict, Depends(read_payload)]):
        # LitServe hands the payload from ``read_payload`` over unchanged (its annotation is not
        # ``Request``), so raw bodies arrive as bytes. The runner returns a bad image's error
        # instead of raising it: an exception here would fail every request of the batch.
        if "texts" in request:
            return _Item(None, 0, texts=request["texts"], normalize=request["normalize"])
        classes = request.get("classes")
        top_k = request["top_k"] or (len(classes) if classes else self.options.top_k)
        return _Item(self.runner.decode(request["image"]), top_k, classes, request.get("template"))

    def predict(self, x):
        items = x if isinstance(x, list) else [x]
        groups: dict[tuple, list[_Item]] = {}
        for item in items:
            if item.texts is not None:
                self._embed_texts(item)
            else:
                groups.setdefault((item.classes, item.template), []).append(item)
        for (classes, template), group in groups.items():  # one forward pass per class set
            head = None if classes is None else self._head(group, classes, template)
            if classes is not None and head is None:
                continue
            top_k = max(item.top_k for item in group) if self.task == "classify" or head else None
            results = self.runner.run_batch([i.decoded for i in group], [""] * len(group), top_k=top_k, head=head)
            for item, result in zip(group, results, strict=True):
                item.result = result
        return items if isinstance(x, list) else items[0]

    def _text_encoder(self):
        """The model's text tower (loaded on the first request that needs it)."""
        if getattr(self, "_encoder", None) is None:
            device = str(self.runner.device)
            self._encoder = text_encoder_for(self.model_spec, replace(self.options.model, device=device))
        return self._encoder

    def _head(self, group: list[_Item], classes: tuple[str, ...], template: str | None):
        """The zero-shot head of a class set, or None with each item's 400 / 500 set."""
        try:
            return zero_shot_head(self._text_encoder(), classes, templates_of(template))
        except TinyViTError as e:
            error = ItemError("the request", str(e))
        except Exception as e:  # a bug, not a bad request: this group fails, the server goes on
            error = ItemError("the request", f"zero-shot classes failed: {type(e).__name__}", True, e)
        for item in group:
            item.decoded = error
        return None

    def _embed_texts(self, item: _Item) -> None:
        try:
            item.result = self._text_encoder()(item.texts, normalize=item.normalize)
        except TinyViTError as e:
            item.decoded = ItemError("the request", str(e))
        except Exception as e:  # a bug: this request fails, the others go on
            item.decoded = ItemError("the request", f"text embedding failed: {type(e).__name__}", True, e)

    def encode_response(self, output):
        if isinstance(output.decoded, ItemError):
            status = 500 if output.decoded.internal else 400
            return JSONResponse(status_code=status, content={"detail": str(output.decoded)})
        if output.texts is not None:
            return output.result.tolist()  # (N, E): what feature_extraction reads
        if self.task == "embed" and output.classes is None:
            return {"embedding": output.result.vector.tolist()}
        return [{"label": name, "score": p} for _, name, p in output.result.topk[: output.top_k]]


# ---------------------------------------------------------------------------------------------
# The processes: stopped together, and a dead one noticed at once


@contextmanager
def _signals(handler, *signums: int):
    """Within the block, ``handler`` for ``signums`` (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    return f"signal {-code}" if code < 0 else f"exit code {code}"


class SupervisedServer(HookedLitServer):
    """A LitServer whose processes are supervised, so that no request is left waiting:

    * the processes it starts ignore SIGINT: a terminal's Ctrl-C reaches the whole process group,
      and only this process decides how they stop (no traceback from each of them);
    * in each API server, an inference worker's exit is noticed at once (its process sentinel, a
      pipe that closes when it exits): the requests waiting and every new one get 503, and
      ``/health`` says 503;
    * in this process, a watchdog thread notices any child's exit that no stop asked for, prints
      one line, sets ``failure`` and stops the server (:func:`run` then returns 1), for its
      supervisor (systemd, Docker, Kubernetes) to restart it. LitServe's own monitor, which it
      replaces, polls every 2 s and cannot answer the requests held by the API servers.

    What it needs of LitServe beyond its public API goes through :class:`HookedLitServer`.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stopping = threading.Event()  # a stop was asked for: children exiting now are expected
        self.failure: str | None = None  # why the server stopped by itself
        self._api_servers: list[BaseProcess] = []

    def _children(self) -> list[tuple[str, BaseProcess]]:
        workers = [("inference worker", p) for p in self.worker_processes()]
        return workers + [("API server", p) for p in self._api_servers]

    # -- the hooks, in the order LitServe reaches them

    def wait_for_workers(self) -> None:
        """Wait until a worker is ready; one that fails or dies while loading fails the start
        (LitServe's own loop waits for ever on a worker that died)."""
        while WorkerSetupStatus.READY not in self.worker_states():
            dead = [p.exitcode for p in self.worker_processes() if not p.is_alive()]
            if any(dead):  # killed, or out of memory
                why = _exit_reason(next(code for code in dead if code))
                raise TinyViTError(f"the inference worker died while loading the model ({why})")
            if dead or WorkerSetupStatus.ERROR in self.worker_states():  # setup raised: logged
                raise TinyViTError("the inference worker failed to load the model; its error is above")
            time.sleep(0.05)

    def on_api_servers(self, processes: list[BaseProcess], sockets: list) -> None:
        self._api_servers = processes
        if processes:  # the API servers have their copies: once they stop, connections are refused
            for sock in sockets:
                sock.close()

    def start_supervision(self) -> None:
        threading.Thread(target=self._watch, name="tinyvit-watchdog", daemon=True).start()

    def on_stopping(self) -> None:
        self.stopping.set()

    def in_api_server(self, app) -> Callable[[], None]:
        return self._answer_503_once_a_worker_exits(app)

    # -- tinyvit's supervision

    def _watch(self) -> None:
        """The watchdog (this process): wait for any child to exit; unless a stop was asked for
        (a signal to the process group reaches the children too, sometimes first), say which and
        why, and stop the server."""
        children = {p.sentinel: (what, p) for what, p in self._children()}
        ready = wait_for_any(list(children))
        if self.stopping.wait(0.5):
            return
        what, proc = children[ready[0]]
        proc.join(1)
        self.failure = f"{what} died ({_exit_reason(proc.exitcode)}); stopping"
        print(f"tinyvit serve: {self.failure}", file=sys.stderr, flush=True)
        try:
            self.request_shutdown(grace=5)  # the API servers have answered what they held (503)
        except Exception:  # LitServe's queue manager is gone too: stop as on SIGTERM
            os.kill(os.getpid(), signal.SIGTERM)

    def _answer_503_once_a_worker_exits(self, app) -> Callable[[], None]:
        """In an API server: once an inference worker exits, every request waiting for one and
        every new one gets 503 at once, and /health 503. Returns what stops watching."""
        loop = asyncio.get_running_loop()
        sentinels = [p.sentinel for p in self.worker_processes()] if os.name == "posix" else []
        sweep: list[asyncio.TimerHandle] = []

        def answer_waiting() -> None:  # again until the end: a request may be past read_payload already
            self.answer_waiting(HTTPException(503, WORKER_GONE))
            sweep[:] = [loop.call_later(0.05, answer_waiting)]

        def exited() -> None:
            stop()
            setattr(app.state, _UNAVAILABLE_STATE, WORKER_GONE)
            for api in self.apis():
                api.unavailable = WORKER_GONE
            answer_waiting()

        def stop() -> None:
            for fd in sentinels:
                loop.remove_reader(fd)
            for handle in sweep:
                handle.cancel()

        for fd in sentinels:
            loop.add_reader(fd, exited)
        return stop

    def stop_processes(self) -> None:
        """Whatever is still running after LitServe's shutdown (or after a start that failed part
        way, or a second Ctrl-C): terminated, then killed; LitServe's queue manager shut down."""
        manager, manager_process = self.queue_manager()
        procs = [p for _, p in self._children()] + [manager_process]
        procs = [p for p in procs if p is not None and p.is_alive()]
        for p in procs:
            p.terminate()
        deadline = time.monotonic() + 5
        for p in procs:
            p.join(max(0.1, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(1)
        if manager is not None:
            manager.shutdown()


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


def _placement(options: ServeOptions) -> tuple[str, int | list[int]]:
    """LitServe's ``accelerator`` and ``devices`` for the options, checked before anything starts:
    a device that is not here fails now with one line (a :class:`TinyViTError`)."""
    import torch

    from tinyvit.run.runtime import parse_device

    if options.device is not None:
        device = parse_device(options.device)
        name, index = device.type, device.index
    else:
        name, index = _accelerator(options.accelerator), None
        if name != "cpu":
            parse_device(name)
    if name == "cpu":
        return "cpu", 1
    if index is not None:
        return name, [index]
    available = torch.cuda.device_count() if name == "cuda" else 1
    if options.devices == "auto":
        return name, available
    if options.devices > available:
        raise TinyViTError(f"{options.devices} {name} devices asked for, {available} available here")
    return name, options.devices


def build_server(
    model_spec: str | os.PathLike, *, options: ServeOptions | None = None, api_key: str | None = None
) -> SupervisedServer:
    """A LitServer for ``model_spec`` (not started: call :func:`run`, or ``server.run(...)``).

    The devices are checked and the model is loaded once here, with the runner the workers will
    build, so a bad spec, device or missing preprocessing fails now with tinyvit's error (and a zoo
    weight is downloaded once, not by every worker); the workers load it again in ``setup``.
    ``api_key``: every request but ``GET /health`` must send ``Authorization: Bearer <api_key>``
    (:class:`BearerAuth`); the key stays in this process and the API servers it forks, never in the
    inference workers, the banner or ``/info``.
    """
    options = options or ServeOptions()
    accelerator, devices = _placement(options)
    spec = os.fspath(model_spec)
    checked = replace(options.model, device=None, dtype=None, fast=False)
    model = model_for(spec, replace(checked, classes=None, templates=None))
    record = model.weights
    embeds = model_output(model) == "embedding" and options.model.classes is None  # classes: zero-shot, classified
    api = TinyViTAPI(spec, options, task="embed" if embeds else "classify")
    runner_for(spec, checked, task=api.task, top_k=options.top_k)  # what the workers' setup will do: refused now
    server = SupervisedServer(
        api,
        accelerator=accelerator,
        devices=devices,
        workers_per_device=options.workers_per_device,
        timeout=options.timeout,
        model_metadata=record.to_dict() if record is not None else {},
        middlewares=[(BearerAuth, {"digest": key_digest(api_key)})] if api_key is not None else None,
    )
    server.alias_route(api.api_path, "/")  # where Inference Endpoints' clients (InferenceClient(model=URL)) post
    setattr(server.app.state, _LIMIT_STATE, options.max_body_bytes)
    _add_route_hints(server, api)
    server.tinyvit_about = record.describe() if record is not None else spec
    server.tinyvit_route = api.api_path
    server.tinyvit_auth = api_key is not None
    return server


def _add_route_hints(server: SupervisedServer, api: TinyViTAPI) -> None:
    """The route a model does not serve (``/predict`` of an embedding model, ``/embed`` of a
    classifier) answers 404 with the route it does serve, instead of a bare ``Not Found``."""
    other, what = ("/predict", "classifiers") if api.task == "embed" else ("/embed", "image embedding models")
    kind = "an image embedding model" if api.task == "embed" else "a classifier"
    detail = f"this server runs {kind}: it answers at POST {api.api_path}; POST {other} is for {what}"

    async def not_here() -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": detail})

    server.app.add_api_route(other, not_here, methods=["POST"], include_in_schema=False)


def banner(server: "ls.LitServer", options: ServeOptions) -> str:
    """What ``tinyvit serve`` prints at startup: where it listens, the model record, how it batches."""
    host = f"[{options.host}]" if ":" in options.host else options.host
    workers = server.workers_per_device * len(server.devices)
    devices = ", ".join(d if isinstance(d, str) else "+".join(d) for d in server.devices)  # cuda: [["cuda:0"], ...]
    about = "\n".join("  " + line for line in getattr(server, "tinyvit_about", "").splitlines())
    route = getattr(server, "tinyvit_route", "/predict")
    if getattr(server, "tinyvit_auth", False):
        access = "an API key (Authorization: Bearer) on every request but GET /health"
    else:
        access = "no API key: " + ("loopback only" if options.host == "127.0.0.1" else "open to all (--no-auth)")
    return (
        f"tinyvit serve: http://{host}:{options.port}  (POST {route}, GET /health, GET /info)\n{about}\n"
        f"  batching:      up to {options.max_batch_size} requests per forward pass, waiting at most "
        f"{options.batch_timeout * 1000:g} ms; {workers} worker(s) on {devices}; "
        f"bodies up to {options.max_body_bytes} bytes\n"
        f"  access:        {access}"
    )


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise TinyViTError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def run(
    model_spec: str | os.PathLike, options: ServeOptions | None = None, *, api_key: str | None = None,
    no_auth: bool = False,
) -> int:  # fmt: skip
    """Serve ``model_spec`` until stopped, then stop every process the server started. Returns
    the exit status of ``tinyvit serve``: 130 after Ctrl-C (SIGINT), 0 after SIGTERM, 1 when a
    server process died (after printing one line that says which and how).

    ``api_key`` (default: the ``TINYVIT_API_KEY`` environment variable): the key every request
    but ``GET /health`` must send as ``Authorization: Bearer <key>``. Without one the server
    listens on 127.0.0.1 only, unless ``no_auth`` (see :func:`check_exposure`)."""
    options = options or ServeOptions()
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
    check_exposure(options.host, api_key, no_auth)
    _check_port_free(options.host, options.port)
    server = build_server(model_spec, options=options, api_key=api_key)
    print(banner(server, options), flush=True)
    received: list[int] = []
    main_pid = os.getpid()

    def interrupt(signum, frame):  # LitServe answers KeyboardInterrupt with its graceful shutdown
        if os.getpid() != main_pid:  # a forked child (LitServe's queue manager, an API server): die as usual
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        received.append(signum)
        server.stopping.set()
        raise KeyboardInterrupt

    with _signals(interrupt, signal.SIGINT, signal.SIGTERM):
        try:
            server.run(host=options.host, port=options.port, log_level=options.log_level,
                       generate_client_file=False, access_log=False)  # fmt: skip
        except KeyboardInterrupt:  # while the workers load, or a second Ctrl-C while stopping
            pass
        except Exception:
            if server.failure is None:
                raise
        finally:
            with _signals(signal.SIG_IGN, signal.SIGINT, signal.SIGTERM):
                server.stop_processes()
    if server.failure is not None:
        return 1
    print("tinyvit serve: stopped", file=sys.stderr, flush=True)
    return 130 if signal.SIGINT in received else 0

