"""A daemon with `inngest = true` serves Inngest's event API, and an event sent to it starts a
Python function's run like any other event."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.conftest import eventually
from tests.e2e.harness import cli, run_of, scalar

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SIGNING_KEY = "signkey-e2e-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


def _gateway_url(daemon: Any) -> str:
    def logged() -> str | None:
        lines = [e for e in daemon.log_events() if e.get("event") == "inngest gateway serving"]
        return str(lines[0]["url"]) if lines else None

    return str(eventually(logged, what="inngest gateway serving"))


def test_daemon_gateway__an_event_posted_to_e_key_runs_a_python_function(
    e2e_url: str, daemon_factory: Any
) -> None:
    key = json.loads(cli(e2e_url, "event-keys", "create", "e2e", "--json").stdout)["key"]
    daemon = daemon_factory(
        inngest="true", inngest_address="127.0.0.1:0", inngest_signing_key=SIGNING_KEY
    )
    url = _gateway_url(daemon)
    refused = httpx.post(f"{url}e/wrong-key", json={"name": "test/three"}, timeout=10)
    assert refused.status_code == 401
    sent = httpx.post(f"{url}e/{key}", json=[{"name": "test/three", "data": {}}], timeout=10)
    assert sent.status_code == 200, sent.text
    [event_id] = sent.json()["ids"]
    run_id = run_of(e2e_url, event_id)
    eventually(
        lambda: (
            scalar(e2e_url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,))
            == "completed"
        ),
        what="run completed",
    )
    output = scalar(e2e_url, "SELECT output FROM orchestrator.runs WHERE id = %s", (run_id,))
    assert output == {"steps": ["one", "two", "three"]}
    assert daemon.terminate() == 0
    assert daemon.problems() == []
