"""A real daemon (`inngest = true`, dev mode) serving an SDK app that syncs after it started:
the sync's NOTIFY makes it take the app's functions on, and its workers drive their runs
against the app (here the in-test fake SDK server)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from orchestrator.db.database import Database
from tests.conftest import eventually
from tests.db.helpers import execute as sql
from tests.e2e.apps.common import ensure_schema
from tests.e2e.harness import DaemonProcess, close_connections, stop_all
from tests.inngest.fake_sdk import FakeSdk, Tools

pytestmark = pytest.mark.e2e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def daemon(db_url: str, tmp_path: Path) -> Iterator[tuple[DaemonProcess, str]]:
    ensure_schema(db_url)
    address = f"127.0.0.1:{free_port()}"
    d = DaemonProcess(
        db_url,
        "tests.e2e.apps.flows:app",
        tmp_path / "daemon.log",
        inngest="true",
        inngest_dev="true",
        inngest_address=address,
    )
    d.start()
    yield d, f"http://{address}"
    stop_all([d])
    close_connections()


def test_a_daemon_serves_an_app_synced_after_it_started(
    daemon: tuple[DaemonProcess, str], db: Database
) -> None:
    _, gateway = daemon

    with FakeSdk() as sdk:

        @sdk.function("hello")
        def hello(step: Tools, event: dict[str, Any]) -> Any:
            name = step.run("greet", lambda: f"hello {event['data']['who']}")
            step.sleep("pause", "1s")
            return {"said": name}

        answer = httpx.post(f"{gateway}/fn/register", json=sdk.register_payload(), timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["ok"] is True
        sent = httpx.post(
            f"{gateway}/e/NO_EVENT_KEY_SET",
            json=[{"name": "shop-hello/go", "data": {"who": "ada"}}],
            timeout=10,
        )
        assert sent.status_code == 200, sent.text

        def done() -> Any:
            rows = sql(
                db,
                "SELECT status, output FROM orchestrator.runs WHERE function_id = 'shop-hello'",
            )
            return rows and rows[0][0] == "completed" and rows[0]

        _, output = eventually(done, timeout=30, what="the SDK-served run completed")
    assert output == {"said": "hello ada"}
    assert sdk.executed == {"greet": 1}
    (served,) = sql(db, "SELECT functions FROM orchestrator.daemons")[0]
    assert "shop-hello" in served
