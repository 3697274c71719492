"""LitServe's private details that ``tinyvit serve`` relies on, one test per hook of
:class:`tinyvit.deploy._litserve.HookedLitServer`, named after it: a LitServe release that changes
one fails its test by name (never a skip). What the hooks achieve end to end — Ctrl-C, a killed
worker answered at once, no process left — is tested in test_serve.py."""

from __future__ import annotations

import asyncio
import inspect
import signal
from multiprocessing.process import BaseProcess

import litserve as ls  # noqa: E402  (the test extra installs the serve extra: a broken one fails, never skips)
import pytest
from fastapi import HTTPException  # noqa: E402
from litserve.server import RegularRequestHandler  # noqa: E402
from litserve.utils import LitAPIStatus, ResponseBufferItem, WorkerSetupStatus  # noqa: E402

from tinyvit.deploy._litserve import HookedLitServer  # noqa: E402


class EchoAPI(ls.LitAPI):
    def setup(self, device):
        pass

    def predict(self, x):
        return x


@pytest.fixture
def server():
    return HookedLitServer(EchoAPI(), accelerator="cpu", devices=1)


def run_calls(name: str) -> bool:
    """Whether ``LitServer.run`` calls ``self.<name>(``."""
    return f"self.{name}(" in inspect.getsource(ls.LitServer.run)


def parameters(method) -> list[str]:
    return list(inspect.signature(method).parameters)


def test_hook_children_ignore_sigint(server, monkeypatch):
    """run starts the inference workers with launch_inference_worker(lit_api) and the API
    servers with _start_server(...): the hook makes both start their processes ignoring SIGINT."""
    assert run_calls("launch_inference_worker") and run_calls("_start_server")
    assert parameters(ls.LitServer.launch_inference_worker) == ["self", "lit_api"]
    seen = []
    monkeypatch.setattr(ls.LitServer, "launch_inference_worker", lambda self, api: seen.append(signal.getsignal(2)))
    monkeypatch.setattr(ls.LitServer, "_start_server", lambda self, *a, **k: seen.append(signal.getsignal(2)) or {})
    before = signal.getsignal(signal.SIGINT)
    server.launch_inference_worker(server.lit_api)
    server._start_server(8000, 1, "warning", [], "process")
    assert seen == [signal.SIG_IGN, signal.SIG_IGN] and signal.getsignal(signal.SIGINT) == before


def test_hook_on_api_servers(server, monkeypatch):
    """_start_server(port, num_uvicorn_servers, log_level, sockets, uvicorn_worker_type, **kwargs)
    returns {index: process}: the hook hands the processes and the sockets to on_api_servers."""
    assert parameters(ls.LitServer._start_server) == [
        "self", "port", "num_uvicorn_servers", "log_level", "sockets", "uvicorn_worker_type", "kwargs",
    ]  # fmt: skip
    assert "return dict(enumerate(workers))" in inspect.getsource(ls.LitServer._start_server)
    proc = BaseProcess()
    monkeypatch.setattr(ls.LitServer, "_start_server", lambda self, *a, **k: {0: proc})
    got = []
    server.on_api_servers = lambda procs, sockets: got.append((procs, sockets))
    assert server._start_server(8000, 1, "warning", ["sock"], "process") == {0: proc}
    assert got == [([proc], ["sock"])]


def test_hook_start_supervision(server):
    """run calls _start_worker_monitoring(manager, uvicorn_workers) once everything is up: the hook
    replaces LitServe's monitor (and its restart_workers, refused) by start_supervision."""
    assert run_calls("_start_worker_monitoring")
    assert parameters(ls.LitServer._start_worker_monitoring) == ["self", "manager", "uvicorn_workers"]
    started = []
    server.start_supervision = lambda: started.append(True)
    server._start_worker_monitoring(None, {})
    assert started == [True]
    with pytest.raises(ValueError, match="restart_workers"):
        HookedLitServer(EchoAPI(), accelerator="cpu", restart_workers=True)


def test_hook_on_stopping(server, monkeypatch):
    """run ends in _perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason): the hook
    calls on_stopping first."""
    assert "self._perform_graceful_shutdown(" in inspect.getsource(ls.LitServer.run)
    assert parameters(ls.LitServer._perform_graceful_shutdown)[:3] == ["self", "manager", "uvicorn_workers"]
    calls = []
    monkeypatch.setattr(ls.LitServer, "_perform_graceful_shutdown", lambda self, *a, **k: calls.append("litserve"))
    server.on_stopping = lambda: calls.append("hook")
    server._perform_graceful_shutdown(None, {}, "normal")
    assert calls == ["hook", "litserve"]


