"""The statements behind replay, resume and fork, and the Recovery operations over them."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest

from orchestrator.db import functions, runs
from orchestrator.db.database import Database
from orchestrator.errors import RunStateError, StepNotFoundError, UnknownFunctionError
from orchestrator.recovery import Recovery, Selection
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(60)

EVENT = {"id": "e1", "name": "shop/order", "data": {"user": "u1"}}


def register(db: Database, fid: str = "f", **options: object) -> None:
    with db.transaction() as conn:
        functions.upsert(conn, fid, triggers=[], options=dict(options), version="v1")


def finished_run(
    db: Database, status: str, error: dict[str, object] | None, recorded: list[tuple[str, str]]
) -> str:
    """A run of `f` that ended with `status`, with steps (id, status) at positions 0, 1, …"""
    with db.transaction() as conn:
        [run_id] = runs.create_many(conn, [runs.NewRun("f", [EVENT], "e1")])
    execute(
        db,
        "UPDATE orchestrator.runs SET status = :s, error = CAST(:e AS jsonb), attempts = 1, "
        "recoveries = 2, finished_at = now() WHERE id = CAST(:i AS uuid)",
        s=status,
        e=json.dumps(error) if error is not None else None,
        i=run_id,
    )
    for position, (step_id, step_status) in enumerate(recorded):
        execute(
            db,
            "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, output, "
            "wake_at) VALUES (CAST(:i AS uuid), :sid, :p, :k, :st, CAST(:o AS jsonb), "
            "CASE WHEN :st = 'sleeping' THEN now() + interval '1 hour' END)",
            i=run_id,
            sid=step_id,
            p=position,
            k="sleep" if step_status == "sleeping" else "run",
            st=step_status,
            o=json.dumps({"step": step_id}) if step_status == "completed" else None,
        )
    return run_id


def steps_left(db: Database, run_id: str) -> list[tuple[str, str]]:
    return [
        (r[0], r[1])
        for r in execute(
            db,
            "SELECT step_id, status FROM orchestrator.steps WHERE run_id = CAST(:i AS uuid) "
            "ORDER BY position",
            i=run_id,
        )
    ]


def run_state(db: Database, run_id: str) -> tuple[object, ...]:
    [row] = execute(
        db,
        "SELECT status, error, finished_at IS NULL, recoveries, resumes, due_at <= now() "
        "FROM orchestrator.runs WHERE id = CAST(:i AS uuid)",
        i=run_id,
    )
    return tuple(row)


def test_resume__forgets_the_failed_step_and_later_failures_keeps_the_rest(db: Database) -> None:
    register(db)
    recorded = [
        ("a", "completed"),
        ("b", "failed"),  # caught by the code (a saga): stays, so the same path is taken
        ("c", "completed"),
        ("d[x]", "failed"),  # the failure the run's error names
        ("d[y]", "completed"),
        ("d[z]", "failed"),  # another branch of the same parallel group
    ]
    run_id = finished_run(db, "failed", {"type": "E", "step": "d[x]"}, recorded)

    Recovery(db).resume(run_id[:8])

    assert steps_left(db, run_id) == [
        ("a", "completed"),
        ("b", "failed"),
        ("c", "completed"),
        ("d[y]", "completed"),
    ]
    assert run_state(db, run_id) == ("queued", None, True, 0, 1, True)


def test_resume__cancelled_run__keeps_its_sleep_forgets_retries_and_waits(db: Database) -> None:
    register(db, cancel_on=[{"event": "shop/cancelled", "match": "data.user", "if": None}])
    recorded = [("a", "completed"), ("nap", "sleeping")]
    run_id = finished_run(db, "cancelled", {"type": "RunCancelledError"}, recorded)
    other = finished_run(db, "failed", {"type": "E"}, [("a", "completed"), ("b", "retrying")])

    resumed = Recovery(db).resume_many([run_id, other])

    assert sorted(resumed.done) == sorted([run_id, other]) and resumed.refused == {}
    assert steps_left(db, run_id) == [("a", "completed"), ("nap", "sleeping")]
    assert steps_left(db, other) == [("a", "completed")]
    # the cancel_on condition watches again, for the same user
    watches = execute(
        db,
        "SELECT run_id::text, step_id, event_name, match_value FROM orchestrator.waits "
        "ORDER BY run_id",
    )
    assert sorted(w[0] for w in watches) == sorted([run_id, other])
    assert {(w[1], w[2], w[3]) for w in watches} == {("#cancel/0", "shop/cancelled", "u1")}


def test_resume__without_a_named_step__forgets_the_last_failure(db: Database) -> None:
    register(db)
    recorded = [("a", "completed"), ("b", "failed"), ("c", "completed"), ("d", "failed")]
    run_id = finished_run(db, "failed", {"type": "E"}, recorded)

    Recovery(db).resume(run_id)

    assert steps_left(db, run_id) == [("a", "completed"), ("b", "failed"), ("c", "completed")]


def test_resume__refuses_runs_not_failed_or_cancelled(db: Database) -> None:
    register(db)
    done = finished_run(db, "completed", None, [("a", "completed")])
    with pytest.raises(RunStateError, match="is completed; only failed or cancelled"):
        Recovery(db).resume(done)
    outcome = Recovery(db).resume_many([done])
    assert outcome.done == [] and "not failed or cancelled" in outcome.refused[done]
    assert steps_left(db, done) == [("a", "completed")]


def test_resume__singleton_key_taken__refused_not_failed(db: Database) -> None:
    register(db, singleton={"key": "event.data.user", "mode": "skip"})
    failed = finished_run(db, "failed", {"type": "E"}, [])
    ok = finished_run(db, "failed", {"type": "E"}, [])
    execute(db, "UPDATE orchestrator.runs SET singleton_key = 'u1' WHERE id = CAST(:i AS uuid)",
            i=failed)  # fmt: skip
    with db.transaction() as conn:
        runs.create_many(conn, [runs.NewRun("f", [EVENT], "e2", singleton_key="u1")])

    outcome = Recovery(db).resume_many([failed, ok])

    assert outcome.done == [ok]
    assert outcome.refused == {failed: "its singleton key has an active run"}
    assert run_state(db, failed)[0] == "failed"


def test_replay__new_run_same_events_fresh_steps_linked(db: Database) -> None:
    register(db, priority={"run": "event.data.user == 'u1' ? 5 : 0"})
    original = finished_run(db, "completed", None, [("a", "completed")])

    new_id = Recovery(db).replay(original)

    [row] = execute(
        db,
        "SELECT function_id, status, event_id, events, origin, origin_run_id::text, priority "
        "FROM orchestrator.runs WHERE id = CAST(:i AS uuid)",
        i=new_id,
    )
    assert tuple(row) == ("f", "queued", "e1", [EVENT], "replay", original, 5)
    assert steps_left(db, new_id) == []


def test_fork__copies_the_steps_before_the_step_and_replaces_data(db: Database) -> None:
    register(db)
    recorded = [("a", "completed"), ("b", "failed"), ("c", "completed"), ("d", "completed")]
    original = finished_run(db, "completed", None, recorded)

    new_id = Recovery(db).fork(original, "c", {"user": "u2"})

    assert steps_left(db, new_id) == [("a", "completed"), ("b", "failed")]
    [row] = execute(
        db,
        "SELECT event_id, events -> 0 -> 'data', origin, origin_run_id::text "
        "FROM orchestrator.runs WHERE id = CAST(:i AS uuid)",
        i=new_id,
    )
    assert tuple(row) == (None, {"user": "u2"}, "fork", original)
    with pytest.raises(StepNotFoundError, match="recorded no step 'zz'; its steps: 'a', 'b'"):
        Recovery(db).fork(original, "zz")


def test_replay__unregistered_function__refused(db: Database) -> None:
    original = finished_run(db, "failed", {"type": "E"}, [])
    with pytest.raises(UnknownFunctionError, match="'f' is not registered"):
        Recovery(db).replay(original)
    assert execute(db, "SELECT count(*) FROM orchestrator.runs")[0][0] == 1


def test_select__by_function_status_and_finish_time(db: Database) -> None:
    register(db)
    old = finished_run(db, "failed", {"type": "E"}, [])
    new = finished_run(db, "failed", {"type": "E"}, [])
    finished_run(db, "completed", None, [])
    execute(
        db,
        "UPDATE orchestrator.runs SET finished_at = now() - interval '3 hours' "
        "WHERE id = CAST(:i AS uuid)",
        i=old,
    )
    recovery = Recovery(db)
    assert recovery.select(Selection(("failed",), "f", since=timedelta(hours=2))) == [new]
    assert recovery.select(Selection(("failed",), "f", until=timedelta(hours=2))) == [old]
    assert recovery.select(Selection(("failed",), "g")) == []
