"""A web application served as a subprocess (uvicorn, Django's runserver) beside the real
daemon, for the tests that drive the framework examples over HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import ROOT, clone_template, drop_database, eventually, with_database
from tests.e2e.harness import DaemonProcess, close_connections, stop_all


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def example_env(**extra: str) -> dict[str, str]:
    """This environment with the checkout importable and `extra` set."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class ExampleDaemon(DaemonProcess):
    """The daemon, with the example's own environment variables besides its config."""

    def __init__(self, db_url: str, app: str, log_path: Path, extra: dict[str, str]) -> None:
        super().__init__(db_url, app, log_path, workers=1)
        self.extra = extra

    def env(self) -> dict[str, str]:
        return super().env() | self.extra


class WebServer:
    """`args` (a command serving HTTP on 127.0.0.1:`port`) as a subprocess in a session of
    its own, its output in `log_path`."""

    def __init__(self, args: list[str], port: int, env: dict[str, str], log_path: Path) -> None:
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                args,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_answering(self, path: str, timeout: float = 30.0) -> None:
        """Until any HTTP answer to GET `path` comes back (the server is up)."""

        def answering() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                httpx.get(self.base_url + path, timeout=1)
            except httpx.TransportError:
                return False
            return True

        eventually(answering, timeout=timeout, what=f"{self.base_url} answering")

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def python(*args: Any) -> list[str]:
    return [sys.executable, *map(str, args)]


@dataclass(frozen=True)
class ExampleSite:
    url: str  # the test database both serve
    web: WebServer
    http: httpx.Client


@contextmanager
def serve_example(
    server_url: str,
    template_name: str,
    logs: Path,
    *,
    app: str,
    server: Callable[[int], list[str]],
    probe: str,
    extra: Callable[[str, int], dict[str, str]],
    setup: Sequence[list[str]] = (),
) -> Iterator[ExampleSite]:
    """An example served on a database of its own: the daemon serving `app`, the commands of
    `setup`, then the web server `server(port)` answering `probe`; both see `extra(url,
    port)` in their environment. On the way out: the daemon still ran, logged no problem, and
    the web server printed no traceback."""
    name = clone_template(server_url, template_name)
    url = with_database(server_url, name)
    port = free_port()
    settings = extra(url, port)
    env = example_env(ORCHESTRATOR_DATABASE_URL=url, **settings)
    daemon = ExampleDaemon(url, app, logs / "daemon.log", settings)
    web: WebServer | None = None
    try:
        daemon.start(wait=False)
        for command in setup:
            subprocess.run(command, env=env, check=True, capture_output=True, timeout=60)
        web = WebServer(server(port), port, env, logs / "web.log")
        web.wait_answering(probe)
        daemon.wait_serving()
        with web.client() as http:
            yield ExampleSite(url, web, http)
        assert daemon.proc is not None and daemon.proc.poll() is None, daemon.logs()
        assert not daemon.problems(), daemon.logs()
        assert "Traceback" not in web.logs(), web.logs()
    finally:
        if web is not None:
            web.stop()
        stop_all([daemon])
        close_connections()
        drop_database(server_url, name)
