"""The due-queue probe behind orchestrator_due_runs and orchestrator_due_lag_seconds."""

from __future__ import annotations

import uuid

import pytest

from orchestrator.db import backlog
from orchestrator.db.database import Database
from orchestrator.db.direct import driver
from tests.db.helpers import claim, execute, queue_runs

pytestmark = pytest.mark.timeout(60)


def _due_ago(db: Database, function_id: str, seconds: float) -> None:
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() - make_interval(secs => :s) "
        "WHERE function_id = :f",
        s=seconds,
        f=function_id,
    )


def probe(db: Database, fids: list[str], cap: int = 10_000) -> dict[str, backlog.DueBacklog]:
    with db.transaction() as conn:
        return {b.function_id: b for b in backlog.due_backlog(conn, fids, cap=cap)}


def test_due_backlog__depth_and_lag_of_due_runs_only(db: Database) -> None:
    queue_runs(db, 4, "f")
    _due_ago(db, "f", 30)
    queue_runs(db, 2, "f")  # due now
    queue_runs(db, 3, "later")
    execute(
        db,
        "UPDATE orchestrator.runs SET status = 'sleeping', due_at = now() + interval '1 hour' "
        "WHERE function_id = 'later'",
    )
    claim(db, str(uuid.uuid4()), limit=1, fids=("f",))  # running: not in the queue

    found = probe(db, ["f", "later", "idle"])
    assert found["f"].depth == 5
    assert 29.0 < found["f"].lag_seconds < 60.0
    assert (found["later"].depth, found["later"].lag_seconds) == (0, 0.0)
    assert (found["idle"].depth, found["idle"].lag_seconds) == (0, 0.0)


def test_due_backlog__depth_is_capped(db: Database) -> None:
    queue_runs(db, 25, "f")
    assert probe(db, ["f"], cap=10)["f"].depth == 10
    assert probe(db, ["f"], cap=100)["f"].depth == 25


def test_due_backlog__no_functions_no_statement(db: Database) -> None:
    with db.transaction() as conn:
        assert backlog.due_backlog(conn, [], cap=10) == []


def test_due_backlog__walks_the_function_due_index(db: Database) -> None:
    # a table where the probed functions' due runs are a small part of the whole
    for fid in ("f", "g"):
        queue_runs(db, 300, fid)
    queue_runs(db, 5000, "other")
    execute(
        db,
        "UPDATE orchestrator.runs SET status = 'sleeping', due_at = now() + interval '1 day' "
        "WHERE function_id = 'other'",
    )
    execute(db, "ANALYZE orchestrator.runs")
    with db.transaction() as conn:
        raw = driver(conn)
        sql = backlog._PROBE.replace(":p_fids", "%(fids)s").replace(":p_cap", "%(cap)s")
        sql = sql.replace(":p_now", "%(now)s")
        params = {"fids": ["f", "g"], "cap": 10_000, "now": None}
        rows = raw.execute("EXPLAIN " + sql, params).fetchall()
    plan = "\n".join(str(r[0]) for r in rows)
    assert "runs_function_due" in plan
    assert "Seq Scan on runs" not in plan
