"""Rescues and lease renewals. Rescued runs go back to the head of the line, ahead of every run
that has not started, so that another daemon takes them over at its next free thread, however
long the backlog; a daemon renews only the leases of the runs it executes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime

import psycopg
import pytest
from sqlalchemy import text

from orchestrator.db import runs
from orchestrator.db.database import Database
from tests.db.helpers import claim, execute, queue_runs

pytestmark = pytest.mark.timeout(60)
OWNER = str(uuid.uuid4())
DEAD = str(uuid.uuid4())


def _rescue_dead(db: Database, owner: str) -> list[runs.RequeuedRun]:
    with db.transaction() as conn:
        return runs.rescue_owner(conn, owner=owner, max_recoveries=10)


def _rescue_expired(db: Database, owner: str) -> list[runs.RequeuedRun]:
    execute(
        db,
        "UPDATE orchestrator.runs SET lease_expires_at = now() - interval '1 second' "
        "WHERE lease_owner = CAST(:owner AS uuid)",
        owner=owner,
    )
    with db.transaction() as conn:
        return runs.rescue_expired(conn, max_recoveries=10)


SWEEPS: dict[str, Callable[[Database, str], list[runs.RequeuedRun]]] = {
    "dead daemon": _rescue_dead,
    "expired lease": _rescue_expired,
}


@pytest.mark.parametrize("sweep", list(SWEEPS))
def test_rescue__runs_go_ahead_of_runs_made_earlier_that_never_started(
    db: Database, db_url: str, sweep: str
) -> None:
    # A run is due from the start of the transaction that made it. An ingest that started
    # first but commits last (here: `slow`) makes runs due before the ones another daemon
    # already made, claimed and was executing when it died.
    with psycopg.connect(db_url) as slow:
        slow.execute("SELECT now()")  # its transaction, and so its runs' due time, starts
        queue_runs(db, 3)
        held = [c.id for c in claim(db, DEAD, limit=3)]
        never_started = runs.create_many(slow, [runs.NewRun("f", [{"i": i}]) for i in range(5)])
        slow.commit()
    assert len(held) == 3
    assert sorted(r.id for r in SWEEPS[sweep](db, DEAD)) == sorted(held)

    # taken over first, in the order they were made; the backlog after them
    taken = [c.id for _ in range(8) for c in claim(db, OWNER, limit=1)]
    assert taken == sorted(held, key=_made_order(db)) + never_started


@pytest.mark.parametrize("sweep", list(SWEEPS))
def test_rescue__run_rescued_again_does_not_wait_behind_the_backlog(
    db: Database, sweep: str
) -> None:
    queue_runs(db, 1)
    [run] = claim(db, DEAD)
    SWEEPS[sweep](db, DEAD)  # its first rescue
    second = str(uuid.uuid4())
    assert [c.id for c in claim(db, second)] == [run.id]
    backlog = queue_runs(db, 5)

    [rescued] = SWEEPS[sweep](db, second)  # its daemon died too

    assert (rescued.id, rescued.status) == (run.id, "queued")
    assert execute(db, "SELECT recoveries FROM orchestrator.runs WHERE id = :id", id=run.id) == [
        (2,)
    ]
    assert [c.id for c in claim(db, OWNER, limit=1)] == [run.id]
    assert sorted(c.id for c in claim(db, OWNER)) == sorted(backlog)


def test_requeue_crashed__run_crashing_again_backs_off(db: Database) -> None:
    queue_runs(db, 1)
    execute(db, "UPDATE orchestrator.runs SET recoveries = 3")
    [run] = claim(db, OWNER)
    with db.transaction() as conn:  # read in the requeue's transaction: the same now()
        runs.requeue_crashed(conn, [(run.id, run.lease_token)], max_recoveries=10)
        delay = conn.execute(
            text("SELECT extract(epoch FROM due_at - now()) FROM orchestrator.runs")
        ).scalar_one()
    assert float(delay) == 4.0  # the 4th interruption waits 2**(4-2) seconds


def test_rescue__run_already_ahead_of_the_line_is_due_from_its_created_at(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, DEAD)
    queue_runs(db, 3)  # a backlog made after it
    _rescue_dead(db, DEAD)
    due = execute(db, "SELECT due_at = created_at FROM orchestrator.runs WHERE id = :id", id=run.id)
    assert due == [(True,)]
    assert [c.id for c in claim(db, OWNER, limit=1)] == [run.id]


def _made_order(db: Database) -> Callable[[str], datetime]:
    made: dict[str, datetime] = dict(
        execute(db, "SELECT id::text, created_at FROM orchestrator.runs")
    )
    return made.__getitem__


def test_rescue__finds_the_head_of_the_line_by_the_due_index(db: Database) -> None:
    queue_runs(db, 2000)
    execute(db, "ANALYZE orchestrator.runs")
    params = {"p_owner": DEAD, "p_cap": 5, "p_limit": 10, "p_now": None}
    with db.transaction() as conn:
        plan = "\n".join(
            row[0] for row in conn.execute(text("EXPLAIN " + runs._RESCUE_OWNER.text), params)
        )
    # the first entry of the due index, not a scan of every run in line
    assert "Scan using runs_due on runs" in plan, plan


def test_renew_leases__extends_only_the_runs_named(db: Database) -> None:
    queue_runs(db, 2)
    executing, unknown = (c.id for c in claim(db, OWNER, limit=2, lease=0.5))
    with db.transaction() as conn:
        held = runs.renew_leases(conn, owner=OWNER, run_ids={executing}, lease_seconds=60)
    assert held == {executing}
    execute(db, "SELECT pg_sleep(0.6)")
    assert [r.id for r in _rescue_expired_now(db)] == [unknown]


def test_renew_leases__nothing_named_renews_nothing(db: Database) -> None:
    queue_runs(db, 1)
    claim(db, OWNER)
    with db.transaction() as conn:
        assert runs.renew_leases(conn, owner=OWNER, run_ids=set(), lease_seconds=60) == set()


def _rescue_expired_now(db: Database) -> list[runs.RequeuedRun]:
    with db.transaction() as conn:
        return runs.rescue_expired(conn, max_recoveries=10)
