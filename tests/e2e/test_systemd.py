"""The real daemon speaks sd_notify to the socket systemd would give it: READY=1 once it
serves, WATCHDOG=1 while its loop turns, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import signal
import socket
import time
import uuid

import pytest

from tests.e2e.harness import DaemonProcess

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.metered:app"
WATCHDOG_USEC = 1_000_000  # a pet every 0.5 s
POLL_INTERVAL = 40.0  # seconds the idle loop would otherwise sleep


def collect(sock: socket.socket, messages: list[list[str]], until: str, timeout: float) -> None:
    """Receive datagrams (each a list of KEY=value lines) until one has `until`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = sock.recv(4096)
        except TimeoutError:
            continue
        messages.append(data.decode().split("\n"))
        if until in messages[-1]:
            return
    pytest.fail(f"no {until} within {timeout}s; got {messages!r}")


def lines(messages: list[list[str]]) -> list[str]:
    return [line for message in messages for line in message]


def test_sd_notify__ready_then_watchdog_then_stopping(e2e_url, daemon_factory, monkeypatch):
    name = f"orchestrator-e2e-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)  # an abstract socket, as NOTIFY_SOCKET="@name"
        sock.settimeout(0.2)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
        # idle, the loop would sleep for its whole poll interval: pets come at half of
        # WATCHDOG_USEC only if the loop wakes for the watchdog
        daemon: DaemonProcess = daemon_factory(APP, poll_interval=POLL_INTERVAL)

        messages: list[list[str]] = []
        collect(sock, messages, "READY=1", timeout=30)
        ready = messages[-1]
        assert any(line.startswith("STATUS=serving 6 functions") for line in ready), ready
        assert "WATCHDOG=1" not in lines(messages)  # the loop starts after READY=1

        while lines(messages).count("WATCHDOG=1") < 4:  # each well before the next poll
            collect(sock, messages, "WATCHDOG=1", timeout=POLL_INTERVAL / 4)

        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        collect(sock, messages, "STOPPING=1", timeout=30)
        assert any(line.startswith("STATUS=stopping") for line in messages[-1])
        assert daemon.proc.wait(30) == 0

    order = lines(messages)
    assert order.index("READY=1") < order.index("WATCHDOG=1") < order.index("STOPPING=1")
