"""Every use tinyvit makes of LitServe beyond its public API, in one place (written for litserve 0.2).

``tinyvit serve`` supervises LitServe's processes (:class:`tinyvit.serve.SupervisedServer`), which
LitServe's public API does not let it do. :class:`HookedLitServer` is a ``LitServer`` that turns
each private detail it relies on into one named hook; ``tests/test_litserve_hooks.py`` has one test
per hook, named after it, so a LitServe release that changes one fails that test by name.

The hooks, and the LitServe detail each relies on:

* ``children_ignore_sigint``: ``launch_inference_worker`` and ``_start_server`` start the
  inference workers and the API server processes (overridden, to start them ignoring SIGINT);
* ``on_api_servers``: ``_start_server`` returns ``{index: process}`` and the listening sockets
  it was given (overridden, to learn the API server processes);
* ``start_supervision``: ``run`` calls ``_start_worker_monitoring(manager, uvicorn_workers)``
  once everything is up (replaced: tinyvit's watchdog instead of LitServe's 2 s poll, which
  would also restart workers: ``restart_workers=True`` is refused here rather than ignored);
* ``wait_for_workers``: ``run`` calls ``verify_worker_status()`` after starting the inference
  workers, and goes on when it returns (overridden: LitServe's waits for ever on a dead worker);
* ``in_api_server``: each API server enters ``lifespan(app)`` (an async context manager) as it
  starts and leaves it as it stops (wrapped, to run code in the API servers);
* ``on_stopping``: ``run`` ends in ``_perform_graceful_shutdown`` (overridden, to know that
  children exiting from then on are expected);
* ``worker_processes`` and ``apis``: ``inference_workers`` (the processes ``run`` started) and
  ``litapi_connector`` (the ``LitAPI`` objects, in an API server);
* ``worker_states``: ``workers_setup_status``, a dict of ``WorkerSetupStatus``;
* ``answer_waiting``: ``response_buffer``, ``{uid: ResponseBufferItem(event, response)}``, whose
  ``response`` is ``(value, LitAPIStatus)``, an exception value answered as the error it is;
* ``request_shutdown``: ``_shutdown_event`` and ``uvicorn_graceful_timeout``;
* ``queue_manager``: ``transport_config.manager``, the ``multiprocessing.Manager`` (and its
  ``_process``) that holds LitServe's queues;
* ``alias_route``: ``__init__`` registers, through ``register_endpoints``, one FastAPI ``APIRoute``
  per ``LitAPI`` at its ``api_path`` (POST) on ``app``; the same endpoint, with its dependencies,
  then also answers at another path (``POST /``, where Inference Endpoints clients send).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from multiprocessing.process import BaseProcess
from typing import Any

import litserve as ls
from litserve.utils import LitAPIStatus, WorkerSetupStatus

__all__ = ["HookedLitServer", "WorkerSetupStatus", "ignoring_sigint"]


@contextmanager
def ignoring_sigint() -> Iterator[None]:
    """SIGINT ignored within the block, so processes started in it inherit that (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class HookedLitServer(ls.LitServer):
    """A ``LitServer`` whose private steps call named hooks; subclasses implement
    :meth:`wait_for_workers`, :meth:`on_api_servers`, :meth:`in_api_server`,
    :meth:`start_supervision` and :meth:`on_stopping`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if kwargs.get("restart_workers"):
            raise ValueError("restart_workers: tinyvit serve stops when a worker dies, for its supervisor to restart")
        super().__init__(*args, **kwargs)

    # -- hooks a subclass implements

    def wait_for_workers(self) -> None:
        """Return once an inference worker is ready to serve (LitServe's own wait, by default)."""
        super().verify_worker_status()

    def in_api_server(self, app: Any) -> Callable[[], None]:
        """Called in each API server as it starts; returns what to call as it stops."""
        return lambda: None

    def on_api_servers(self, processes: list[BaseProcess], sockets: list) -> None:
        """The API server processes have started, with their copies of ``sockets``."""

    def start_supervision(self) -> None:
        """Everything is up: start watching the processes (LitServe's own monitor does not run)."""

    def on_stopping(self) -> None:
        """The server is stopping: processes that exit now are expected to."""

    # -- LitServe's private steps, overridden

    def launch_inference_worker(self, lit_api: ls.LitAPI) -> list[BaseProcess]:
        with ignoring_sigint():  # inherited by the worker, through exec
            return super().launch_inference_worker(lit_api)

    def verify_worker_status(self) -> None:
        self.wait_for_workers()

    @asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        async with super().lifespan(app):
            leave = self.in_api_server(app)
            try:
                yield
            finally:
                leave()

    def _start_server(self, port, num_servers, log_level, sockets, worker_type, **kwargs):
        with ignoring_sigint():
            started = super()._start_server(port, num_servers, log_level, sockets, worker_type, **kwargs)
        self.on_api_servers([w for w in started.values() if isinstance(w, BaseProcess)], sockets)
        return started

    def _start_worker_monitoring(self, manager, uvicorn_workers) -> None:
        self.start_supervision()

    def _perform_graceful_shutdown(self, *args: Any, **kwargs: Any) -> None:
        self.on_stopping()
        super()._perform_graceful_shutdown(*args, **kwargs)

    # -- LitServe's private state, read and written

    def worker_processes(self) -> list[BaseProcess]:
        """The inference worker processes (none before ``run`` starts them)."""
        return list(getattr(self, "inference_workers", []))

    def apis(self) -> list[ls.LitAPI]:
        """The ``LitAPI`` objects this server serves."""
        return list(self.litapi_connector)

    def worker_states(self) -> list[WorkerSetupStatus]:
        """The setup state of each inference worker (``STARTING``, ``READY``, ``ERROR``…)."""
        return list(getattr(self, "workers_setup_status", {}).values())

    def answer_waiting(self, error: Exception) -> int:
        """Answer every request of this API server still waiting for a worker with ``error``;
        returns how many."""
        answered = 0
        for item in list(self.response_buffer.values()):
            if not item.event.is_set():
                item.response = (error, LitAPIStatus.ERROR)
                item.event.set()
                answered += 1
        return answered

    def request_shutdown(self, grace: float) -> None:
        """Make :meth:`run` stop, giving the API servers ``grace`` seconds to finish."""
        self.uvicorn_graceful_timeout = grace
        self._shutdown_event.set()

    def alias_route(self, path: str, alias: str) -> None:
        """Answer ``POST alias`` as ``POST path`` is answered: the same endpoint, dependencies and
        queue (a request sent to either is the same request)."""
        from fastapi.routing import APIRoute

        routes = [r for r in self.app.routes if isinstance(r, APIRoute) and r.path == path and "POST" in r.methods]
        if len(routes) != 1:
            raise RuntimeError(f"LitServe registered {len(routes)} POST routes at {path}, not one")
        route = routes[0]
        self.app.add_api_route(alias, route.endpoint, methods=["POST"], dependencies=route.dependencies)

    def queue_manager(self) -> tuple[Any, BaseProcess | None]:
        """LitServe's ``multiprocessing.Manager`` and its process (None, None before ``run``)."""
        manager = getattr(self.transport_config, "manager", None)
        return manager, getattr(manager, "_process", None)
