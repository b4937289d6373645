"""Cancelling an executing run against a live daemon: the run ends at once and frees its
flow-control slot while its step body still runs; the body's late result is refused; an
async run's task is interrupted where it awaits; a kill -9 right after the cancellation loses
nothing; `children=False` leaves an invoked run running.

The app is tests/e2e/apps/cancelling.py. Step bodies record themselves in `public.effects`,
and a body held at a gate (`INSERT INTO gates`) returns only when the test opens it, so
"B started while A's body was blocked" is observed structurally, not by timing.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from orchestrator import Orchestrator
from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess, cli, effects, run_of, scalar, send, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

APP = "tests.e2e.apps.cancelling:app"
# two threads: A's blocked body holds one, so B can only start if A's *slot* is free
module_daemons, served = shared_daemons(APP, workers=1, concurrency=2)


@pytest.fixture
def client(served: Served) -> Iterator[Orchestrator]:
    orch = Orchestrator(served.url)
    yield orch
    orch.close()


def run_row(url: str, run_id: str) -> dict[str, Any]:
    [(status, error, finished_at)] = sql(
        url, "SELECT status, error, finished_at FROM orchestrator.runs WHERE id = %s", (run_id,)
    )
    return {"status": status, "error": error, "finished_at": finished_at}


def recorded_steps(url: str, run_id: str) -> list[tuple[str, str]]:
    return sql(
        url,
        "SELECT step_id, status FROM orchestrator.steps WHERE run_id = %s ORDER BY position",
        (run_id,),
    )


def open_gate(url: str, gate: str) -> None:
    sql(url, "INSERT INTO gates (name) VALUES (%s)", (gate,))


def stopped_logged(daemons: list[DaemonProcess], run_id: str) -> bool:
    return any(
        e.get("event") == "run cancelled; execution stopped" and e.get("run_id") == run_id
        for d in daemons
        for e in d.log_events()
    )


def blocked_a_and_queued_b(url: str) -> tuple[str, str, str]:
    """Run A of the Concurrency(1) function in its step body, held at a gate, and run B
    queued behind it; returns (A, B, A's gate)."""
    gate = f"gate-{uuid.uuid4()}"
    a = run_of(url, send(url, "cx/one", {"gate": gate}))
    eventually(lambda: effects(url, a).get("work") == 1, what="A's step body started")
    b = run_of(url, send(url, "cx/one", {}))
    # B is due and stays queued: the limit holds it (A is `running`)
    eventually(
        lambda: (
            scalar(
                url,
                "SELECT count(*) FROM orchestrator.events e WHERE e.name = 'cx/one' "
                "AND e.ingested_at IS NULL",
            )
            == 0
        ),
        what="B's event ingested",
    )
    assert run_row(url, b)["status"] == "queued"
    assert effects(url, b) == {}
    return a, b, gate


def test_cancel_running__frees_the_slot_at_once__b_starts_while_a_body_is_blocked(
    served: Served, client: Orchestrator
) -> None:
    url = served.url
    a, b, gate = blocked_a_and_queued_b(url)

    cancelled_at = time.monotonic()
    assert client.cancel(a, reason="not needed") == "cancelled"
    # ended by the cancellation itself, while its body still runs
    assert run_row(url, a)["status"] == "cancelled"
    eventually(lambda: effects(url, b).get("work") == 1, timeout=10, what="B's step body started")
    started_in = time.monotonic() - cancelled_at
    # structurally: A's body is still held at its gate (it records `returned` only after)
    assert effects(url, a) == {"work": 1}
    [(claimed_after, body_after)] = sql(  # by the database clock, from A's cancellation
        url,
        "SELECT extract(epoch FROM b.started_at - a.finished_at), "
        "extract(epoch FROM (SELECT min(at) FROM public.effects WHERE run_id = %s) "
        "- a.finished_at) "
        "FROM orchestrator.runs a, orchestrator.runs b WHERE a.id = %s AND b.id = %s",
        (b, a, b),
    )
    print(
        f"\ncancel -> B claimed {float(claimed_after) * 1000:.1f} ms, B's body started "
        f"{float(body_after) * 1000:.1f} ms (seen by the test after {started_in * 1000:.1f} ms)"
    )

    open_gate(url, gate)
    eventually(lambda: effects(url, a).get("returned") == 1, what="A's body returned")
    eventually(lambda: stopped_logged(served.daemons, a), what="A's execution stopped")
    eventually(lambda: run_row(url, b)["status"] == "completed", what="B completed")
    row = run_row(url, a)
    assert row["status"] == "cancelled"
    assert (row["error"]["code"], row["error"]["message"]) == ("cancelled", "not needed")
    assert recorded_steps(url, a) == []  # its body's result was refused
    assert effects(url, a) == {"work": 1, "returned": 1}  # nothing ran after the body
    problems = [
        e
        for d in served.daemons
        for e in d.log_events()
        if e.get("run_id") == a and e.get("level") in ("warning", "error", "critical")
    ]
    assert problems == []  # the refused result is not a lost lease or an error


def test_cancel_running__async_step_is_interrupted_at_once(
    served: Served, client: Orchestrator
) -> None:
    url = served.url
    run_id = run_of(url, send(url, "cx/async", {}))
    eventually(lambda: effects(url, run_id).get("work") == 1, what="the async body sleeping")
    assert client.cancel(run_id) == "cancelled"
    eventually(
        lambda: effects(url, run_id).get("interrupted") == 1,
        timeout=10,
        what="the body's asyncio.sleep(3600) interrupted",
    )
    eventually(lambda: stopped_logged(served.daemons, run_id), what="its execution stopped")
    assert run_row(url, run_id)["status"] == "cancelled"
    assert "after" not in effects(url, run_id)
    assert recorded_steps(url, run_id) == []


def invoked_child(url: str) -> tuple[str, str, str]:
    gate = f"gate-{uuid.uuid4()}"
    parent = run_of(url, send(url, "cx/invoker", {"gate": gate}))
    child = str(
        eventually(
            lambda: scalar(
                url, "SELECT id::text FROM orchestrator.runs WHERE parent_run_id = %s", (parent,)
            ),
            what="the child run",
        )
    )
    eventually(lambda: effects(url, child).get("work") == 1, what="the child's body started")
    eventually(lambda: run_row(url, parent)["status"] == "waiting", what="the parent waiting")
    return parent, child, gate


def test_cancel_running__children_false_leaves_the_child_running_to_completion(
    served: Served, client: Orchestrator
) -> None:
    url = served.url
    parent, child, gate = invoked_child(url)
    assert client.cancel(parent, children=False) == "cancelled"
    assert run_row(url, child)["status"] == "running"
    open_gate(url, gate)
    eventually(lambda: run_row(url, child)["status"] == "completed", what="the child completed")
    assert run_row(url, parent)["status"] == "cancelled"
    assert recorded_steps(url, parent) == [("child", "waiting")]  # nobody resolved it


def test_cancel_running__cli_no_children__leaves_the_child_running(served: Served) -> None:
    url = served.url
    parent, child, gate = invoked_child(url)
    result = cli(url, "runs", "cancel", "--no-children", parent)
    assert result.stdout.strip() == f"{parent}: cancelled"
    assert run_row(url, child)["status"] == "running"
    open_gate(url, gate)
    eventually(lambda: run_row(url, child)["status"] == "completed", what="the child completed")


def test_cancel_running__by_default_cascades_to_the_executing_child(
    served: Served, client: Orchestrator
) -> None:
    url = served.url
    parent, child, gate = invoked_child(url)
    assert client.cancel(parent) == "cancelled"
    assert run_row(url, child)["status"] == "cancelled"
    open_gate(url, gate)
    eventually(lambda: stopped_logged(served.daemons, child), what="the child's execution stopped")
    assert run_row(url, child)["status"] == "cancelled"
    assert recorded_steps(url, child) == []


@pytest.mark.timeout(90)
def test_cancel_running__kill9_before_the_worker_learned__a_stays_cancelled_b_completes(
    e2e_url: str, daemon_factory: Any
) -> None:
    url = e2e_url
    daemon = daemon_factory(APP, workers=1, concurrency=2)
    a, b, _ = blocked_a_and_queued_b(url)
    client = Orchestrator(url)
    try:
        with psycopg.connect(url) as conn:  # the cancellation commits after the kill
            assert client.cancel(a, conn=conn) == "cancelled"
            daemon.kill9()  # its worker dies in A's body, never told
            conn.commit()
    finally:
        client.close()
    assert run_row(url, a)["status"] == "cancelled"
    assert effects(url, b) == {}

    daemon_factory(APP, workers=1, concurrency=2)
    eventually(lambda: run_row(url, b)["status"] == "completed", timeout=30, what="B completed")
    row = run_row(url, a)
    assert (row["status"], row["error"]["code"]) == ("cancelled", "cancelled")
    assert recorded_steps(url, a) == []
    assert effects(url, a) == {"work": 1}  # its body never ran again
    assert effects(url, b) == {"work": 1, "returned": 1, "after": 1}
    # no completed step body ran twice, in any run of this test
    twice = sql(
        url,
        "SELECT e.run_id, e.step, count(*) FROM public.effects e WHERE EXISTS ("
        "SELECT 1 FROM orchestrator.steps s WHERE s.run_id::text = e.run_id "
        "AND s.step_id = e.step AND s.status = 'completed') "
        "GROUP BY e.run_id, e.step HAVING count(*) > 1",
    )
    assert twice == []
