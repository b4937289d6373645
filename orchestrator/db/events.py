"""Statements on `orchestrator.events`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.db import clock, outbox
from orchestrator.db.direct import Conn, driver
from orchestrator.db.ops import Op, Query


@dataclass(frozen=True)
class PendingEvent:
    id: str
    name: str
    data: Any
    ts: datetime
    size: int
    received_at: datetime
    seq: int
    trace_context: dict[str, str] | None = None  # the sender's (orchestrator/tracecontext.py)


@dataclass(frozen=True)
class NewEvent:
    """An event to record, checked and encoded (see orchestrator/client.py)."""

    id: str
    name: str
    data_json: str
    ts: datetime | None = None  # None: the time it is recorded
    trace_context: str | None = None  # the sender's, as JSON (orchestrator/tracecontext.py)


@dataclass(frozen=True)
class EventRow:
    id: str
    seq: int
    name: str
    data: Any
    ts: datetime
    received_at: datetime
    ingested_at: datetime | None
    error: str | None


# Rows are numbered in the order given so that `seq` (the order of ingestion) follows it. An id
# already in the table, or repeated within the statement, is a duplicate: DO NOTHING skips it.
# Times travel as text: a list mixing naive and aware datetimes cannot be one typed array.
_INSERT_NEW = """
    INSERT INTO orchestrator.events (id, name, data, ts, received_at, trace_context)
    SELECT i, n, d::jsonb, coalesce(t::timestamptz, coalesce(%(now)s::timestamptz, now())),
           coalesce(%(now)s::timestamptz, now()), c::jsonb
    FROM unnest(%(ids)s::text[], %(names)s::text[], %(datas)s::text[], %(times)s::text[],
                %(traces)s::text[])
         WITH ORDINALITY AS e(i, n, d, t, c, o)
    ORDER BY o
    ON CONFLICT (id) DO NOTHING
    RETURNING id
    """


def insert_op(batch: list[NewEvent]) -> Op[set[str]]:
    """Insert `batch` in one statement; returns the ids that were created."""
    params = {
        "ids": [e.id for e in batch],
        "names": [e.name for e in batch],
        "datas": [e.data_json for e in batch],
        "times": [None if e.ts is None else e.ts.isoformat() for e in batch],
        "traces": [e.trace_context for e in batch],
        "now": clock.current(),
    }
    rows = yield Query(_INSERT_NEW, params)
    return {row[0] for row in rows}


def insert(
    conn: Conn,
    name: str,
    data_json: str,
    *,
    event_id: str | None,
    ts: datetime | None,
    trace_context: str | None = None,
) -> tuple[str, bool]:
    """Insert one event; returns (id, created). A known id is a duplicate and inserts nothing.
    `trace_context`: the sender's, as JSON (orchestrator/tracecontext.py)."""
    event = NewEvent(event_id or str(uuid.uuid4()), name, data_json, ts, trace_context)
    return event.id, event.id in outbox.run(insert_op([event]), conn)


def insert_many(
    conn: Conn, events: list[tuple[str, str, str]], *, trace_context: str | None = None
) -> int:
    """Insert (id, name, data JSON) events, each with `trace_context` (JSON); ids already
    present are duplicates, skipped. Returns how many were inserted."""
    if not events:
        return 0
    batch = [NewEvent(i, n, d, None, trace_context) for i, n, d in events]
    return len(outbox.run(insert_op(batch), conn))


# The events not yet ingested, oldest first, that no other ingest holds (both claims).
_PENDING = """
        SELECT id, name, data, ts, octet_length(data::text) AS size, received_at, seq,
               trace_context
        FROM orchestrator.events
        WHERE ingested_at IS NULL
        ORDER BY seq
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED"""

_CLAIM = f"""
    SELECT id, name, CASE WHEN size <= %(max_bytes)s OR name LIKE 'orchestrator/%%' THEN data END
           AS data, ts, size, received_at, seq, trace_context
    FROM ({_PENDING}
    ) pending
    """


