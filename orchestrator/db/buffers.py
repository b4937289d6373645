"""Statements on `orchestrator.buffered_events`: events gathered into a debounced or batched
run. The ingest adds them; the function's flow-control claim (under its lock, db/flow.py)
makes runs of them and deletes them in the same transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db.direct import Conn, driver


@dataclass(frozen=True)
class Buffered:
    function_id: str
    key: str
    event_id: str
    seq: int
    event: dict[str, Any]
    received_at: datetime


@dataclass(frozen=True)
class Group:
    """The events gathered for one key of a function."""

    key: str
    count: int
    first_at: datetime
    last_at: datetime


def add(conn: Conn, items: list[Buffered]) -> None:
    if not items:
        return
    driver(conn).execute(
        "INSERT INTO orchestrator.buffered_events "
        "(function_id, key, event_id, seq, event, received_at) "
        "SELECT f, k, e, s, j::jsonb, r FROM unnest(%s::text[], %s::text[], %s::text[], "
        "%s::bigint[], %s::text[], %s::timestamptz[]) AS t(f, k, e, s, j, r) "
        "ON CONFLICT DO NOTHING",
        (
            [i.function_id for i in items],
            [i.key for i in items],
            [i.event_id for i in items],
            [i.seq for i in items],
            [json.dumps(i.event, separators=(",", ":")) for i in items],
            [i.received_at for i in items],
        ),
    )


def groups(conn: Conn, function_id: str) -> tuple[datetime, list[Group]]:
    """The database's now, and the events gathered for the function, by key."""
    rows = (
        driver(conn)
        .execute(
            "SELECT now(), key, count(*), min(received_at), max(received_at) "
            "FROM orchestrator.buffered_events WHERE function_id = %s GROUP BY key "
            "UNION ALL SELECT now(), NULL, 0, NULL, NULL",
            (function_id,),
        )
        .fetchall()
    )
    return rows[0][0], [Group(r[1], int(r[2]), r[3], r[4]) for r in rows if r[2]]


def take(conn: Conn, function_id: str, key: str, limit: int) -> list[Buffered]:
    """Delete and return the oldest `limit` events gathered for the key, oldest first."""
    rows = driver(conn).execute(
        "DELETE FROM orchestrator.buffered_events WHERE (function_id, event_id) IN ("
        "SELECT function_id, event_id FROM orchestrator.buffered_events "
        "WHERE function_id = %s AND key = %s ORDER BY seq LIMIT %s) "
        "RETURNING function_id, key, event_id, seq, event, received_at",
        (function_id, key, limit),
    )
    return sorted((Buffered(*row) for row in rows), key=lambda b: b.seq)
