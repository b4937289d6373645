"""Cancellation against a live daemon, by every route a user has: `cancel_on` events,
`Orchestrator.cancel`, the CLI and a plain SQL UPDATE; and `on_failure` handlers, which run
for failed runs only, never for cancelled ones.

Step-body executions are counted in `public.effects` (written by the body on its own
connection), so "never ran" is observed independently of the engine's own tables.

One daemon serves the tests of this module (tests/e2e/shared.py): each test looks only at its
own runs (every test places orders with ids of its own), except the restart test, which
starts and stops daemons of its own.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator import Orchestrator
from tests.conftest import eventually
from tests.e2e.harness import cli, effects, scalar, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
module_daemons, served = shared_daemons(APP, workers=1)


@pytest.fixture
def client(served: Served) -> Iterator[Orchestrator]:
    orch = Orchestrator(served.url)
    yield orch
    orch.close()


def waits_of(url: str, run_ids: list[str]) -> list[tuple[str, str]]:
    return sorted(
        sql(
            url,
            "SELECT run_id::text, kind FROM orchestrator.waits WHERE run_id = ANY(%s::uuid[])",
            (run_ids,),
        )
    )


def send(url: str, name: str, data: dict[str, Any]) -> str:
    """Insert an event by plain SQL, as any producer would; returns its id."""
    return str(
        scalar(
            url,
            "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s::jsonb) RETURNING id",
            (name, json.dumps(data)),
        )
    )


def run_of(url: str, event_id: str, function_id: str) -> str:
    """The id of the run of `function_id` that event `event_id` started (waits for it)."""
    return eventually(
        lambda: scalar(
            url,
            "SELECT id::text FROM orchestrator.runs WHERE event_id = %s AND function_id = %s",
            (event_id, function_id),
        ),
        what=f"a {function_id} run for event {event_id}",
    )


def row(url: str, run_id: str) -> dict[str, Any]:
    rows = sql(
        url,
        "SELECT status, output, error, finished_at, cancel_requested_at, updated_at "
        "FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    status, output, error, finished_at, cancel_requested_at, updated_at = rows[0]
    return {
        "status": status,
        "output": output,
        "error": error,
        "finished_at": finished_at,
        "cancel_requested_at": cancel_requested_at,
        "updated_at": updated_at,
    }


def status(url: str, run_id: str) -> str:
    return str(scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def wait_status(url: str, run_id: str, expected: str, timeout: float = 20.0) -> dict[str, Any]:
    return eventually(
        lambda: (r := row(url, run_id))["status"] == expected and r,
        timeout=timeout,
        what=f"run {run_id} {expected}",
    )


def sleeping_orders(url: str, *order_ids: int) -> list[str]:
    """Place orders (all at once); returns their 'cancellable' runs once they sleep at step
    'hold'."""
    sent = [send(url, "order/placed", {"order_id": n}) for n in order_ids]
    run_ids = [run_of(url, event_id, "cancellable") for event_id in sent]
    for run_id in run_ids:
        wait_status(url, run_id, "sleeping")
    return run_ids


def assert_cancelled(r: dict[str, Any]) -> None:
    assert r["status"] == "cancelled"
    assert r["error"]["code"] == "cancelled", r["error"]
    assert r["finished_at"] is not None
    assert r["cancel_requested_at"] is not None
    assert r["output"] is None


@pytest.mark.timeout(60)
def test_cancel__cancel_on_event__cancels_the_matching_sleeping_run_only(served: Served):
    e2e_url = served.url
    one, two, three = sleeping_orders(e2e_url, 1, 2, 3)
    ours = [one, two, three]
    # every run watches for its own cancellation: one 'cancel' wait each
    assert waits_of(e2e_url, ours) == sorted([(one, "cancel"), (two, "cancel"), (three, "cancel")])

    cancel_event = send(e2e_url, "order/cancelled", {"order_id": 2})
    assert_cancelled(wait_status(e2e_url, two, "cancelled"))
    eventually(
        lambda: scalar(
            e2e_url,
            "SELECT ingested_at IS NOT NULL FROM orchestrator.events WHERE id = %s",
            (cancel_event,),
        ),
        what="the order/cancelled event ingested",
    )

    # the ingest of the event is over (it commits with the cancellation it makes): the others
    # are untouched
    assert status(e2e_url, one) == "sleeping"
    assert status(e2e_url, three) == "sleeping"
    assert [effects(e2e_url, run_id) for run_id in ours] == [{}, {}, {}]
    assert waits_of(e2e_url, ours) == sorted([(one, "cancel"), (three, "cancel")])
    # the event started nothing itself and cancelled exactly one run (no other test's orders
    # have order id 2)
    runs_of_event = "SELECT count(*) FROM orchestrator.runs WHERE event_id = %s"
    assert scalar(e2e_url, runs_of_event, (cancel_event,)) == 0
    cancelled = sql(
        e2e_url,
        "SELECT id::text FROM orchestrator.runs WHERE status = 'cancelled' "
        "AND events->0->'data'->'order_id' = '2'",
    )
    assert cancelled == [(two,)]


@pytest.mark.timeout(60)
def test_cancel__app_cancel_of_sleeping_run__cancelled_at_once(served: Served, client):
    e2e_url = served.url
    (run_id,) = sleeping_orders(e2e_url, 7)

    assert client.cancel(run_id) == "cancelled"
    # no polling: the call itself ended the run
    after = row(e2e_url, run_id)
    assert_cancelled(after)
    assert sql(e2e_url, "SELECT * FROM orchestrator.waits WHERE run_id = %s", (run_id,)) == []

    # cancelling again changes nothing and reports the status
    assert client.cancel(run_id) == "cancelled"
    assert row(e2e_url, run_id) == after
    assert effects(e2e_url, run_id) == {}


@pytest.mark.timeout(60)
def test_cancel__cli__cancels_and_reports__completed_run_unchanged(served: Served):
    e2e_url = served.url
    done_event = send(e2e_url, "shop/a", {})
    (run_id,) = sleeping_orders(e2e_url, 8)

    result = cli(e2e_url, "runs", "cancel", run_id)
    assert result.returncode == 0
    assert result.stdout.strip() == f"{run_id}: cancelled"
    assert_cancelled(row(e2e_url, run_id))

    # a completed run: exit 0, reported as such, the row is left as it was
    done = run_of(e2e_url, done_event, "either")
    before = wait_status(e2e_url, done, "completed")
    result = cli(e2e_url, "runs", "cancel", done)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{done}: already completed; nothing to cancel"
    assert row(e2e_url, done) == before


@pytest.mark.timeout(60)
def test_cancel__sql_update_of_cancel_requested_at__cancels_sleeping_run(served: Served):
    e2e_url = served.url
    run_id, other = sleeping_orders(e2e_url, 9, 10)

    sql(
        e2e_url,
        "UPDATE orchestrator.runs SET cancel_requested_at = now() WHERE id = %s",
        (run_id,),
    )
    assert_cancelled(wait_status(e2e_url, run_id, "cancelled"))
    assert sql(e2e_url, "SELECT * FROM orchestrator.waits WHERE run_id = %s", (run_id,)) == []
    assert status(e2e_url, other) == "sleeping"
    assert effects(e2e_url, run_id) == {}


@pytest.mark.timeout(60)
def test_cancel__running_run__ends_at_once__its_step_result_is_refused(served: Served, client):
    e2e_url = served.url
    run_id = run_of(e2e_url, send(e2e_url, "long/start", {}), "long-steps")
    eventually(lambda: effects(e2e_url, run_id).get("one") == 1, what="step one's body started")

    assert client.cancel(run_id) == "cancelled"
    ended = row(e2e_url, run_id)  # ended by the call itself, while step one's body runs
    assert_cancelled(ended)

    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (run_id,))
    eventually(
        lambda: any(
            e.get("event") == "run cancelled; execution stopped" and e.get("run_id") == run_id
            for e in served.daemons[0].log_events()
        ),
        what="the execution stopped",
    )
    assert row(e2e_url, run_id) == ended
    assert effects(e2e_url, run_id) == {"one": 1}
    recorded = sql(
        e2e_url,
        "SELECT step_id, status FROM orchestrator.steps WHERE run_id = %s ORDER BY position",
        (run_id,),
    )
    assert recorded == []  # step one's result came after the cancellation: refused


@pytest.mark.timeout(90)
def test_cancel__on_failure__once_per_failed_run__never_for_cancelled(served: Served, client):
    e2e_url = served.url
    sent = [send(e2e_url, "fragile/start", {}) for _ in range(3)]
    sleeper_event = send(e2e_url, "fragile/start", {"sleep": True})
    failed = [run_of(e2e_url, event_id, "fragile") for event_id in sent]
    for run_id in failed:
        r = wait_status(e2e_url, run_id, "failed")
        assert r["error"]["message"] == "fragile broke", r["error"]

    def handlers() -> list[tuple[Any, ...]]:
        return sql(
            e2e_url,
            "SELECT parent_run_id::text, status, output, event_id FROM orchestrator.runs "
            "WHERE function_id = 'fragile:on-failure' ORDER BY parent_run_id::text COLLATE \"C\"",
        )

    done = eventually(
        lambda: (h := handlers()) and len(h) >= 3 and all(x[1] == "completed" for x in h) and h,
        what="three on-failure handlers completed",
    )
    assert done == [
        (run_id, "completed", {"failed": run_id, "message": "fragile broke"}, f"failed:{run_id}")
        for run_id in sorted(failed)
    ]
    for run_id in failed:
        assert effects(e2e_url, run_id) == {"on-failure": 1}

    # a cancelled run is not a failure: no handler
    sleeper = run_of(e2e_url, sleeper_event, "fragile")
    wait_status(e2e_url, sleeper, "sleeping")
    assert client.cancel(sleeper) == "cancelled"
    # a later failure's handler is the marker that the engine went past the cancellation
    marker = run_of(e2e_url, send(e2e_url, "fragile/start", {}), "fragile")
    eventually(
        lambda: scalar(
            e2e_url,
            "SELECT status = 'completed' FROM orchestrator.runs "
            "WHERE function_id = 'fragile:on-failure' AND parent_run_id = %s",
            (marker,),
        ),
        what="the marker failure's handler completed",
    )
    assert_cancelled(row(e2e_url, sleeper))
    assert (
        sql(e2e_url, "SELECT id FROM orchestrator.runs WHERE parent_run_id = %s", (sleeper,)) == []
    )
    assert (
        sql(e2e_url, "SELECT id FROM orchestrator.events WHERE data->>'run_id' = %s", (sleeper,))
        == []
    )
    assert effects(e2e_url, sleeper) == {}
    assert [h[0] for h in handlers()] == sorted([*failed, marker])


@pytest.mark.timeout(90)
def test_cancel__daemon_restart__cancelled_run_stays_cancelled(e2e_url, daemon_factory):
    daemon = daemon_factory(APP, workers=1)
    (run_id,) = sleeping_orders(e2e_url, 11)
    client = Orchestrator(e2e_url)
    try:
        assert client.cancel(run_id) == "cancelled"
    finally:
        client.close()
    before = row(e2e_url, run_id)
    assert daemon.terminate() == 0

    daemon_factory(APP, workers=1)
    # markers that the new daemon is at work: it ingests, runs, and applies cancellations
    placed = send(e2e_url, "order/placed", {"order_id": 12})
    done = run_of(e2e_url, send(e2e_url, "shop/a", {}), "either")
    fresh = run_of(e2e_url, placed, "cancellable")
    wait_status(e2e_url, fresh, "sleeping")
    sql(e2e_url, "UPDATE orchestrator.runs SET cancel_requested_at = now() WHERE id = %s", (fresh,))
    wait_status(e2e_url, fresh, "cancelled")
    wait_status(e2e_url, done, "completed")

    assert row(e2e_url, run_id) == before
    assert effects(e2e_url, run_id) == {}
