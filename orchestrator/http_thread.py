"""An ASGI app served by uvicorn on a thread of the daemon: the dashboard (`ui = true`) and
Inngest's gateway (`inngest = true`) both start one with the daemon and stop it with it.

The socket is bound when the server is made, before the daemon starts anything, so a taken
port is a ConfigError naming the configuration key rather than a thread dying later.
"""

from __future__ import annotations

import ipaddress
import socket
import threading
from collections.abc import Callable
from typing import Any, Self

import uvicorn

from orchestrator.errors import ConfigError


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ThreadedServer:
    """uvicorn serving `app` on a socket bound to host:port (`where` names the config key in
    errors); `on_close` runs when the server ends (to dispose of its databases)."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        where: str,
        name: str,
        on_close: Callable[[], None] = lambda: None,
    ) -> None:
        self.sock = bind(host, port, where)
        self.name = name
        self.on_close = on_close
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_config=None,  # the process's logging stays as configured
                log_level="warning",
                access_log=False,
                proxy_headers=False,
                server_header=False,
                lifespan="off",
            )
        )
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def run(self) -> None:
        try:
            self.server.run(sockets=[self.sock])
        finally:
            self.close()

    def start(self) -> Self:
        self.thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self.thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)

    def close(self) -> None:
        self.sock.close()
        self.on_close()


def bind(host: str, port: int, where: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without, a response's last segment waits for the
    # client's delayed ACK (about 40 ms on every request of a kept-alive connection)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"{where}: cannot listen on {host or '*'}:{port}: {exc.strerror}; "
            "choose another address or port"
        ) from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
