"""The daemon's optional HTTP listener (`http_address`): /metrics, /healthz and /readyz.

A standard-library `ThreadingHTTPServer` in a daemon thread. Handlers read only what the
daemon keeps in memory (counters, the last due-queue probe, the health timestamps), so a scrape
never touches the database and never waits on the scheduler. A failing request is logged and
answered 500; nothing a client does can stop the daemon.

- `GET /metrics`: OpenMetrics when the `Accept` header asks for `application/openmetrics-text`,
  else the Prometheus text format 0.0.4;
- `GET /healthz`: 200 while the scheduler loop turns, else 503;
- `GET /readyz`: 200 while the daemon serves and reached the database recently, else 503;
- anything else: 404. `HEAD` is answered like `GET`, without the body.
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from orchestrator.errors import ConfigError
from orchestrator.runtime.health import Health

_TEXT = "text/plain; charset=utf-8"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    endpoints: Endpoints

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can stall for seconds
        # where DNS is missing (containers); the name is never used here
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        self.endpoints.log.exception("http request failed", client=str(client_address))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = 10  # seconds a client may take to send its request
    server_version = "orchestrator"

    def do_GET(self) -> None:
        self._answer(body=True)

    def do_HEAD(self) -> None:
        self._answer(body=False)

    def _answer(self, *, body: bool) -> None:
        path = self.path.split("?", 1)[0]
        try:
            accept = self.headers.get("Accept", "")
            status, content_type, payload = self.server.endpoints.route(path, accept)
        except Exception:
            self.server.endpoints.log.exception("http endpoint failed", path=path)
            status, content_type, payload = 500, _TEXT, b"internal error; see the daemon's log\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # scrapes every few seconds would drown the log


Exposition = Callable[[str], tuple[bytes, str]]  # Accept header -> body, content type


class Endpoints:
    def __init__(
        self, address: tuple[str, int], *, metrics: Exposition, health: Health, log: Any
    ) -> None:
        self.address = address
        self.metrics = metrics
        self.health = health
        self.log = log
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; a ConfigError naming the address if it cannot be bound."""
        host, port = self.address
        try:
            family = socket.getaddrinfo(
                host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
            )[0][0]
            server_class = type("_Bound", (_Server,), {"address_family": family})
            server = server_class((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"http_address {_show(host, port)}: cannot listen ({exc.strerror or exc}); "
                'choose a free port and an address of this host, or set http_address = "" '
                "to turn the listener off"
            ) from None
        server.endpoints = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True
        )
        self._thread.start()
        self.log.info("http listening", address=_show(*self.bound()))

    def bound(self) -> tuple[str, int]:
        """The address actually bound (port 0 in the configuration picks a free one)."""
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def route(self, path: str, accept: str = "") -> tuple[int, str, bytes]:
        if path == "/metrics":
            body, content_type = self.metrics(accept)
            return 200, content_type, body
        if path == "/healthz":
            ok, why = self.health.live()
            return _text(200 if ok else 503, ("ok: " if ok else "unhealthy: ") + why)
        if path == "/readyz":
            ok, why = self.health.ready()
            return _text(200 if ok else 503, ("ready: " if ok else "not ready: ") + why)
        return _text(404, "not found; try /metrics, /healthz or /readyz")


def _text(status: int, line: str) -> tuple[int, str, bytes]:
    return status, _TEXT, (line + "\n").encode()


def _show(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