def claim_pending(conn: Conn, limit: int, *, max_bytes: int = 2**31 - 1) -> list[PendingEvent]:
    """Lock up to `limit` events not yet ingested, oldest first; the caller marks them.

    The data of an event over `max_bytes` is not fetched (it will be parked unread). Like
    every statement of the ingest (the daemon runs them on its direct connection), `conn` may
    be a psycopg or an SQLAlchemy connection.
    """
    params = {"limit": limit, "max_bytes": max_bytes}
    rows = driver(conn).execute(_CLAIM, params, prepare=True).fetchall()
    return [PendingEvent(*row) for row in rows]


# The ingest's first statement: the events it takes (as `_CLAIM`), the exclusive advisory
# locks of their names and the shared locks of the names their functions' `cancel_on`
# conditions watch (`watched`: pairs of a trigger name and a watched name), all taken in key
# order like every other holder's (db/waits.py), and their
# `seq`s noted in a setting local to the transaction, so that statements sent in the same round
# trip can read the same events (`waits.candidates_pending`): those statements start after this
# one has taken the locks, so they see every wait stored before (a statement's snapshot is
# taken when it starts, which is why the lookup cannot be a part of this one).
_CLAIM_LOCKING = f"""
    WITH pending AS MATERIALIZED ({_PENDING}
    ),
    locked AS MATERIALIZED (
        SELECT count(CASE WHEN keys.mine THEN pg_advisory_xact_lock(%(cls)s, keys.k)
                          ELSE pg_advisory_xact_lock_shared(%(cls)s, keys.k) END) AS n
        FROM (SELECT hashtext(l.name) AS k, bool_or(l.mine) AS mine
              FROM (SELECT DISTINCT name, true AS mine FROM pending
                    UNION ALL
                    SELECT w.watched, false
                    FROM unnest(%(triggers)b::text[], %(watched)b::text[]) AS w(name, watched)
                    WHERE w.name IN (SELECT name FROM pending)) l
              GROUP BY 1 ORDER BY 1) keys
    ),
    noted AS MATERIALIZED (
        SELECT set_config('orchestrator.ingesting', coalesce(array_agg(seq)::text, '{{}}'), true)
        FROM pending
    )
    SELECT p.id, p.name,
           CASE WHEN p.size <= %(max_bytes)s OR starts_with(p.name, 'orchestrator/') THEN p.data
           END,
           p.ts, p.size, p.received_at, p.seq, p.trace_context
    FROM pending p CROSS JOIN locked CROSS JOIN noted
    ORDER BY p.seq
    """
# An array made once per statement (an InitPlan): `seq = ANY(...)` of it is an index
# condition, where the setting's text cast to an array would be parsed again for each row of
# a sequential scan (160 ms for 10,000 events).
PENDING_SEQS = (
    "ARRAY(SELECT unnest(coalesce(nullif(current_setting('orchestrator.ingesting', true), ''), "
    "'{}')::bigint[]))"
)
"""SQL for the `seq`s of the events `claim_pending_sent` took in this transaction."""


def claim_pending_sent(
    conn: Conn,
    limit: int,
    *,
    max_bytes: int,
    lock_class: int,
    watched: tuple[list[str], list[str]] = ([], []),
) -> Callable[[], list[PendingEvent]]:
    """`claim_pending`, also taking the exclusive advisory lock (`lock_class`, hashtext of the
    name) of each name among them and the shared lock of each name that `watched` (a list of
    trigger names and the list of the names their runs' `cancel_on` conditions watch, pairwise)
    pairs with one of them, and noting their `seq`s for the statements that follow
    (`PENDING_SEQS`). Sent now; call the result for the events (in pipeline mode, what is sent
    after it shares its round trip)."""
    params = {
        "limit": limit,
        "max_bytes": max_bytes,
        "cls": lock_class,
        "triggers": watched[0],
        "watched": watched[1],
    }
    cursor = driver(conn).execute(_CLAIM_LOCKING, params, prepare=True)
    return lambda: [PendingEvent(*row) for row in cursor.fetchall()]