def test_hook_wait_for_workers(server):
    """run calls verify_worker_status() after launching the inference workers, and serves once it
    returns: the hook is wait_for_workers."""
    source = inspect.getsource(ls.LitServer.run)
    assert source.index("self.launch_inference_worker(") < source.index("self.verify_worker_status()")
    assert source.index("self.verify_worker_status()") < source.index("self._start_server(")
    waited = []
    server.wait_for_workers = lambda: waited.append(True)
    server.verify_worker_status()
    assert waited == [True]


def test_hook_in_api_server(server):
    """Each API server runs lifespan(app) as its FastAPI lifespan, an async context manager: the
    hook runs in_api_server inside LitServe's own, and what it returns as the server stops."""
    assert server.app.router.lifespan_context.__func__ is type(server).lifespan
    events = []

    def entered(app):
        events.append(("in", app))
        return lambda: events.append(("out", app))

    server.in_api_server = entered
    server._transport = object()  # what LitServe's lifespan needs: its response queues

    async def serve_once():
        async with server.lifespan(server.app):
            events.append("serving")

    app = server.app
    app.response_queue_id = 0
    asyncio.run(serve_once())
    assert events == [("in", app), "serving", ("out", app)]


def test_hook_worker_processes_and_apis(server):
    """run keeps the inference worker processes in inference_workers; litapi_connector iterates
    over the LitAPI objects."""
    assert "self.inference_workers = []" in inspect.getsource(ls.LitServer.run)
    assert server.worker_processes() == []
    server.inference_workers = [BaseProcess()]
    assert server.worker_processes() == server.inference_workers
    assert server.apis() == [server.lit_api] and isinstance(server.lit_api, EchoAPI)


@pytest.fixture
def managed(server):
    """The server after LitServe's _init_manager (what run does first); its manager shut down after."""
    manager = server._init_manager(1)
    yield server, manager
    manager.shutdown()


def test_hook_worker_states(managed):
    """_init_manager makes workers_setup_status, a dict of WorkerSetupStatus values."""
    server, _ = managed
    assert all(hasattr(WorkerSetupStatus, name) for name in ("STARTING", "READY", "ERROR"))
    assert server.worker_states() == []
    server.workers_setup_status["predict_0"] = WorkerSetupStatus.READY
    assert server.worker_states() == [WorkerSetupStatus.READY]


def test_hook_request_shutdown(managed):
    """run waits on _shutdown_event (made by _init_manager); uvicorn_graceful_timeout is what it
    gives the API servers to finish."""
    server, _ = managed
    assert "self._shutdown_event.wait()" in inspect.getsource(ls.LitServer.run)
    assert "self.uvicorn_graceful_timeout" in inspect.getsource(ls.LitServer._perform_graceful_shutdown)
    assert not server._shutdown_event.is_set()
    server.request_shutdown(grace=5)
    assert server._shutdown_event.is_set() and server.uvicorn_graceful_timeout == 5


def test_hook_queue_manager(server):
    """transport_config.manager is the multiprocessing Manager of LitServe's queues, its process
    in _process."""
    assert server.queue_manager() == (None, None)
    manager = server._init_manager(1)
    try:
        got, process = server.queue_manager()
        assert got is manager and isinstance(process, BaseProcess) and process.is_alive()
    finally:
        manager.shutdown()
    assert not process.is_alive()


def test_hook_answer_waiting(server):
    """A request waits on response_buffer[uid] (a ResponseBufferItem: event, response); LitServe
    answers a (HTTPException, LitAPIStatus.ERROR) response with that HTTP error."""
    assert server.response_buffer == {}
    source = inspect.getsource(RegularRequestHandler.handle_request)
    assert "self.server.response_buffer[uid] = ResponseBufferItem(event)" in source
    assert "if status == LitAPIStatus.ERROR:" in source
    waiting, done = ResponseBufferItem(asyncio.Event()), ResponseBufferItem(asyncio.Event())
    done.event.set()
    server.response_buffer.update(a=waiting, b=done)
    gone = HTTPException(503, "the worker died")
    assert server.answer_waiting(gone) == 1
    assert waiting.event.is_set() and waiting.response == (gone, LitAPIStatus.ERROR) and done.response is None
    with pytest.raises(HTTPException) as answered:
        RegularRequestHandler._handle_error_response(gone)
    assert answered.value.status_code == 503


def test_alias_route(server):
    """``register_endpoints`` put one POST APIRoute at the LitAPI's api_path; its alias answers the
    same (here: the request reaches the same endpoint function)."""
    from fastapi.routing import APIRoute

    server.alias_route("/predict", "/")
    posts = {r.path: r for r in server.app.routes if isinstance(r, APIRoute) and "POST" in r.methods}
    assert posts["/"].endpoint is posts["/predict"].endpoint
    assert posts["/"].dependencies == posts["/predict"].dependencies
    with pytest.raises(RuntimeError, match="0 POST routes at /nowhere"):
        server.alias_route("/nowhere", "/x")
