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
