"""The ingest of plain events in SQL: the statement that makes their runs on the server, so
that the ingest of a batch needs no answer before its COMMIT (runtime/ingest.py).

An event is plain when every function it triggers is plain (an event trigger without an `if`
expression, no flow control that acts when a run is made or claimed, no `cancel_on`), it is
not over `max_event_bytes`, and no wait or cancellation condition is stored for its name. A
batch of plain events is ingested by one statement: marked ingested, and a run made for each
of its functions, the same rows as the ingest in Python makes (`runs.create_many`). A batch
with any other event is left alone by it, for the ingest in Python.

It runs after `events.claim_pending_sent` in the same transaction, so it reads the events that
statement took (`events.PENDING_SEQS`), and its look at `waits` is taken under their names'
exclusive locks (db/waits.py): a wait stored after it is stored after this ingest commits,
and finds the event by its look back. It plans with the settings of the daemon's direct
connection (`runs.CLAIM_SETTINGS`): one statement fewer than changing them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver
from orchestrator.db.events import PENDING_SEQS


@dataclass(frozen=True)
class PlainTriggers:
    """What the statement needs of the registry: the (event name, function) pairs of plain
    functions, in the order a run is made for them, and the names with any other trigger."""

    names: list[str]
    function_ids: list[str]
    others: list[str]


NOW = clock.SQL_BINARY
# `ts` as Python's isoformat() writes it (an event's payload, db/events.py `event_payload`)
_ISO_TS = (
    "to_char(ev.ts, 'YYYY-MM-DD\"T\"HH24:MI:SS') || CASE WHEN mod(extract(microseconds FROM "
    "ev.ts)::bigint, 1000000) = 0 THEN '' ELSE to_char(ev.ts, '.US') END || to_char(ev.ts, "
    "'TZH:TZM')"
)

_INGEST = f"""
    WITH ev AS MATERIALIZED (
        SELECT id, name, data, ts, seq, octet_length(data::text) AS size, trace_context
        FROM orchestrator.events WHERE seq = ANY({PENDING_SEQS})
    ),
    plain AS MATERIALIZED (
        SELECT count(*) > 0 AND NOT EXISTS (
                   SELECT FROM ev
                   WHERE ev.name = ANY(%(others)b::text[])
                      OR (ev.size > %(max_bytes)b::bigint
                          AND NOT starts_with(ev.name, 'orchestrator/')))
               AND NOT EXISTS (
                   SELECT FROM (SELECT DISTINCT name FROM ev) n
                   WHERE EXISTS (SELECT FROM orchestrator.waits w WHERE w.event_name = n.name))
               AS yes
        FROM ev
    ),
    marked AS (
        UPDATE orchestrator.events SET ingested_at = {NOW}
        WHERE seq = ANY(ARRAY(SELECT seq FROM ev)) AND (SELECT yes FROM plain)
    ),
    new AS (
        SELECT ev.*, t.fid, row_number() OVER (ORDER BY ev.seq, t.n) AS n,
               count(*) OVER () AS total
        FROM ev
        JOIN unnest(%(names)b::text[], %(fids)b::text[]) WITH ORDINALITY AS t(name, fid, n)
          ON t.name = ev.name
        WHERE (SELECT yes FROM plain)
    ),
    made AS (
        INSERT INTO orchestrator.runs
            (id, function_id, event_id, events, idempotency_key, created_at, due_at, status,
             trace_context)
        SELECT gen_random_uuid(), ev.fid, ev.id,
               jsonb_build_array(jsonb_build_object(
                   'id', ev.id, 'name', ev.name, 'data', ev.data, 'ts', {_ISO_TS})),
               'event:' || ev.id,
               -- a microsecond apart, in the order of the events, as runs.create_many
               {NOW} - (ev.total - ev.n) * interval '1 microsecond',
               {NOW} - (ev.total - ev.n) * interval '1 microsecond',
               'queued',
               -- the sender's trace context, as the ingest in Python copies it (an object)
               CASE WHEN jsonb_typeof(ev.trace_context) = 'object'
                         AND ev.trace_context <> '{{}}'::jsonb
                    THEN ev.trace_context END
        FROM new ev
        ORDER BY ev.n
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT (SELECT yes FROM plain), (SELECT count(*) FROM made)
    """


def ingest_sent(conn: Conn, triggers: PlainTriggers, *, max_bytes: int) -> Callable[[], int | None]:
    """Ingest the events this transaction took if they are all plain. Sent now; call the
    result for the number of runs made, or None if the batch was not plain (nothing was
    written: it is the Python ingest's)."""
    params = {
        "names": triggers.names,
        "fids": triggers.function_ids,
        "others": triggers.others,
        "max_bytes": max_bytes,
        "now": clock.current(),
    }
    cursor = driver(conn).execute(_INGEST, params, prepare=True)

    def fetch() -> int | None:
        row = cursor.fetchone()
        assert row is not None
        plain, made = row
        return int(made) if plain else None

    return fetch


# Hint every daemon (at commit) if a run made from the events this transaction took is still
# queued: the ingest's own claim did not take it. OFFSET 0: see runs.notify_if_queued.
_NOTIFY_QUEUED = f"""
    SELECT pg_notify('orchestrator_runs', '')
    WHERE EXISTS (
        SELECT FROM orchestrator.events e
        CROSS JOIN LATERAL (SELECT r.status FROM orchestrator.runs r
                            WHERE r.event_id = e.id OFFSET 0) made
        WHERE e.seq = ANY({PENDING_SEQS}) AND made.status = 'queued'
    )
    """


def notify_if_queued(conn: Conn) -> None:
    """`runs.notify_if_queued` for the events this transaction took."""
    driver(conn).execute(_NOTIFY_QUEUED, prepare=True)