_MATCHING_SINCE = """
    SELECT id, name, data, ts FROM orchestrator.events
    WHERE name = %(name)s AND received_at >= %(since)s AND error IS NULL
      AND CASE WHEN %(path)s::text IS NULL THEN true
               ELSE coalesce(data #> (string_to_array(%(path)s::text, '.'))[2:], 'null'::jsonb)
                    = %(value)s::jsonb END
    ORDER BY seq
    LIMIT %(limit)s
    """


def matching_since(
    conn: Conn,
    name: str,
    *,
    since: datetime,
    match_path: str | None,
    match_value_json: str,
    limit: int = 1000,
) -> list[dict[str, Any]]:
    """Events called `name` received since `since` whose `match_path` field equals the
    expected value, oldest first, as functions receive them (id, name, data, ts)."""
    params = {
        "name": name,
        "since": since,
        "path": match_path,
        "value": match_value_json,
        "limit": limit,
    }
    rows = driver(conn).execute(_MATCHING_SINCE, params).fetchall()
    return [event_payload(*row) for row in rows]


def event_payload(event_id: str, name: str, data: Any, ts: datetime) -> dict[str, Any]:
    """An event as a function receives it (`ctx.event`, a wait's result)."""
    return {"id": event_id, "name": name, "data": data, "ts": ts.isoformat()}


_MARK_INGESTED = (
    "UPDATE orchestrator.events SET ingested_at = coalesce(%(now)s::timestamptz, now()) "
    "WHERE id = ANY(%(ids)s::text[])"
)


def mark_ingested(conn: Conn, ids: list[str]) -> None:
    # Planned afresh each time, never prepared: a plan cached while the table was small (a
    # daemon starts on an empty or quiet table) is a sequential scan comparing every row with
    # every id, which stays cached as the table grows: 65-80 ms for a batch of 500 events in a
    # table of 20,000, most of a busy daemon's database time. Planned now, it probes the
    # primary key (planning it costs no measurable time).
    driver(conn).execute(_MARK_INGESTED, {"ids": ids, "now": clock.current()}, prepare=False)


def park(conn: Conn, event_id: str, reason: str) -> None:
    """Mark an event ingested with the reason it started nothing."""
    driver(conn).execute(
        "UPDATE orchestrator.events SET ingested_at = coalesce(%(now)s::timestamptz, now()), "
        "error = %(reason)s WHERE id = %(id)s",
        {"reason": reason, "id": event_id, "now": clock.current()},
    )


def get(conn: Connection, event_id: str) -> EventRow | None:
    row = conn.execute(
        text(
            "SELECT id, seq, name, data, ts, received_at, ingested_at, error "
            "FROM orchestrator.events WHERE id = :p_id"
        ),
        {"p_id": event_id},
    ).first()
    return EventRow(*row) if row else None


# The fields of an event beyond id, name, data and ts (migration 0018), set on events this
# transaction created: the gateway passes only the ids insert_op returned.
_SET_EXTRA = """
    UPDATE orchestrator.events e SET extra = x.extra::jsonb
    FROM unnest(%(ids)s::text[], %(extras)s::text[]) AS x(id, extra)
    WHERE e.id = x.id
    """


def set_extra_op(extras: dict[str, str]) -> Op[None]:
    """Record `extras` ({event id: JSON object text}) on those events."""
    if extras:
        yield Query(_SET_EXTRA, {"ids": list(extras), "extras": list(extras.values())})


def extras(conn: Connection, ids: list[str]) -> dict[str, dict[str, Any]]:
    """The extra fields of the events `ids` that have some (Inngest's `user` and `v`), for
    building the event an SDK function receives."""
    rows = conn.execute(
        text(
            "SELECT id, extra FROM orchestrator.events "
            "WHERE id = ANY(CAST(:p_ids AS text[])) AND extra IS NOT NULL"
        ),
        {"p_ids": ids},
    )
    return {row[0]: row[1] for row in rows}
