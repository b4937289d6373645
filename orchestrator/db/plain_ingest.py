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
from orchestrator.db.runs import DUE, STARTED_SETTING, ClaimedRun


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
    -- the lanes with room for runs started as they are made: those of which no run is due
    -- (queued, or a sleep or wait that is over), so that no new run goes before an older one
    rooms AS MATERIALIZED (
        SELECT l.lane, l.room
        FROM unnest(%(s_rooms)b::int[]) WITH ORDINALITY AS l(room, lane)
        WHERE l.room > 0 AND (SELECT yes FROM plain) AND NOT EXISTS (
            -- one probe of `runs_function_due` per function of the lane
            SELECT FROM unnest(%(s_fids)b::text[], %(s_lanes)b::int[]) AS x(fid, lane)
            CROSS JOIN LATERAL (
                SELECT FROM orchestrator.runs r
                WHERE r.function_id = x.fid AND r.{DUE} AND r.due_at <= {NOW}
                  AND r.crashes = 0 AND r.cancel_requested_at IS NULL
                LIMIT 1
            ) due
            WHERE x.lane = l.lane)
    ),
    new AS (
        SELECT ev.*, t.fid, row_number() OVER (ORDER BY ev.seq, t.n) AS n,
               count(*) OVER () AS total, s.lane
        FROM ev
        JOIN unnest(%(names)b::text[], %(fids)b::text[]) WITH ORDINALITY AS t(name, fid, n)
          ON t.name = ev.name
        LEFT JOIN unnest(%(s_fids)b::text[], %(s_lanes)b::int[]) AS s(fid, lane)
          ON s.fid = t.fid
        WHERE (SELECT yes FROM plain)
    ),
    ranked AS (  -- whether each new run starts at once: within its lane's room, in order
        SELECT new.*, coalesce(row_number() OVER (PARTITION BY new.lane ORDER BY new.n)
                               <= rooms.room, false) AS starts
        FROM new LEFT JOIN rooms ON rooms.lane = new.lane
    ),
    made AS (
        INSERT INTO orchestrator.runs
            (id, function_id, event_id, events, idempotency_key, created_at, due_at, status,
             trace_context, lease_owner, lease_token, lease_expires_at, attempts, started_at,
             updated_at)
        SELECT gen_random_uuid(), ev.fid, ev.id,
               jsonb_build_array(jsonb_build_object(
                   'id', ev.id, 'name', ev.name, 'data', ev.data, 'ts', {_ISO_TS})),
               'event:' || ev.id,
               -- a microsecond apart, in the order of the events, as runs.create_many
               {NOW} - (ev.total - ev.n) * interval '1 microsecond',
               {NOW} - (ev.total - ev.n) * interval '1 microsecond',
               CASE WHEN ev.starts THEN 'running' ELSE 'queued' END,
               -- the sender's trace context, as the ingest in Python copies it (an object)
               CASE WHEN jsonb_typeof(ev.trace_context) = 'object'
                         AND ev.trace_context <> '{{}}'::jsonb
                    THEN ev.trace_context END,
               -- a run that starts is made as the claim would leave it (runs.CLAIM_SET)
               CASE WHEN ev.starts THEN %(s_owner)s::uuid END,
               CASE WHEN ev.starts THEN gen_random_uuid() END,
               CASE WHEN ev.starts
                    THEN {NOW} + make_interval(secs => %(s_lease)s::float8) END,
               CASE WHEN ev.starts THEN 1 ELSE 0 END,
               CASE WHEN ev.starts THEN {NOW} END,
               CASE WHEN ev.starts THEN {NOW} ELSE now() END
        FROM ranked ev
        ORDER BY ev.n
        ON CONFLICT DO NOTHING
        RETURNING id, function_id, lease_token, events, attempts, recoveries, created_at,
                  parent_run_id, origin, retries, origin_run_id, trace_context, status
    ),
    started AS MATERIALIZED (  -- what the claims of this transaction leave to others
        SELECT set_config('{STARTED_SETTING}', coalesce(string_agg(function_id, ','), ''), true)
        FROM made WHERE status = 'running'
    )
    SELECT (SELECT yes FROM plain), (SELECT count(*) FROM made), (SELECT 1 FROM started),
           s.id::text, s.function_id, s.lease_token::text, s.events, s.attempts, s.recoveries,
           {NOW}, s.created_at, s.parent_run_id::text, s.origin, s.retries,
           s.origin_run_id::text, s.trace_context
    FROM (SELECT 1) one
    LEFT JOIN made s ON s.status = 'running'
    """


@dataclass(frozen=True)
class Starts:
    """Runs the statement may make already running, leased to `owner` as a claim would (one
    write fewer for each): per lane (the dispatcher's, plain and async functions), its
    functions and its room (free slots). A lane has room only while none of its runs is due,
    so a new run never goes before an older one; a claim later in the transaction counts
    them against its limit (`runs.STARTED_SETTING`)."""

    owner: str
    lease_seconds: float
    lanes: list[tuple[list[str], int]]  # (function ids, room)


_NO_STARTS = Starts("00000000-0000-0000-0000-000000000000", 0.0, [])


@dataclass(frozen=True)
class Ingested:
    made: int
    started: list[ClaimedRun]  # the runs made running (for the caller to hand to workers)


def ingest_sent(
    conn: Conn, triggers: PlainTriggers, *, max_bytes: int, starts: Starts | None = None
) -> Callable[[], Ingested | None]:
    """Ingest the events this transaction took if they are all plain. Sent now; call the
    result for the runs made, or None if the batch was not plain (nothing was written: it is
    the Python ingest's)."""
    starts = starts or _NO_STARTS
    params = {
        "names": triggers.names,
        "fids": triggers.function_ids,
        "others": triggers.others,
        "max_bytes": max_bytes,
        "now": clock.current(),
        "s_owner": starts.owner,
        "s_lease": starts.lease_seconds,
        "s_fids": [f for fids, _ in starts.lanes for f in fids],
        "s_lanes": [n for n, (fids, _) in enumerate(starts.lanes, start=1) for _ in fids],
        "s_rooms": [room for _, room in starts.lanes],
    }
    cursor = driver(conn).execute(_INGEST, params, prepare=True)

    def fetch() -> Ingested | None:
        rows = cursor.fetchall()
        plain, made = rows[0][0], rows[0][1]
        if not plain:
            return None
        started = [ClaimedRun(*row[3:]) for row in rows if row[3] is not None]
        return Ingested(int(made), started)

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
