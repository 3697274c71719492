"""A tiny Hugging Face Hub look-alike on 127.0.0.1, for tests.

It serves the endpoints huggingface_hub's ``hf_hub_download`` and ``HfApi.model_info`` use:

* ``HEAD|GET /{owner}/{repo}/resolve/{revision}/{filename}`` with the ``X-Repo-Commit``,
  ``ETag`` (the file's SHA-256, as the Hub gives for LFS files) and ``Content-Length`` headers,
  and byte ranges for resumed downloads;
* ``GET /api/models/{owner}/{repo}[/revision/{revision}]`` with the files' LFS metadata;
* ``GET /files/{name}`` for plain URL downloads.

Faults can be switched on per path: ``"404"``, ``"500"``, ``"drop"`` (close the connection
half-way through the body) and ``"slow"`` (wait before answering). Every request is logged, so a
test can assert that a load made no network call. The server stops itself when the test's
``with`` block ends.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HubServer:
    def __init__(self, slow_seconds: float = 5.0):
        self.repos: dict[str, dict[str, bytes]] = {}  # repo_id → {filename: content}
        self.files: dict[str, bytes] = {}  # plain URL downloads
        self.commits: dict[str, str] = {}
        self.faults: dict[str, str] = {}  # path substring → fault
        self.requests: list[tuple[str, str]] = []
        self.slow_seconds = slow_seconds
        self._server: ThreadingHTTPServer | None = None

    # -- content -------------------------------------------------------------------------------

    def add_file(self, repo_id: str, filename: str, content: bytes) -> None:
        self.repos.setdefault(repo_id, {})[filename] = content
        # a stand-in commit id for this test server's repo (not a real Hub commit)
        self.commits[repo_id] = hashlib.sha1(repo_id.encode() + b"".join(self.repos[repo_id].values())).hexdigest()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- lifecycle ------------------------------------------------------------------------------

    def __enter__(self) -> HubServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_HEAD(self):
                hub._handle(self, head=True)

            def do_GET(self):
                hub._handle(self, head=False)

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request, client_address):  # a client that gave up (timeouts, drops)
                if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                    super().handle_error(request, client_address)

        self._server = Server(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # -- requests -------------------------------------------------------------------------------

    def _fault(self, path: str) -> str | None:
        return next((f for key, f in self.faults.items() if key in path), None)

    def _handle(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?")[0]
        self.requests.append((h.command, path))
        fault = self._fault(path)
        if fault == "slow":
            time.sleep(self.slow_seconds)
        if fault in ("404", "500"):
            return self._send(h, int(fault), b'{"error": "injected"}', {"Content-Type": "application/json"}, head)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/([^/]+))?", path):
            return self._model_info(h, m.group(1), head)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            repo_id, revision, filename = m.groups()
            content = self.repos.get(repo_id, {}).get(filename)
            if content is None:
                code = 404 if repo_id in self.repos else 401  # the Hub answers 401 for unknown repos
                headers = {"X-Error-Code": "EntryNotFound" if code == 404 else "RepoNotFound"}
                return self._send(h, code, b"not found", headers, head)
            if revision not in ("main", self.commits[repo_id]):
                return self._send(h, 404, b"no such revision", {"X-Error-Code": "RevisionNotFound"}, head)
            headers = {
                "X-Repo-Commit": self.commits[repo_id],
                "ETag": f'"{hashlib.sha256(content).hexdigest()}"',
                "Accept-Ranges": "bytes",
            }
            return self._send_content(h, content, headers, head, fault)
        if m := re.fullmatch(r"/files/(.+)", path):
            content = self.files.get(m.group(1))
            if content is None:
                return self._send(h, 404, b"not found", {}, head)
            return self._send_content(h, content, {}, head, fault)
        return self._send(h, 404, b"not found", {}, head)

    def _model_info(self, h: BaseHTTPRequestHandler, repo_id: str, head: bool) -> None:
        if repo_id not in self.repos:
            return self._send(h, 401, b"{}", {"X-Error-Code": "RepoNotFound"}, head)
        siblings = [
            {
                "rfilename": name,
                "size": len(content),
                "blobId": hashlib.sha1(content).hexdigest(),
                "lfs": {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content), "pointerSize": 134},
            }
            for name, content in self.repos[repo_id].items()
        ]
        body = json.dumps({"id": repo_id, "modelId": repo_id, "sha": self.commits[repo_id], "siblings": siblings})
        self._send(h, 200, body.encode(), {"Content-Type": "application/json"}, head)

    def _send_content(self, h, content: bytes, headers: dict, head: bool, fault: str | None) -> None:
        start = 0
        if (rng := h.headers.get("Range")) and (m := re.fullmatch(r"bytes=(\d+)-", rng)):
            start = int(m.group(1))
            headers = {**headers, "Content-Range": f"bytes {start}-{len(content) - 1}/{len(content)}"}
        body = content[start:]
        if fault == "drop" and not head:
            h.send_response(200 if start == 0 else 206)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            return
        self._send(h, 200 if start == 0 else 206, body, headers, head)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, body: bytes, headers: dict, head: bool) -> None:
        h.send_response(code)
        for k, v in {**headers, "Content-Length": str(len(body))}.items():
            h.send_header(k, v)
        h.end_headers()
        if not head:
            h.wfile.write(body)
