"""A function no live daemon serves, end to end: its run is called `unserved`, the leader
warns, `orchestrator functions` says so, and `orchestrator functions remove` retires it."""

from __future__ import annotations

import json
import re
import socket

import pytest

from orchestrator.db import functions
from orchestrator.db.database import Database
from tests.conftest import eventually
from tests.e2e.apps.retired import earlier
from tests.e2e.harness import cli, run_of, scalar, send, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def _register_earlier_deploy(url: str) -> None:
    """What the daemons of the deploy before did when they started."""
    db = Database(url, pool_size=1)
    try:
        with db.transaction() as conn:
            for fid, fdef in earlier.functions.items():
                desc = fdef.describe()
                triggers = desc.pop("triggers")
                functions.upsert(conn, fid, triggers=triggers, options=desc, version="1")
    finally:
        db.dispose()


def _listing(url: str) -> dict[str, list[str]]:
    """`orchestrator functions` as a table: the cells of each row, by function id."""
    lines = [line for line in cli(url, "functions").stdout.splitlines() if line.strip()]
    rows = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return {row[0]: row for row in rows[1:]}


def test_unserved_function__shown_warned_about_and_removed(e2e_url, daemon_factory):
    _register_earlier_deploy(e2e_url)
    daemon = daemon_factory("tests.e2e.apps.retired:app", workers=1, unserved_warning_after=0.5)

    run_id = run_of(e2e_url, send(e2e_url, "shop/retired"))

    reason = "SELECT reason FROM orchestrator.run_queue WHERE run_id = CAST(%s AS uuid)"
    assert eventually(lambda: scalar(e2e_url, reason, (run_id,)), what="run queued") == "unserved"

    def warned() -> list[dict[str, object]]:
        return [
            e
            for e in daemon.log_events()
            if e.get("level") == "warning" and e.get("function_id") == "retired"
        ]

    [warning] = eventually(warned, timeout=15, what="the leader's warning")
    assert "no live daemon serves" in str(warning["event"])
    assert warning["runs"] == 1
    assert "orchestrator functions remove retired" in str(warning["fix"])

    listing = _listing(e2e_url)
    assert listing["retired"][5] == "UNSERVED (1 run waiting)"
    assert listing["current"][5:] == [f"{socket.gethostname()}:{daemon.pid}", "now"]
    as_json = {f["id"]: f for f in json.loads(cli(e2e_url, "functions", "--json").stdout)}
    assert (as_json["retired"]["served"], as_json["retired"]["unserved_runs"]) == (False, 1)
    assert [d["pid"] for d in as_json["current"]["served_by"]] == [daemon.pid]

    removed = cli(e2e_url, "functions", "remove", "retired", "--cancel-runs", "--yes")
    assert "1 run(s) cancelled" in removed.stdout
    status = "SELECT status FROM orchestrator.runs WHERE id = CAST(%s AS uuid)"
    assert scalar(e2e_url, status, (run_id,)) == "cancelled"
    assert sql(e2e_url, "SELECT id FROM orchestrator.functions") == [("current",)]

    event_id = send(e2e_url, "shop/retired")
    ingested = "SELECT ingested_at IS NOT NULL FROM orchestrator.events WHERE id = %s"
    eventually(lambda: scalar(e2e_url, ingested, (event_id,)), what="new event ingested")
    assert sql(e2e_url, "SELECT id FROM orchestrator.runs WHERE event_id = %s", (event_id,)) == []
