"""Runs made directly with the engine's statements (no daemon needed to have one to act on)."""

from __future__ import annotations

import uuid
from typing import Any

from orchestrator.db import runs
from orchestrator.db.database import Database
from tests.e2e.harness import scalar, sql


def queued_run(db_url: str, data: dict[str, Any] | None = None) -> str:
    """A queued run of `ui-test/fn` (no daemon serves it, so it stays queued)."""
    event = {"id": str(uuid.uuid4()), "name": "ui/test", "data": data or {}, "ts": 0}
    db = Database(db_url, pool_size=1)
    try:
        made = db.run(lambda conn: runs.create_many(conn, [runs.NewRun("ui-test/fn", [event])]))
    finally:
        db.dispose()
    return made[0]


def status(db_url: str, run_id: str) -> str:
    return str(scalar(db_url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def actions(db_url: str, **where: str) -> list[tuple[Any, ...]]:
    """(actor, via, action, run_id, new_run_id, event_id) of the ui_actions rows matching."""
    clause = " AND ".join(f"{k}::text = %s" for k in where) or "true"
    return sql(
        db_url,
        "SELECT actor, via, action, run_id::text, new_run_id::text, event_id "
        f"FROM orchestrator.ui_actions WHERE {clause} ORDER BY id",
        tuple(where.values()),
    )
