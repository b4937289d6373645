"""sd_notify over a real datagram socket, and the shipped unit file under systemd-analyze."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.runtime.systemd import Notifier, socket_address, watchdog_seconds
from tests.conftest import ROOT

pytestmark = pytest.mark.timeout(30)

UNIT = ROOT / "deploy" / "orchestrator.service"


class _Log:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, message: str, **fields: Any) -> None:
        self.warnings.append((message, fields))


@pytest.fixture
def listener() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket at a short path (Unix socket paths are limited to 107 bytes)."""
    directory = tempfile.mkdtemp(prefix="sdn-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
    shutil.rmtree(directory, ignore_errors=True)


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_socket_address__path_abstract_and_unsupported() -> None:
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert socket_address("@orchestrator/notify") == "\0orchestrator/notify"
    assert socket_address("vsock:2:1234") is None
    assert socket_address("relative/path") is None


def test_watchdog_seconds__from_usec_and_only_for_this_pid() -> None:
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000"}, 42) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "42"}, 42) == 30.0
    assert watchdog_seconds({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "7"}, 42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "soon"}, 42) is None
    assert watchdog_seconds({"WATCHDOG_USEC": "0"}, 42) is None
    assert watchdog_seconds({}, 42) is None


def test_notifier__ready_status_stopping_as_datagrams(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    notifier = Notifier(path)
    notifier.ready("serving 3 functions")
    assert received(sock) == "READY=1\nSTATUS=serving 3 functions"
    notifier.status("serving 3 functions")  # unchanged: not sent again
    notifier.status("database error, retrying:\n  connection refused")
    assert received(sock) == "STATUS=database error, retrying: connection refused"
    notifier.stopping("stopping: draining 2 runs")
    assert received(sock) == "STOPPING=1\nSTATUS=stopping: draining 2 runs"
    notifier.close()


def test_notifier__abstract_socket() -> None:
    name = f"orchestrator-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        notifier = Notifier.from_environ({"NOTIFY_SOCKET": "@" + name})
        assert notifier.enabled
        notifier.ready("up")
        assert received(sock) == "READY=1\nSTATUS=up"
        notifier.close()


def test_notifier__watchdog_pets_at_half_the_timeout(listener: tuple[str, socket.socket]) -> None:
    path, sock = listener
    now = [500.0]
    notifier = Notifier(path, watchdog=10.0, clock=lambda: now[0])
    notifier.pet()
    assert received(sock) == "WATCHDOG=1"
    assert notifier.pet_in() == 5.0
    now[0] += 4.9
    notifier.pet()  # too soon: nothing sent
    now[0] += 0.1
    assert notifier.pet_in() == 0.0
    notifier.pet()
    assert received(sock) == "WATCHDOG=1"
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)  # exactly two pets
    notifier.close()


def test_notifier__from_environ_reads_and_unsets_the_variables(
    listener: tuple[str, socket.socket],
) -> None:
    path, _ = listener
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    notifier = Notifier.from_environ(env)
    assert notifier.address == path
    assert notifier.pet_every == 1.0
    assert env == {}  # the worker processes must not inherit them


def test_notifier__without_a_socket_does_nothing() -> None:
    notifier = Notifier.from_environ({})
    assert not notifier.enabled
    notifier.ready("x")
    notifier.pet()
    assert notifier.pet_in() is None
    assert notifier.send("READY=1") is False


def test_notifier__undeliverable_notification_is_dropped_and_logged_once() -> None:
    log = _Log()
    notifier = Notifier("/nonexistent/orchestrator-notify", log=log)
    assert notifier.send("READY=1") is False
    assert notifier.send("STATUS=x") is False
    notifier.close()
    assert [m for m, _ in log.warnings] == ["could not notify systemd"]


def test_notifier__unsupported_socket_kind_is_refused_with_a_warning() -> None:
    log = _Log()
    notifier = Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:99"}, log=log)
    assert not notifier.enabled
    assert log.warnings and "not a Unix socket" in log.warnings[0][0]


# -- the unit file -------------------------------------------------------------------------


def test_unit_file__has_the_settings_the_daemon_relies_on() -> None:
    text = UNIT.read_text()
    settings = dict(
        line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Z]\w*=", line)
    )
    assert settings["Type"] == "notify"
    assert settings["NotifyAccess"] == "main"
    assert settings["KillMode"] == "mixed"
    assert settings["Restart"] == "on-failure"
    assert int(settings["TimeoutStopSec"]) > 30  # above the default shutdown_grace
    assert int(settings["WatchdogSec"]) >= 30
    assert settings["User"] == settings["Group"] == "orchestrator"
    assert settings["RestrictAddressFamilies"] == "AF_UNIX AF_INET AF_INET6"
    assert "MemoryDenyWriteExecute" not in settings


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_unit_file__passes_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point it at this interpreter
    unit = tmp_path / "orchestrator.service"
    text = re.sub(r"^ExecStart=\S+", f"ExecStart={sys.executable}", UNIT.read_text(), flags=re.M)
    unit.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    output = result.stdout + result.stderr
    complaints = [line for line in output.splitlines() if "orchestrator.service" in line]
    assert result.returncode == 0, output
    assert complaints == [], output
