"""The HTTP listener over a real socket, and the `http_address` key."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.config import load_config, parse_http_address
from orchestrator.errors import ConfigError
from orchestrator.runtime.endpoints import Endpoints
from orchestrator.runtime.health import Health

pytestmark = pytest.mark.timeout(30)


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, **fields: Any) -> None:
        self.lines.append(message)

    def exception(self, message: str, **fields: Any) -> None:
        self.lines.append(message)


def fetch(url: str, method: str = "GET", accept: str | None = None) -> tuple[int, str, str]:
    request = urllib.request.Request(url, method=method)
    if accept is not None:
        request.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        body = exc.read().decode()
        content_type = exc.headers["Content-Type"]
        exc.close()
        return exc.code, content_type, body


def _nothing(accept: str) -> tuple[bytes, str]:
    return b"", "text/plain; version=0.0.4; charset=utf-8"


@pytest.fixture
def served() -> Iterator[tuple[str, Health, dict[str, Any]]]:
    health = Health(tick_within=10, heartbeat_within=5)
    state: dict[str, Any] = {"metrics": "# HELP x X.\n# TYPE x gauge\nx 1\n", "accepts": []}

    def metrics(accept: str) -> tuple[bytes, str]:
        state["accepts"].append(accept)
        if state.get("fail"):
            raise RuntimeError("broken collector")
        return str(state["metrics"]).encode(), "text/plain; version=0.0.4; charset=utf-8"

    endpoints = Endpoints(("127.0.0.1", 0), metrics=metrics, health=health, log=_Log())
    endpoints.start()
    host, port = endpoints.bound()
    yield f"http://{host}:{port}", health, state
    endpoints.stop()


def test_endpoints__metrics_in_the_prometheus_text_format(served: Any) -> None:
    base, _, _ = served
    status, content_type, body = fetch(base + "/metrics")
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert body == "# HELP x X.\n# TYPE x gauge\nx 1\n"


def test_endpoints__metrics_get_the_accept_header(served: Any) -> None:
    base, _, state = served
    fetch(base + "/metrics", accept="application/openmetrics-text; version=1.0.0")
    fetch(base + "/metrics")
    assert state["accepts"][0] == "application/openmetrics-text; version=1.0.0"
    assert "openmetrics" not in state["accepts"][1]  # urllib's default, if any


def test_endpoints__health_follows_the_daemon(served: Any) -> None:
    base, health, _ = served
    assert fetch(base + "/healthz")[0] == 503
    status, _, body = fetch(base + "/readyz")
    assert (status, body) == (503, "not ready: starting: not taking work\n")
    health.ticked()
    health.serving()
    health.heartbeat_ok()
    status, content_type, body = fetch(base + "/healthz")
    assert status == 200 and body.startswith("ok: serving")
    assert content_type == "text/plain; charset=utf-8"
    status, _, body = fetch(base + "/readyz?verbose=1")  # a query string is ignored
    assert status == 200 and body.startswith("ready: serving")


def test_endpoints__unknown_path_404_head_without_body(served: Any) -> None:
    base, _, _ = served
    status, _, body = fetch(base + "/")
    assert status == 404 and "/metrics" in body
    assert fetch(base + "/metrics/extra")[0] == 404
    status, _, body = fetch(base + "/metrics", method="HEAD")
    assert (status, body) == (200, "")


def test_endpoints__a_failing_collector_is_a_500_and_the_listener_keeps_serving(
    served: Any,
) -> None:
    base, _, state = served
    state["fail"] = True
    assert fetch(base + "/metrics")[0] == 500
    state["fail"] = False
    assert fetch(base + "/metrics")[0] == 200


def test_endpoints__a_port_in_use_is_a_clear_config_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        health = Health(tick_within=10, heartbeat_within=5)
        endpoints = Endpoints(("127.0.0.1", port), metrics=_nothing, health=health, log=_Log())
        with pytest.raises(ConfigError, match=rf"http_address 127.0.0.1:{port}: cannot listen"):
            endpoints.start()


def ipv6_loopback_unavailable() -> str | None:
    """Why this host cannot listen on ::1 (judged without the code under test), or None."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind ::1: {exc}"
    return None


def test_endpoints__ipv6_loopback() -> None:
    unavailable = ipv6_loopback_unavailable()
    if unavailable:
        pytest.skip(f"no IPv6 loopback on this host: {unavailable}")
    health = Health(tick_within=10, heartbeat_within=5)
    endpoints = Endpoints(("::1", 0), metrics=_nothing, health=health, log=_Log())
    endpoints.start()  # a ConfigError here is a failure: the host can listen on ::1
    try:
        host, port = endpoints.bound()
        assert fetch(f"http://[{host}]:{port}/metrics")[0] == 200
    finally:
        endpoints.stop()


# -- the http_address key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:9464", ("0.0.0.0", 9464)),
        (":9464", ("", 9464)),
        ("localhost:0", ("localhost", 0)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_parse_http_address__accepts_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_http_address(text) == expected


@pytest.mark.parametrize(
    "text", ["9464", "127.0.0.1", "127.0.0.1:", "host:port", "::1:9464", "h:70000", "a b:1"]
)
def test_parse_http_address__refuses_anything_else(text: str) -> None:
    with pytest.raises(ConfigError, match="is not host:port"):
        parse_http_address(text)


def test_config__http_address_off_by_default_and_validated_from_the_environment() -> None:
    assert load_config(env={}).http_address == ""
    cfg = load_config(env={"ORCHESTRATOR_HTTP_ADDRESS": "127.0.0.1:9464"})
    assert cfg.http_address == "127.0.0.1:9464"
    with pytest.raises(ConfigError, match=r"ORCHESTRATOR_HTTP_ADDRESS.*'9464' is not host:port"):
        load_config(env={"ORCHESTRATOR_HTTP_ADDRESS": "9464"})
