"""The operators' views: their columns are a documented contract, and they read what the
tables hold."""

from __future__ import annotations

import pytest

from orchestrator.db import runs
from orchestrator.db.database import Database
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(60)

RUN_OVERVIEW = [
    "run_id", "function_id", "status", "event_name", "event_id", "event_count", "attempts",
    "recoveries", "priority", "parent_run_id", "daemon_id", "created_at", "started_at",
    "finished_at", "due_at", "queued_for", "duration", "error_code", "error_type",
    "error_message", "cancel_requested_at", "last_step", "last_step_kind", "last_step_status",
    "steps", "origin", "origin_run_id", "resumes",
]  # fmt: skip
WAITING_RUNS = [
    "run_id", "function_id", "status", "step_id", "kind", "event_name", "match_path",
    "match_value", "expression", "since", "expires_at", "waiting_since", "waiting_for",
    "branch",
]  # fmt: skip


def _columns(db: Database, view: str) -> list[str]:
    rows = execute(
        db,
        "SELECT column_name FROM information_schema.columns WHERE table_schema = "
        "'orchestrator' AND table_name = :v ORDER BY ordinal_position",
        v=view,
    )
    return [row[0] for row in rows]


def test_views__columns_are_the_documented_ones(db: Database) -> None:
    assert _columns(db, "run_overview") == RUN_OVERVIEW
    assert _columns(db, "waiting_runs") == WAITING_RUNS


def test_run_overview__timings_error_and_last_step(db: Database) -> None:
    with db.transaction() as conn:
        [run_id] = runs.create_many(
            conn, [runs.NewRun("f", [{"id": "e1", "name": "shop/order", "data": {}}], "e1")]
        )
    execute(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) VALUES "
        "(CAST(:r AS uuid), 'a', 0, 'run', 'completed'), "
        "(CAST(:r AS uuid), 'b', 1, 'run', 'failed')",
        r=run_id,
    )
    execute(
        db,
        "UPDATE orchestrator.runs SET status = 'failed', started_at = created_at + "
        "interval '2 seconds', finished_at = created_at + interval '5 seconds', error = "
        '\'{"code": "step_failed", "type": "StepError", "message": "boom"}\' '
        "WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    [row] = execute(
        db,
        "SELECT status, event_name, event_count, extract(epoch FROM queued_for), "
        "extract(epoch FROM duration), error_code, error_message, last_step, steps "
        "FROM orchestrator.run_overview WHERE run_id = CAST(:r AS uuid)",
        r=run_id,
    )
    assert tuple(row) == ("failed", "shop/order", 1, 2, 3, "step_failed", "boom", "b", 2)


def test_waiting_runs__what_a_run_waits_for(db: Database) -> None:
    with db.transaction() as conn:
        [run_id] = runs.create_many(conn, [runs.NewRun("f", [{"data": {"order": 7}}])])
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) VALUES (CAST(:r AS uuid), 'paid', 'event', 'payment/received', "
        "'data.order', '7', now())",
        r=run_id,
    )
    [row] = execute(
        db,
        "SELECT function_id, step_id, event_name, match_path, match_value "
        "FROM orchestrator.waiting_runs WHERE run_id = CAST(:r AS uuid)",
        r=run_id,
    )
    assert tuple(row) == ("f", "paid", "payment/received", "data.order", 7)


def test_run_overview__a_run_is_found_by_its_key(db: Database) -> None:
    with db.transaction() as conn:
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
        plan = "\n".join(
            row[0]
            for row in conn.exec_driver_sql(
                "EXPLAIN SELECT * FROM orchestrator.run_overview "
                "WHERE run_id = '00000000-0000-0000-0000-000000000001'"
            )
        )
    assert "runs_pkey" in plan and "steps_pkey" in plan
