from __future__ import annotations

import uuid

import pytest

from orchestrator.db import daemons, runs
from orchestrator.db.database import Database
from tests.conftest import eventually
from tests.db.helpers import execute, queue_runs

pytestmark = pytest.mark.timeout(60)


def _register(db: Database, daemon_id: str) -> int:
    with db.transaction() as conn:
        return daemons.register(
            conn,
            daemon_id,
            hostname="h",
            pid=1,
            app="m:app",
            version="v",
            workers=1,
            concurrency=1,
        )


def test_elect__one_leader_until_its_term_expires(db: Database) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as conn:
        assert daemons.elect(conn, a, ttl=60)
        assert not daemons.elect(conn, b, ttl=60)
        assert daemons.elect(conn, a, ttl=60)  # the leader extends its own term
    execute(db, "UPDATE orchestrator.leader SET expires_at = now() - interval '1 second'")
    with db.transaction() as conn:
        assert daemons.elect(conn, b, ttl=60)
        assert not daemons.elect(conn, a, ttl=60)


def test_resign__lets_another_daemon_lead_at_once(db: Database) -> None:
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    with db.transaction() as conn:
        assert daemons.elect(conn, a, ttl=60)
        daemons.resign(conn, a)
        assert daemons.elect(conn, b, ttl=60)


def test_heartbeat__reports_the_previous_status(db: Database) -> None:
    daemon_id = str(uuid.uuid4())
    _register(db, daemon_id)
    with db.transaction() as conn:
        daemons.mark_dead(conn, daemon_id)
        assert daemons.heartbeat(conn, daemon_id, is_leader=False, status="running") == "dead"
        assert daemons.heartbeat(conn, daemon_id, is_leader=True, status="running") == "running"
        assert daemons.heartbeat(conn, str(uuid.uuid4()), is_leader=False, status="x") is None


def test_is_lock_free__false_while_a_session_holds_it(db: Database, db_url: str) -> None:
    import psycopg

    key = _register(db, str(uuid.uuid4()))
    with db.transaction() as conn:
        assert daemons.is_lock_free(conn, key)
    with psycopg.connect(db_url, autocommit=True) as holder:
        holder.execute("SELECT pg_advisory_lock(%s, %s)", (daemons.DAEMON_LOCK_CLASS, key))
        with db.transaction() as conn:
            assert not daemons.is_lock_free(conn, key)

    def freed() -> bool:
        with db.transaction() as conn:
            return daemons.is_lock_free(conn, key)

    # the server releases the lock when the holder's backend exits, just after the disconnect
    eventually(freed, timeout=10, what="the lock freed once its holder disconnected")


def test_fail_unknown_functions__only_runs_of_unregistered_functions(db: Database) -> None:
    from orchestrator.db import functions

    with db.transaction() as conn:
        functions.upsert(conn, "known", triggers=[], options={}, version="v")
    queue_runs(db, 2, function_id="known")
    [stray] = queue_runs(db, 1, function_id="'; DROP TABLE orchestrator.runs; --")
    with db.transaction() as conn:
        failed = runs.fail_unknown_functions(conn)
    assert [r.id for r in failed] == [stray]
    status, error = execute(
        db, "SELECT status, error FROM orchestrator.runs WHERE id = CAST(:i AS uuid)", i=stray
    )[0]
    assert status == "failed"
    assert error["code"] == "unknown_function"
    assert "DROP TABLE" in error["message"]
    assert execute(db, "SELECT count(*) FROM orchestrator.runs WHERE status = 'queued'")[0][0] == 2
