"""The group committer's drain: a stopping worker waits for the runs' ends its threads handed
over (they no longer wait for their own commits), on a real database."""

from __future__ import annotations

import uuid

import psycopg
import pytest

from orchestrator.db.checkpoints import GroupWrite
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.commit import GroupCommitter
from orchestrator.engine.store import RunStore
from tests.db.helpers import claim, execute, queue_runs

pytestmark = pytest.mark.timeout(60)


def test_drain__waits_for_the_writes_handed_over__and_says_when_it_timed_out(
    db: Database,
) -> None:
    queue_runs(db, 3)
    claimed = claim(db, str(uuid.uuid4()), limit=3)
    committer = GroupCommitter(Direct(db.url, application_name="test-commit"), retry_for=5.0)
    assert committer.drain(timeout=1.0)  # nothing handed over: drained at once
    with psycopg.connect(libpq_url(db.url)) as blocker:
        # another transaction holds one run's row: the group's fenced write waits for it
        blocker.execute(
            "SELECT 1 FROM orchestrator.runs WHERE id = %s FOR UPDATE", (claimed[0].id,)
        )
        done = [
            committer.commit(
                GroupWrite(c.id, c.lease_token, final_status="completed", output_json="1")
            )
            for c in claimed
        ]
        assert not committer.drain(timeout=0.3)  # still committing
        assert not all(d.done() for d in done)
        blocker.rollback()
    assert committer.drain(timeout=10.0)
    assert [d.result(timeout=0) for d in done] == [True] * 3
    statuses = execute(db, "SELECT status, count(*) FROM orchestrator.runs GROUP BY status")
    assert statuses == [("completed", 3)]
    committer.direct.close()


def test_a_stores_group_writes__one_generic_plan__never_planned_again(db: Database) -> None:
    """Groups of one write cost less to plan for their own size than the generic plan is
    estimated at, so Postgres would plan each one again (a millisecond or more); the store's
    committer keeps the generic plan, which looks each run up by its id."""
    queue_runs(db, 8)
    claimed = claim(db, str(uuid.uuid4()), limit=8)
    store = RunStore(db, retry_for=5.0)
    try:
        store.warm()
        for c in claimed:  # one at a time: a group of one each
            write = GroupWrite(c.id, c.lease_token, final_status="completed", output_json="1")
            assert store.committer.commit(write).result(timeout=10) is True
        assert store.committer.drain(timeout=10.0)
        conn = store.committer.direct.connection()  # idle now: the committer thread waits
        plans = conn.execute(
            "SELECT sum(generic_plans), sum(custom_plans) FROM pg_prepared_statements "
            "WHERE statement LIKE '%%orchestrator.steps%%'"
        ).fetchone()
    finally:
        store.close()
    assert plans is not None and plans[0] >= 8 and plans[1] == 0, plans
    statuses = execute(db, "SELECT status, count(*) FROM orchestrator.runs GROUP BY status")
    assert statuses == [("completed", 8)]
