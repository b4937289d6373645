"""Statements on `orchestrator.waits`: what waiting steps and cancellation conditions wait for.

A wait is keyed by (event_name, match_path, match_value): `match_path` is the field of the
incoming event's data that must equal `match_value` (`''` and `null` when the wait has no
`match`). Resolving an event is an index lookup per distinct path in use for its name.

Race-freedom. A wait must see every matching event received since its `since`, including one
that arrives while the wait is being stored. Two transactions meet here: the worker's, which
looks back at the events received so far and stores the wait if none matched, and the ingest
of a new event, which looks up the stored waits. Each takes an advisory lock on the event
name first — the worker a shared one, the ingest an exclusive one — so that whichever comes
second sees what the first committed: the worker finds the event, or the ingest finds the
wait. Waiting runs never queue behind each other (shared locks), and the lock is taken
before any row lock, so it cannot take part in a deadlock.

A worker stores the waits its runs reach at the same moment in one such transaction
(`store_many`, see engine/waiter.py): the shared locks of all their names, one look back for
all of them, then one fenced statement that suspends those that found nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from orchestrator.db import runs
from orchestrator.db.direct import Conn, driver, set_local
from orchestrator.db.events import event_payload
from orchestrator.db.session import notify_runs
from orchestrator.db.steps import StepRecord

WAIT_LOCK_CLASS = 0x6F726377  # the first key of the event-name advisory locks


@dataclass(frozen=True)
class Wait:
    """What a waiting step waits for."""

    run_id: str
    step_id: str
    event_name: str
    match_path: str | None  # `data.x.y`, or None
    match_value_json: str  # the expected value, as JSON (`null` without a match)
    expression: str | None
    since: datetime
    expires_at: datetime | None


@dataclass(frozen=True)
class Candidate:
    """A wait that an incoming event matches by name and `match`; its `expression`, if any,
    is still to be evaluated against `trigger` (the waiting run's first event)."""

    event_index: int
    run_id: str
    step_id: str
    kind: str  # event | cancel
    expression: str | None
    trigger: dict[str, Any] | None


def lock_names(conn: Conn, names: list[str], *, shared: bool) -> None:
    """Take the advisory locks of these event names, in key order (see the module doc). In
    pipeline mode this shares a round trip with the statements that follow."""
    if not names:
        return
    fn = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    driver(conn).execute(
        f"SELECT {fn}(%(cls)s, k) FROM (SELECT DISTINCT hashtext(n) AS k "
        "FROM unnest(%(names)b::text[]) AS n ORDER BY k) keys",
        {"cls": WAIT_LOCK_CLASS, "names": names},
        prepare=True,
    )


@dataclass(frozen=True)
class Storing:
    """A running run that reached `wait`: unless an event already received ends it, suspend
    the run (fenced on `token`) as waiting until `due`, with `record` and the wait stored.
    `accept` is the wait's `if` condition on a matching event; `child`, an invoked run to
    start first."""

    wait: Wait
    record: StepRecord
    token: str
    due: datetime
    accept: Callable[[dict[str, Any]], bool]
    child: runs.NewRun | None = None
    state_json: str | None = None  # merged into the run's state if it suspends


@dataclass(frozen=True)
class Stored:
    """What became of a `Storing`: `found`, the first event received that ends the wait
    (nothing was written for it), else `suspended`, False if the run's lease no longer held."""

    found: dict[str, Any] | None
    suspended: bool


def store_many(conn: psycopg.Connection[Any], storing: list[Storing]) -> list[Stored]:
    """Store these waits race-free (see the module doc), in one transaction on a direct
    connection, in two round trips: the shared name locks, the children started, the look
    back; then the suspensions and the commit (one more first, when runs invoke: the children
    are started only for the runs whose lease holds). Each run appears at most once.

    The commit does not wait for its WAL flush: if a crash loses it, each run is as it was
    (running, its previous step durable), is rescued, and reaches its wait again; anything
    that saw a wait commits after it in the WAL, so it is lost with it or not at all."""
    with conn.pipeline(), conn.transaction():
        set_local(conn, {"synchronous_commit": "off"})
        lock_names(conn, sorted({s.wait.event_name for s in storing}), shared=True)
        parents = [s for s in storing if s.child is not None]
        held = _held_sent(conn, parents)() if parents else set()  # a round trip, for invokes
        children = [s.child for s in parents if s.child is not None and s.wait.run_id in held]
        if children:
            runs.create_many_sent(conn, children)
            notify_runs(conn)  # any daemon may claim them (a limited one: see flow.py)
        seen = look_back(conn, [s.wait for s in storing])  # the first round trip
        found = [_first(s.accept, events) for s, events in zip(storing, seen, strict=True)]
        suspending = _suspend_sent(
            conn, [s for s, event in zip(storing, found, strict=True) if event is None]
        )
    held = suspending()  # sent with the commit, in the second round trip
    return [
        Stored(event, event is None and s.wait.run_id in held)
        for s, event in zip(storing, found, strict=True)
    ]


# The runs (of those about to invoke) whose lease still holds, locked until the commit: a child
# is started only for them, so a run cancelled meanwhile (its lease revoked) starts none, and
# a cancellation that comes later waits for this commit and then finds the child to cancel.
_HELD = """
    SELECT r.id::text FROM orchestrator.runs r
    JOIN unnest(%(runs)b::uuid[], %(tokens)b::uuid[]) AS t(id, token)
      ON r.id = t.id AND r.lease_token = t.token
    WHERE r.status = 'running'
    ORDER BY r.id
    FOR NO KEY UPDATE OF r
    """


def _held_sent(conn: Conn, storing: list[Storing]) -> Callable[[], set[str]]:
    params = {"runs": [s.wait.run_id for s in storing], "tokens": [s.token for s in storing]}
    cursor = driver(conn).execute(_HELD, params, prepare=True)
    return lambda: {str(row[0]) for row in cursor.fetchall()}


def _first(
    accept: Callable[[dict[str, Any]], bool], events: list[dict[str, Any]]
) -> dict[str, Any] | None:
    return next((event for event in events if accept(event)), None)


# For each wait, the events called its name received since its `since` whose `match_path`
# field equals its expected value, oldest first: a range scan of `events_name_received` per
# wait. The subquery is fenced (OFFSET 0) so that its ORDER BY cannot pick the plan: the
# statement is prepared, and its generic plan walked `events_seq` from the start for the
# order instead, reading every event received (1 ms per wait with 10,000 events).
_LOOK_BACK = """
    SELECT w.idx::int, e.id, e.name, e.data, e.ts
    FROM unnest(%(names)b::text[], %(since)b::timestamptz[], %(paths)b::text[],
                %(values)b::jsonb[]) WITH ORDINALITY AS w(name, since, path, value, idx)
    CROSS JOIN LATERAL (
        SELECT m.* FROM (
            SELECT ev.id, ev.name, ev.data, ev.ts, ev.seq FROM orchestrator.events ev
            WHERE ev.name = w.name AND ev.received_at >= w.since AND ev.error IS NULL
              AND CASE WHEN w.path IS NULL THEN true
                       ELSE coalesce(ev.data #> (string_to_array(w.path, '.'))[2:],
                                     'null'::jsonb) = w.value END
            OFFSET 0
        ) m
        ORDER BY m.seq
        LIMIT %(limit)s
    ) e
    ORDER BY w.idx, e.seq
    """


def look_back(conn: Conn, waits: list[Wait], *, limit: int = 1000) -> list[list[dict[str, Any]]]:
    """For each wait, the events already received that match it by name and `match`, oldest
    first (at most `limit`), as functions receive them."""
    seen: list[list[dict[str, Any]]] = [[] for _ in waits]
    if not waits:
        return seen
    params = {
        "names": [w.event_name for w in waits],
        "since": [w.since for w in waits],
        "paths": [w.match_path for w in waits],
        "values": [w.match_value_json for w in waits],
        "limit": limit,
    }
    for idx, *event in driver(conn).execute(_LOOK_BACK, params, prepare=True):
        seen[idx - 1].append(event_payload(*event))
    return seen


# Suspend running runs on their waits, each fenced on its lease, in one statement: the runs
# still held are locked in id order (like every multi-row lock here), each waits until its
# wait expires (or for good), its step is recorded as waiting and its wait is stored. As in
# `_RESOLVE`, each run row is locked by its own index probe, and the writes read the locked
# rows alone: the statement is prepared, and a generic plan joining two of its CTEs compares
# every pair.
_SUSPEND = """
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest(
            %(runs)b::uuid[], %(tokens)b::uuid[], %(dues)b::timestamptz[], %(steps)b::text[],
            %(positions)b::int[], %(kinds)b::text[], %(names)b::text[], %(paths)b::text[],
            %(values)b::jsonb[], %(exprs)b::text[], %(since)b::timestamptz[],
            %(expires)b::timestamptz[], %(states)b::jsonb[]
        ) AS t(run_id, token, due, step_id, position, kind, name, path, value, expr, since,
               expires, state)
    ),
    locked AS MATERIALIZED (
        SELECT i.* FROM (SELECT * FROM input ORDER BY run_id) i
        CROSS JOIN LATERAL (
            SELECT 1 FROM orchestrator.runs r
            WHERE r.id = i.run_id AND r.lease_token = i.token AND r.status = 'running'
            FOR NO KEY UPDATE
        ) r
    ),
    held AS (
        UPDATE orchestrator.runs r
        SET status = 'waiting', due_at = l.due, updated_at = now(),
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
            state = coalesce(r.state || l.state, r.state)
        FROM locked l
        WHERE r.id = l.run_id
        RETURNING r.id
    ),
    step AS (
        INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, wake_at)
        SELECT l.run_id, l.step_id, l.position, l.kind, 'waiting', 1, l.expires FROM locked l
        ON CONFLICT (run_id, step_id) DO UPDATE SET
            kind = EXCLUDED.kind, status = EXCLUDED.status, wake_at = EXCLUDED.wake_at,
            updated_at = now()
    ),
    stored AS (
        INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path,
                                        match_value, expression, since, expires_at)
        SELECT l.run_id, l.step_id, 'event', l.name, l.path, l.value, l.expr, l.since,
               l.expires
        FROM locked l
        ON CONFLICT (run_id, step_id) DO NOTHING
    )
    SELECT id::text FROM held
    """


def _suspend_sent(conn: Conn, storing: list[Storing]) -> Callable[[], set[str]]:
    """Suspend these runs on their waits (see `_SUSPEND`), sent now; call the result for the
    ids of the runs whose lease still held."""
    if not storing:
        return set
    params = {
        "runs": [s.wait.run_id for s in storing],
        "tokens": [s.token for s in storing],
        "dues": [s.due for s in storing],
        "steps": [s.wait.step_id for s in storing],
        "positions": [s.record.position for s in storing],
        "kinds": [s.record.kind for s in storing],
        "names": [s.wait.event_name for s in storing],
        "paths": [s.wait.match_path or "" for s in storing],
        "values": [s.wait.match_value_json for s in storing],
        "exprs": [s.wait.expression for s in storing],
        "since": [s.wait.since for s in storing],
        "expires": [s.wait.expires_at for s in storing],
        "states": [s.state_json for s in storing],
    }
    cursor = driver(conn).execute(_SUSPEND, params, prepare=True)
    return lambda: {str(row[0]) for row in cursor.fetchall()}


def remove(conn: Conn, run_id: str, step_id: str) -> None:
    driver(conn).execute(
        "DELETE FROM orchestrator.waits WHERE run_id = %s::uuid AND step_id = %s",
        (run_id, step_id),
    )


# For each event: the distinct match paths in use for its name (a skip scan of the index,
# one probe per path), then one index lookup per (event, path) for the expected value.
_CANDIDATES = """
    WITH ev AS MATERIALIZED (
        SELECT * FROM unnest(%(names)b::text[], %(datas)b::jsonb[], %(received)b::timestamptz[])
             WITH ORDINALITY AS t(name, data, received_at, idx)
    ),
    paths AS MATERIALIZED (
        SELECT n.name, p.match_path
        FROM (SELECT DISTINCT name FROM ev) n
        CROSS JOIN LATERAL (
            WITH RECURSIVE ps(match_path) AS (
                (SELECT w.match_path FROM orchestrator.waits w
                 WHERE w.event_name = n.name ORDER BY w.match_path LIMIT 1)
                UNION ALL
                SELECT (SELECT w.match_path FROM orchestrator.waits w
                        WHERE w.event_name = n.name AND w.match_path > ps.match_path
                        ORDER BY w.match_path LIMIT 1)
                FROM ps WHERE ps.match_path IS NOT NULL
            )
            SELECT match_path FROM ps WHERE match_path IS NOT NULL
        ) p
    ),
    keys AS MATERIALIZED (
        SELECT e.idx, e.name, e.received_at, p.match_path,
               CASE WHEN p.match_path = '' THEN 'null'::jsonb
                    ELSE coalesce(e.data #> (string_to_array(p.match_path, '.'))[2:],
                                  'null'::jsonb) END AS match_value
        FROM ev e JOIN paths p ON p.name = e.name
    )
    SELECT k.idx::int, w.run_id::text, w.step_id, w.kind, w.expression,
           CASE WHEN w.expression IS NOT NULL THEN r.events -> 0 END
    FROM keys k
    JOIN orchestrator.waits w
      ON w.event_name = k.name AND w.match_path = k.match_path
     AND w.match_value = k.match_value
    JOIN orchestrator.runs r ON r.id = w.run_id
    WHERE w.since <= k.received_at
      AND (w.expires_at IS NULL OR w.expires_at > k.received_at)
      AND r.status IN ('queued', 'running', 'sleeping', 'waiting')
    """


def candidates(
    conn: Conn, names: list[str], datas: list[Any], received: list[datetime]
) -> Callable[[], list[Candidate]]:
    """The waits that events (given in order) match by name and `match`, for a later
    evaluation of their expressions; `event_index` is the position in the input. Sent now;
    call the result for the rows (in pipeline mode, it shares a round trip with what was
    sent before it)."""
    if not names:
        return list
    params = {
        "names": names,
        "datas": [json.dumps(d, separators=(",", ":")) for d in datas],
        "received": received,
    }
    cursor = driver(conn).execute(_CANDIDATES, params, prepare=True)

    def fetch() -> list[Candidate]:
        found = [Candidate(idx - 1, *rest) for idx, *rest in cursor.fetchall()]
        return sorted(found, key=lambda c: (c.event_index, c.run_id, c.step_id))

    return fetch


# Resolve waiting steps: the run rows first (in id order, like every multi-row lock), then the
# wait rows; a run no longer waiting, or a wait already resolved, is left alone. Each step
# looks up by index the rows the one before it returned. The ingest plans it generically, and
# a generic plan takes an array of any length for ten rows: joining two of these CTEs (500
# rows each) was a nested loop of 250,000 comparisons, 40 ms of a 500-event batch, and a join
# of the input with `runs` can be one too when the statistics think few runs wait. The run
# rows are therefore locked one probe per input row (a lateral subquery that locks is never
# flattened into a join), in the input's sorted order.
_RESOLVE = """
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest(%(runs)b::uuid[], %(steps)b::text[], %(events)b::jsonb[])
             AS t(run_id, step_id, event)
    ),
    locked AS MATERIALIZED (
        SELECT i.run_id, i.step_id, i.event
        FROM (SELECT * FROM input ORDER BY run_id) i
        CROSS JOIN LATERAL (
            SELECT 1 FROM orchestrator.runs r
            WHERE r.id = i.run_id AND r.status = 'waiting'
            FOR UPDATE
        ) r
    ),
    gone AS (
        DELETE FROM orchestrator.waits w USING locked l
        WHERE w.run_id = l.run_id AND w.step_id = l.step_id
        RETURNING w.run_id, w.step_id, l.event
    ),
    stepped AS (
        UPDATE orchestrator.steps s
        SET status = 'completed', output = g.event, updated_at = now()
        FROM gone g
        WHERE s.run_id = g.run_id AND s.step_id = g.step_id AND s.status = 'waiting'
        RETURNING s.run_id
    )
    UPDATE orchestrator.runs r SET status = 'queued', due_at = now(), updated_at = now()
    FROM stepped s WHERE r.id = s.run_id
    RETURNING r.id::text
    """


def resolve(conn: Conn, resolutions: list[tuple[str, str, dict[str, Any]]]) -> list[str]:
    """Complete waiting steps with the event that resolved each, and make their runs due
    now; returns the ids of the runs woken. Each (run, step) appears at most once."""
    if not resolutions:
        return []
    params = {
        "runs": [r for r, _, _ in resolutions],
        "steps": [s for _, s, _ in resolutions],
        "events": [json.dumps(e, separators=(",", ":")) for _, _, e in resolutions],
    }
    return [str(row[0]) for row in driver(conn).execute(_RESOLVE, params, prepare=True)]
