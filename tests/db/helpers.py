from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import text

from orchestrator.db import runs
from orchestrator.db.database import Database
from orchestrator.db.direct import driver
from tests.conftest import eventually


def queue_runs(db: Database, n: int, function_id: str = "f", **kwargs: Any) -> list[str]:
    with db.transaction() as conn:
        return runs.create_many(conn, [runs.NewRun(function_id, [{"i": i}]) for i in range(n)])


def claim(
    db: Database,
    owner: str,
    limit: int = 10,
    fids: tuple[str, ...] = ("f",),
    lease: float = 30.0,
    *,
    suspects: bool = False,
) -> list[runs.ClaimedRun]:
    with db.transaction() as conn:
        return runs.claim_due(
            conn,
            owner=owner,
            limit=limit,
            lease_seconds=lease,
            function_ids=list(fids),
            suspects=suspects,
        )


def execute(db: Database, sql: str, **params: Any) -> list[Any]:
    with db.transaction() as conn:
        result = conn.execute(text(sql), params)
        return list(result) if result.returns_rows else []


def claim_plan(db: Database, *, suspects: bool = False, analyze: bool = False) -> str:
    """The plan of the claim statement, under the settings the daemon's claim connection
    carries (`runs.CLAIM_SETTINGS`)."""
    stmt = runs._CLAIM_SUSPECTS if suspects else runs._CLAIM
    params = {"owner": str(uuid.uuid4()), "limit": 10, "lease": 30.0, "fids": ["f", "g"]}
    params["now"] = None
    with db.transaction() as conn:
        raw = driver(conn)
        for name, value in runs.CLAIM_SETTINGS.items():
            raw.execute("SELECT set_config(%s, %s, true)", (name, value))
        explain = "EXPLAIN (ANALYZE, BUFFERS) " if analyze else "EXPLAIN "
        return "\n".join(str(row[0]) for row in raw.execute(explain + stmt, params))


def blocked_by(db: Database, holder_pid: int) -> list[int]:
    """The backends waiting for a lock that the backend `holder_pid` holds."""
    rows = execute(
        db,
        "SELECT pid FROM pg_stat_activity WHERE CAST(:holder AS int) = ANY(pg_blocking_pids(pid))",
        holder=holder_pid,
    )
    return [int(row[0]) for row in rows]


def wait_until_blocked(db: Database, holder_pid: int, what: str) -> list[int]:
    """Poll until some backend waits for a lock of `holder_pid`; returns the waiting pids.
    Releasing the lock only after this makes a test of waiting prove that it waited."""
    return eventually(lambda: blocked_by(db, holder_pid), timeout=20, what=what)


def advisory_waiters(db: Database) -> int:
    """How many transactions of this database wait for an advisory lock."""
    (row,) = execute(
        db,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    return int(row[0])
