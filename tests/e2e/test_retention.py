"""Retention end to end: the real daemon, leading, deletes old rows on its own while live runs
as old as them are left alone; `orchestrator gc` does one pass on demand.

Old rows are made by SQL with timestamps in the past, so the ages configured stay at their
smallest allowed values (60 s for runs, an hour for events) and nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess, cli, count, run_of, scalar, send, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.coordination:app"
RETENTION = {
    "retain_completed": 60,
    "retain_failed": 60,
    "retain_events": 3600,
    "retention_interval": 0.3,
}


def add_old_rows(url: str, runs: int = 40) -> None:
    """`runs` completed and failed runs from ten days ago with three steps each, as many
    ingested events from two days ago, and a daemon that stopped two days ago."""
    sql(
        url,
        "INSERT INTO orchestrator.runs (function_id, status, created_at, finished_at) "
        "SELECT 'double', CASE WHEN g %% 2 = 0 THEN 'completed' ELSE 'failed' END, "
        "       now() - interval '10 days' + g * interval '1 s', "
        "       now() - interval '10 days' + g * interval '1 s' + interval '1 s' "
        "FROM generate_series(1, %s) g",
        (runs,),
    )
    sql(
        url,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) "
        "SELECT r.id, 's' || i, i, 'run', 'completed' FROM orchestrator.runs r, "
        "generate_series(0, 2) i WHERE r.function_id = 'double'",
    )
    sql(
        url,
        "INSERT INTO orchestrator.events (id, name, received_at, ingested_at) "
        "SELECT 'old-' || g, 'old/event', now() - interval '2 days', now() - interval '2 days' "
        "FROM generate_series(1, %s) g",
        (runs,),
    )
    sql(
        url,
        "INSERT INTO orchestrator.daemons (id, hostname, pid, workers, concurrency, status, "
        "heartbeat_at, stopped_at) VALUES (gen_random_uuid(), 'gone', 1, 1, 1, 'stopped', "
        "now() - interval '2 days', now() - interval '2 days')",
    )


def old_rows(url: str) -> dict[str, int]:
    return {
        "runs": count(url, "SELECT count(*) FROM orchestrator.runs WHERE function_id = 'double'"),
        "steps": count(
            url,
            "SELECT count(*) FROM orchestrator.steps s JOIN orchestrator.runs r "
            "ON r.id = s.run_id WHERE r.function_id = 'double'",
        ),
        "events": count(url, "SELECT count(*) FROM orchestrator.events WHERE name = 'old/event'"),
        "daemons": count(url, "SELECT count(*) FROM orchestrator.daemons WHERE hostname = 'gone'"),
    }


def status_of(url: str, run_id: str) -> str | None:
    value = scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s::uuid", (run_id,))
    return None if value is None else str(value)


def test_retention__the_leader_deletes_old_rows__live_runs_as_old_are_untouched(
    e2e_url: str, daemon_factory: Callable[..., DaemonProcess]
) -> None:
    daemon = daemon_factory(APP, workers=1, **RETENTION)
    waiting = run_of(e2e_url, send(e2e_url, "order/created", {"order_id": 7}))
    parent = run_of(e2e_url, send(e2e_url, "math/slow-parent", {}))
    eventually(lambda: status_of(e2e_url, waiting) == "waiting", what="a run waiting")
    child = eventually(
        lambda: scalar(
            e2e_url,
            "SELECT id::text FROM orchestrator.runs WHERE parent_run_id = %s::uuid "
            "AND status = 'sleeping'",
            (parent,),
        ),
        what="an invoked child sleeping",
    )
    live = [waiting, parent, child]
    # the live runs and their events look as old as the rows to delete
    sql(
        e2e_url,
        "UPDATE orchestrator.runs SET created_at = created_at - interval '10 days'",
    )
    sql(
        e2e_url,
        "UPDATE orchestrator.events SET received_at = received_at - interval '10 days'",
    )
    before = _live_state(e2e_url, live)
    add_old_rows(e2e_url)
    assert old_rows(e2e_url) == {"runs": 40, "steps": 120, "events": 40, "daemons": 1}

    eventually(lambda: not any(old_rows(e2e_url).values()), timeout=30, what="the old rows deleted")

    assert _live_state(e2e_url, live) == before

    def logged() -> tuple[int, ...]:
        passes = [e for e in daemon.log_events() if e.get("event") == "retention pass"]
        keys = ("runs_completed", "runs_failed", "steps", "events", "daemons")
        return tuple(sum(p[k] for p in passes) for k in keys)

    eventually(lambda: logged() == (20, 20, 120, 40, 1), what="the passes logged with counts")
    # the waiting run still gets its event
    send(e2e_url, "payment/received", {"order_id": 7})
    eventually(lambda: status_of(e2e_url, waiting) == "completed", what="the wait resolved")


def _live_state(url: str, run_ids: list[str]) -> list[tuple[Any, ...]]:
    """The live runs, their steps and waits, and the events that started them."""
    return sql(
        url,
        "SELECT r.id::text, r.status, r.event_id, e.id, "
        "(SELECT count(*) FROM orchestrator.steps s WHERE s.run_id = r.id), "
        "(SELECT count(*) FROM orchestrator.waits w WHERE w.run_id = r.id) "
        "FROM orchestrator.runs r LEFT JOIN orchestrator.events e ON e.id = r.event_id "
        "WHERE r.id = ANY(%s::uuid[]) ORDER BY r.id",
        (run_ids,),
    )


def test_gc__dry_run_counts__a_pass_deletes__flags_override_the_ages(e2e_url: str) -> None:
    add_old_rows(e2e_url)
    env = [f"--{k.removeprefix('retain_')}={v}" for k, v in RETENTION.items() if "retain" in k]

    dry = json.loads(cli(e2e_url, "gc", "--dry-run", "--json", *env).stdout)
    assert dry["dry_run"] is True
    expected = {"runs_completed": 20, "runs_failed": 20, "steps": 120, "waits": 0}
    assert {k: dry[k] for k in expected} == expected
    assert (dry["events"], dry["daemons"]) == (40, 1)
    assert old_rows(e2e_url)["runs"] == 40

    kept = json.loads(cli(e2e_url, "gc", "--json", *env, "--completed", "0").stdout)
    assert (kept["runs_completed"], kept["runs_failed"], kept["events"]) == (0, 20, 40)
    assert kept["retain"]["completed"] == 0
    assert old_rows(e2e_url) == {"runs": 20, "steps": 60, "events": 0, "daemons": 0}

    text = cli(e2e_url, "gc", *env).stdout
    assert text.startswith("deleted (keeping completed 1m, failed 1m, events 1h, daemons 1d):")
    assert "runs_completed  20" in text
    assert old_rows(e2e_url)["runs"] == 0

    refused = cli(e2e_url, "gc", "--events", "60", check=False)
    assert refused.returncode == 1
    assert "retain_events (from command line)" in refused.stderr
    assert "at least 3600 seconds" in refused.stderr
