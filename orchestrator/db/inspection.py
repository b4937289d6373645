"""What `orchestrator.testing` reads back: runs in creation order with their steps, events,
and the next moment something falls due (a run, a cron tick, a run's timeout). Plain reads of
the documented tables; nothing here is on the daemon's path."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.db.runs import RUN_COLUMNS, RunRow

_NOW = clock.SQL_TEXT

# The earliest future due time of a run that waits for it (queued, sleeping, waiting: a
# sleep's end, a wait's timeout, a retry's back-off, a delayed start) or of a cron schedule.
# What is due already is not "next": a run held back by its flow control stays due.
_NEXT_DUE = text(
    "SELECT least("
    "(SELECT min(due_at) FROM orchestrator.runs WHERE status IN ('queued', 'sleeping', "
    f"'waiting') AND due_at > {_NOW}), "
    f"(SELECT min(next_fire_at) FROM orchestrator.schedules WHERE next_fire_at > {_NOW}))"
)


def next_due(conn: Connection) -> datetime | None:
    value: datetime | None = conn.execute(_NEXT_DUE, {"p_now": clock.current()}).scalar()
    return value


# The earliest future moment a run of one function passes its `timeouts` (the deadlines the
# leader's upkeep judges by: db/flow.py `past_timeouts`), for the runs not yet past them.
_NEXT_TIMEOUT = text(
    "SELECT least("
    "(SELECT min(greatest(created_at, due_at) + make_interval(secs => :p_start)) "
    " FROM orchestrator.runs WHERE CAST(:p_start AS float8) IS NOT NULL "
    " AND function_id = :p_fid AND status = 'queued' AND started_at IS NULL "
    " AND cancel_requested_at IS NULL "
    f" AND greatest(created_at, due_at) + make_interval(secs => :p_start) > {_NOW}), "
    "(SELECT min(started_at + make_interval(secs => :p_finish)) "
    " FROM orchestrator.runs WHERE CAST(:p_finish AS float8) IS NOT NULL "
    " AND function_id = :p_fid "
    " AND status IN ('queued', 'running', 'sleeping', 'waiting') "
    " AND cancel_requested_at IS NULL "
    f" AND started_at + make_interval(secs => :p_finish) > {_NOW}))"
)


def next_timeout(
    conn: Connection, function_id: str, *, start: float | None, finish: float | None
) -> datetime | None:
    """When a run of the function next passes its start or finish timeout, if one will."""
    params = {"p_fid": function_id, "p_start": start, "p_finish": finish}
    value: datetime | None = conn.execute(
        _NEXT_TIMEOUT, {**params, "p_now": clock.current()}
    ).scalar()
    return value


def runs_in_order(
    conn: Connection, *, function_id: str | None = None, status: str | None = None
) -> list[RunRow]:
    """Every run (of `function_id`, with `status`), oldest first."""
    rows = conn.execute(
        text(
            f"SELECT {RUN_COLUMNS} FROM orchestrator.runs "
            "WHERE (CAST(:p_status AS text) IS NULL OR status = :p_status) "
            "AND (CAST(:p_fid AS text) IS NULL OR function_id = :p_fid) "
            "ORDER BY created_at, id"
        ),
        {"p_status": status, "p_fid": function_id},
    )
    return [RunRow(*row) for row in rows]


@dataclass(frozen=True)
class EventRow:
    id: str
    name: str
    data: dict[str, Any]
    ts: datetime
    received_at: datetime
    ingested_at: datetime | None
    error: str | None


def events_in_order(
    conn: Connection, *, name: str | None = None, ids: list[str] | None = None
) -> list[EventRow]:
    """Every event (named `name`, among `ids`), in the order they were received."""
    rows = conn.execute(
        text(
            "SELECT id, name, data, ts, received_at, ingested_at, error FROM orchestrator.events "
            "WHERE (CAST(:p_name AS text) IS NULL OR name = :p_name) "
            "AND (CAST(:p_ids AS text[]) IS NULL OR id = ANY(CAST(:p_ids AS text[]))) "
            "ORDER BY seq"
        ),
        {"p_name": name, "p_ids": ids},
    )
    return [EventRow(*row) for row in rows]
