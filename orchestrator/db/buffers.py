"""Statements on `orchestrator.buffered_events`: events gathered into a debounced or batched
run. The ingest adds them; the function's flow-control claim (under its lock, db/flow.py)
makes runs of them and deletes them in the same transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver

_NOW = clock.SQL


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
        "(function_id, key, event_id, seq, event, received_at, created_at) "
        f"SELECT f, k, e, s, j::jsonb, r, {_NOW} FROM unnest(%(f)s::text[], %(k)s::text[], "
        "%(e)s::text[], %(s)s::bigint[], %(j)s::text[], %(r)s::timestamptz[]) "
        "AS t(f, k, e, s, j, r) "
        "ON CONFLICT DO NOTHING",
        {
            "f": [i.function_id for i in items],
            "k": [i.key for i in items],
            "e": [i.event_id for i in items],
            "s": [i.seq for i in items],
            "j": [json.dumps(i.event, separators=(",", ":")) for i in items],
            "r": [i.received_at for i in items],
            "now": clock.current(),
        },
    )


def groups(conn: Conn, function_id: str) -> tuple[datetime, list[Group]]:
    """The database's now, and the events gathered for the function, by key."""
    rows = (
        driver(conn)
        .execute(
            f"SELECT {_NOW}, key, count(*), min(received_at), max(received_at) "
            "FROM orchestrator.buffered_events WHERE function_id = %(f)s GROUP BY key "
            f"UNION ALL SELECT {_NOW}, NULL, 0, NULL, NULL",
            {"f": function_id, "now": clock.current()},
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
