"""Cancellation ends a running run at once: the statement that cancels idle runs ends it too,
revokes its lease (so its execution's late writes are refused) and frees its flow-control
slot; invoked children follow unless `children=False` (or `cancel_children = false` by
hand)."""

from __future__ import annotations

import json
import threading
import uuid
from typing import Any

import psycopg
import pytest

from orchestrator.context import Context
from orchestrator.db import flow, runs, waits
from orchestrator.db.database import Database
from orchestrator.db.direct import driver
from orchestrator.db.steps import StepRecord
from orchestrator.engine.faces import SyncFace, run_sync
from orchestrator.engine.store import Lease
from orchestrator.errors import LeaseLost
from orchestrator.functions import FINISHED_EVENT_NAME
from tests.db.executing import Harness
from tests.db.helpers import claim, execute, queue_runs

pytestmark = pytest.mark.timeout(60)
OWNER = str(uuid.uuid4())


def _row(db: Database, run_id: str) -> dict[str, Any]:
    [row] = execute(
        db,
        "SELECT status, lease_owner, lease_token, finished_at IS NOT NULL, "
        "error->>'code', error->>'message', cancel_children "
        "FROM orchestrator.runs WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    keys = ("status", "owner", "token", "finished", "code", "message", "children")
    return dict(zip(keys, row, strict=True))


def _child_of(db: Database, parent: str) -> str:
    with db.transaction() as conn:
        new = runs.NewRun("f", [{"i": 0}], parent_run_id=parent)
        [child] = runs.create_many(conn, [new])
    return child


def test_cancel__ends_a_running_run_and_frees_its_slot_in_the_same_statement(
    db: Database,
) -> None:
    queue_runs(db, 2)
    running, other = claim(db, OWNER, limit=2)
    with db.transaction() as conn:
        assert sum(n for _, n in flow.running(conn, "f")[1]) == 2
        ended = runs.cancel(conn, [running.id], reason="no longer wanted")
        # in the cancelling transaction already: the flow-control count has room
        assert sum(n for _, n in flow.running(conn, "f")[1]) == 1
    assert [(r.id, r.status, r.was) for r in ended] == [(running.id, "cancelled", "running")]
    assert _row(db, running.id) == {
        "status": "cancelled",
        "owner": None,
        "token": None,
        "finished": True,
        "code": "cancelled",
        "message": "no longer wanted",
        "children": True,
    }
    assert _row(db, other.id)["status"] == "running"
    with db.transaction() as conn:  # cancelled again: nothing changes, the reason stays
        assert runs.cancel(conn, [running.id], reason="again") == []
    assert _row(db, running.id)["message"] == "no longer wanted"


def test_cancel__notifies_the_daemons_only_when_a_running_run_ended(
    db: Database, db_url: str
) -> None:
    queue_runs(db, 1)
    [running] = claim(db, OWNER, limit=1)
    [idle] = queue_runs(db, 1)
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute(f"LISTEN {runs.CANCEL_CHANNEL}")
        with db.transaction() as conn:
            runs.cancel(conn, [idle], reason="idle")
        assert list(listener.notifies(timeout=0.5, stop_after=1)) == []
        with db.transaction() as conn:
            runs.cancel(conn, [running.id], reason="running")
        heard = list(listener.notifies(timeout=10, stop_after=1))
    assert [n.channel for n in heard] == [runs.CANCEL_CHANNEL]


def test_cancel__children_false_leaves_invoked_runs_running_and_default_cascades(
    db: Database,
) -> None:
    [parent] = queue_runs(db, 1)
    [claimed] = claim(db, OWNER, limit=1)
    child = _child_of(db, parent)
    grandchild = _child_of(db, child)
    with db.transaction() as conn:
        ended = runs.cancel(conn, [parent], reason="parent only", children=False)
    assert [r.id for r in ended] == [claimed.id]
    assert _row(db, parent)["children"] is False
    assert _row(db, child)["status"] == _row(db, grandchild)["status"] == "queued"
    with db.transaction() as conn:
        ended = runs.cancel(conn, [child], reason="the rest")
    assert sorted(r.id for r in ended) == sorted([child, grandchild])


def test_cancel_requested__by_hand_ends_a_running_run_with_or_without_its_children(
    db: Database,
) -> None:
    queue_runs(db, 2)
    first, second = claim(db, OWNER, limit=2)
    first_child, second_child = _child_of(db, first.id), _child_of(db, second.id)
    execute(
        db,
        "UPDATE orchestrator.runs SET cancel_requested_at = now() WHERE id = CAST(:r AS uuid)",
        r=first.id,
    )
    execute(
        db,
        "UPDATE orchestrator.runs SET cancel_requested_at = now(), cancel_children = false "
        "WHERE id = CAST(:r AS uuid)",
        r=second.id,
    )
    with db.transaction() as conn:
        ended = runs.cancel_requested(conn)
    assert sorted(r.id for r in ended) == sorted([first.id, second.id, first_child])
    assert _row(db, first.id)["status"] == _row(db, second.id)["status"] == "cancelled"
    assert _row(db, first.id)["token"] is None
    assert _row(db, first_child)["status"] == "cancelled"
    assert _row(db, second_child)["status"] == "queued"  # left running, by request
    with db.transaction() as conn:
        assert runs.cancel_requested(conn) == []  # applied once


def test_cancel__a_child_ending_after_its_parent_was_cancelled_breaks_nothing(
    harness: Harness,
) -> None:
    @harness.app.function("f")
    def child_fn(ctx: Context) -> int:
        return 7

    [parent] = queue_runs(harness.db, 1, function_id="parent")
    child = _child_of(harness.db, parent)
    with harness.db.transaction() as conn:
        runs.cancel(conn, [parent], reason="parent only", children=False)
    assert harness.step("f").status == "completed"
    assert harness.run(child)["status"] == "completed"
    assert harness.run(parent)["status"] == "cancelled"
    finished = execute(
        harness.db,
        "SELECT data->>'status' FROM orchestrator.events WHERE id = :i",
        i=f"finished:{child}",
    )
    assert finished == [("completed",)]  # recorded as usual; no wait of the parent matches it


def test_cancel__a_sync_body_sees_it_and_its_late_result_is_refused(harness: Harness) -> None:
    in_body, seen = threading.Event(), []

    def body(ctx: Context) -> str:
        in_body.set()
        seen.append(ctx.wait_cancelled(30))
        seen.append(ctx.cancelled)
        return "late"

    @harness.app.function("long")
    def long(ctx: Context) -> str:
        ctx.step.run("work", body, ctx)
        harness.count("after")
        return "done"

    run_id = harness.start("long")
    task = harness.task("long")
    executing = harness.threads.submit(lambda: run_sync(harness.execute(task, SyncFace())))
    assert in_body.wait(20)
    with harness.db.transaction() as conn:
        runs.cancel(conn, [run_id], reason="stop it")
    assert harness.run(run_id)["status"] == "cancelled"  # while the body still runs
    harness.cancelled.mark([task.lease_token])  # the worker is told
    outcome = executing.result(timeout=30)
    assert outcome.status == "stopped"
    assert seen == [True, True]
    assert "after" not in harness.calls
    run = harness.run(run_id)
    assert (run["status"], run["error"]["message"]) == ("cancelled", "stop it")
    assert "work" not in harness.steps(run_id)  # its result was refused


def test_cancel__the_late_end_of_an_execution_never_told_is_refused_quietly(
    harness: Harness,
) -> None:
    in_body, release = threading.Event(), threading.Event()

    def body() -> int:
        in_body.set()
        release.wait(30)
        return 1

    @harness.app.function("short")
    def short(ctx: Context) -> int:
        return ctx.step.run("only", body)  # the last step: its record rides with the end

    run_id = harness.start("short")
    task = harness.task("short")
    executing = harness.threads.submit(lambda: run_sync(harness.execute(task, SyncFace())))
    assert in_body.wait(20)
    with harness.db.transaction() as conn:
        runs.cancel(conn, [run_id], reason="stop it")
    release.set()  # the worker was never told: its finish meets the fence
    assert executing.result(timeout=30).status == "stopped"
    run = harness.run(run_id)
    assert (run["status"], run["error"]["message"]) == ("cancelled", "stop it")
    assert harness.steps(run_id) == {}


def test_cancel__late_sends_and_suspends_of_the_old_execution_are_refused(
    harness: Harness,
) -> None:
    [run_id] = queue_runs(harness.db, 1)
    [claimed] = claim(harness.db, OWNER, limit=1)
    lease = Lease(run_id, claimed.lease_token)
    with harness.db.transaction() as conn:
        runs.cancel(conn, [run_id], reason="stop")
    with pytest.raises(LeaseLost):
        harness.store.send_events(lease, [(f"{run_id}:late", "late/event", "{}")])
    with pytest.raises(LeaseLost):
        harness.store.suspend(lease, status="sleeping", delay=1.0)
    assert execute(harness.db, "SELECT count(*) FROM orchestrator.events") == [(0,)]
    assert harness.run(run_id)["status"] == "cancelled"


def test_send_events__made_while_the_lease_holds(harness: Harness) -> None:
    [run_id] = queue_runs(harness.db, 1)
    [claimed] = claim(harness.db, OWNER, limit=1)
    harness.store.send_events(Lease(run_id, claimed.lease_token), [("e1", "x/y", "{}")])
    assert execute(harness.db, "SELECT id FROM orchestrator.events") == [("e1",)]


def test_cancelled_among__finds_the_executed_runs_a_cancellation_ended(db: Database) -> None:
    queue_runs(db, 3)
    a, b, c = claim(db, OWNER, limit=3)
    with db.transaction() as conn:
        runs.cancel(conn, [a.id, c.id], reason="x")
    with db.transaction() as conn:
        assert runs.cancelled_among(conn, {a.id, b.id}) == {a.id}
        assert runs.cancelled_among(conn, set()) == set()


def test_cancel__an_invoke_after_the_cancellation_starts_no_child(harness: Harness) -> None:
    queue_runs(harness.db, 2)
    cancelled, live = claim(harness.db, OWNER, limit=2)
    with harness.db.transaction() as conn:
        runs.cancel(conn, [cancelled.id], reason="stop")
    kids = {cancelled.id: str(uuid.uuid4()), live.id: str(uuid.uuid4())}
    futures = {}
    for run in (cancelled, live):
        wait = waits.Wait(
            run.id,
            "child",
            FINISHED_EVENT_NAME,
            "data.run_id",
            json.dumps(kids[run.id]),
            None,
            run.claimed_at,
            None,
        )
        record = StepRecord("child", 0, "invoke", "waiting", 1)
        child = runs.NewRun("k", [{}], id=kids[run.id], parent_run_id=run.id)
        branch = waits.Branch(wait, accept=lambda e: True, child=child)
        futures[run.id] = harness.store.waiting(Lease(run.id, run.lease_token), record, (branch,))
    with pytest.raises(LeaseLost):
        futures[cancelled.id].result(timeout=30)
    assert futures[live.id].result(timeout=30) is None  # suspended, waiting for its child
    started = execute(harness.db, "SELECT id::text FROM orchestrator.runs WHERE function_id = 'k'")
    assert started == [(kids[live.id],)]


def test_cancel_requested__reads_the_partial_index_of_requested_cancellations(
    db: Database,
) -> None:
    queue_runs(db, 5000)
    execute(db, "ANALYZE orchestrator.runs")
    with db.transaction() as conn:
        plan = "\n".join(
            row[0] for row in driver(conn).execute("EXPLAIN " + runs._REQUESTED, {"limit": 500})
        )
    assert "runs_cancel_requested" in plan, plan
