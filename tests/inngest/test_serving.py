"""A real daemon (`inngest = true`, dev mode) serving an SDK app that syncs after it started:
the sync's NOTIFY makes it take the app's functions on, and its workers drive their runs
against the app (here the in-test fake SDK server)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
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
    proc, gateway = daemon

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
        # a restart (or another daemon starting) serves the synced app as it is
        proc.stop()
        proc.start(wait=False)  # its log still says "serving" from before: wait for the port

        def sent_again() -> bool:
            try:
                event = [{"name": "shop-hello/go", "data": {"who": "bob"}}]
                return httpx.post(f"{gateway}/e/x", json=event, timeout=5).status_code == 200
            except httpx.HTTPError:
                return False

        eventually(sent_again, timeout=60, what="the restarted daemon's gateway took the event")
        eventually(
            lambda: len(done_runs(db)) == 2, timeout=30, what="the run after a restart completed"
        )
    assert sorted(o["said"] for o in done_runs(db)) == ["hello ada", "hello bob"]


def done_runs(db: Database) -> list[Any]:
    rows = sql(
        db,
        "SELECT output FROM orchestrator.runs WHERE function_id = 'shop-hello' "
        "AND status = 'completed'",
    )
    return [row[0] for row in rows]


def test_dev_syncs_the_apps_it_is_given_and_serves_them(
    db: Database, db_url: str, tmp_path: Path
) -> None:
    ensure_schema(db_url)
    address = f"127.0.0.1:{free_port()}"
    with FakeSdk() as sdk:

        @sdk.function("ping")
        def ping(step: Tools, event: dict[str, Any]) -> Any:
            return step.run("pong", lambda: "pong")

        sdk.api_base = f"http://{address}"
        env = dict(os.environ)
        env |= {
            "ORCHESTRATOR_DATABASE_URL": db_url,
            "ORCHESTRATOR_INNGEST_ADDRESS": address,
            "ORCHESTRATOR_WORKERS": "1",
            "ORCHESTRATOR_POLL_INTERVAL": "0.5",
        }
        log = (tmp_path / "dev.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "dev", "-u", sdk.url],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            eventually(
                lambda: sql(db, "SELECT count(*) FROM orchestrator.apps")[0][0] == 1,
                timeout=60,
                what="the app synced by orchestrator dev",
            )
            listed = subprocess.run(
                [sys.executable, "-m", "orchestrator.cli", "apps", "list", "--json"],
                env=env,
                capture_output=True,
                timeout=60,
                check=True,
            )
            (app,) = json.loads(listed.stdout)
            assert (app["app"], app["functions"], app["refused"]) == ("shop", 1, [])
            eventually(
                lambda: (
                    httpx.post(
                        f"http://{address}/e/any-key-in-dev-mode",
                        json=[{"name": "shop-ping/go", "data": {}}],
                        timeout=5,
                    ).status_code
                    == 200
                ),
                timeout=30,
                what="the event accepted",
            )
            eventually(
                lambda: sql(db, "SELECT output FROM orchestrator.runs WHERE status = 'completed'"),
                timeout=30,
                what="the run completed",
            )
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
            log.close()
    assert sql(db, "SELECT output FROM orchestrator.runs")[0][0] == "pong"
