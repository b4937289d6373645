from __future__ import annotations

from typing import Any

from sqlalchemy import text

from orchestrator.db import runs
from orchestrator.db.database import Database


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
