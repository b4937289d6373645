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

Look back and consumption. A wait's `since` may lie before its step began (`lookback=`); the
look back then skips every event that an earlier step of the same run consumed
(`steps.event_id`, probed through the index `steps_event`), so an event ends at most one wait
of a run. The first remaining event, in the order received (`events.seq`), wins.

Waits for any of several events (`wait_for_any`) store one row per entry (`branch`). All of
a step's rows are deleted when it is resolved, under the lock of its run row, so of two
events that arrive at once for two of its entries only the first resolves it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from orchestrator.db import clock, runs
from orchestrator.db.direct import Conn, driver, set_local
from orchestrator.db.events import PENDING_SEQS, event_payload
from orchestrator.db.session import notify_runs
from orchestrator.db.steps import StepRecord

FINISHED_EVENT_NAME = "orchestrator/function.finished"  # as orchestrator/functions.py names it
LOST_RACE = "the wait_for_any step that invoked it ended on another entry"  # a child's reason

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
    branch: int = 0  # the entry of a wait_for_any step; 0 for any other wait


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
    branch: int = 0


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
class Branch:
    """One of the waits of a step (a `wait_for_event` or `invoke` step has one, a
    `wait_for_any` step one per entry): `wait`, its `if` condition `accept` on a matching
    event, and `child`, an invoked run to start with it."""

    wait: Wait
    accept: Callable[[dict[str, Any]], bool]
    child: runs.NewRun | None = None


@dataclass(frozen=True)
class Storing:
    """A running run that reached a waiting step: unless an event already received ends one
    of its `branches`, suspend the run (fenced on `token`) as waiting until `due`, with
    `record` and the waits stored, and start the branches' children."""

    branches: tuple[Branch, ...]
    record: StepRecord
    token: str
    due: datetime
    state_json: str | None = None  # merged into the run's state if it suspends

    @property
    def run_id(self) -> str:
        return self.branches[0].wait.run_id


@dataclass(frozen=True)
class Stored:
    """What became of a `Storing`: `found`, the first event received that ends one of its
    waits, and `branch`, which (nothing was written for it); else `suspended`, False if the
    run's lease no longer held."""

    found: dict[str, Any] | None
    suspended: bool
    branch: int = 0


def store_many(conn: psycopg.Connection[Any], storing: list[Storing]) -> list[Stored]:
    """Store these waits race-free (see the module doc), in one transaction on a direct
    connection, in two round trips: the shared name locks and the look back; then the
    children started and the suspensions of the runs that found nothing, and the commit (one
    more before them, when runs invoke: the children are started only for the runs whose
    lease holds). Each run appears at most once. (A child cannot have finished before it
    starts: looking back first is safe, and starts no child for a wait that is over.)

    The commit does not wait for its WAL flush: if a crash loses it, each run is as it was
    (running, its previous step durable), is rescued, and reaches its wait again; anything
    that saw a wait commits after it in the WAL, so it is lost with it or not at all."""
    with conn.pipeline(), conn.transaction():
        set_local(conn, {"synchronous_commit": "off"})
        names = sorted({b.wait.event_name for s in storing for b in s.branches})
        lock_names(conn, names, shared=True)
        seen = iter(look_back(conn, [b.wait for s in storing for b in s.branches]))
        # the first round trip
        found = [_first(s.branches, [next(seen) for _ in s.branches]) for s in storing]
        waiting = [s for s, first in zip(storing, found, strict=True) if first is None]
        parents = [s for s in waiting if any(b.child is not None for b in s.branches)]
        held = _held_sent(conn, parents)() if parents else set()  # a round trip, for invokes
        children = [
            b.child for s in parents if s.run_id in held for b in s.branches if b.child is not None
        ]
        if children:
            runs.create_many_sent(conn, children)
            notify_runs(conn)  # any daemon may claim them (a limited one: see flow.py)
        suspending = _suspend_sent(conn, waiting)
    held = suspending()  # sent with the commit, in the second round trip
    return [
        Stored(None, s.run_id in held) if first is None else Stored(first[2], False, first[1])
        for s, first in zip(storing, found, strict=True)
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
    params = {"runs": [s.run_id for s in storing], "tokens": [s.token for s in storing]}
    cursor = driver(conn).execute(_HELD, params, prepare=True)
    return lambda: {str(row[0]) for row in cursor.fetchall()}


def _first(
    branches: tuple[Branch, ...], seen: list[list[tuple[int, dict[str, Any]]]]
) -> tuple[int, int, dict[str, Any]] | None:
    """The event received first (seq, branch, event) that one of these branches accepts."""
    firsts = [
        next(((seq, b.wait.branch, event) for seq, event in events if b.accept(event)), None)
        for b, events in zip(branches, seen, strict=True)
    ]
    return min((f for f in firsts if f is not None), default=None, key=lambda f: f[0])


# For each wait, the events called its name received since its `since` whose `match_path`
# field equals its expected value and that no step of its run consumed, oldest first: a range
# scan of `events_name_received` per wait, and a probe of `steps_event` per event in range.
# The subquery is fenced (OFFSET 0) so that its ORDER BY cannot pick the plan: the
# statement is prepared, and its generic plan walked `events_seq` from the start for the
# order instead, reading every event received (1 ms per wait with 10,000 events).
_LOOK_BACK = """
    SELECT w.idx::int, e.seq, e.id, e.name, e.data, e.ts
    FROM unnest(%(runs)b::uuid[], %(names)b::text[], %(since)b::timestamptz[],
                %(paths)b::text[], %(values)b::jsonb[])
         WITH ORDINALITY AS w(run_id, name, since, path, value, idx)
    CROSS JOIN LATERAL (
        SELECT m.* FROM (
            SELECT ev.id, ev.name, ev.data, ev.ts, ev.seq FROM orchestrator.events ev
            WHERE ev.name = w.name AND ev.received_at >= w.since AND ev.error IS NULL
              AND CASE WHEN w.path IS NULL THEN true
                       ELSE coalesce(ev.data #> (string_to_array(w.path, '.'))[2:],
                                     'null'::jsonb) = w.value END
              AND NOT EXISTS (SELECT 1 FROM orchestrator.steps s
                              WHERE s.run_id = w.run_id AND s.event_id = ev.id
                                AND s.event_id IS NOT NULL)
            OFFSET 0
        ) m
        ORDER BY m.seq
        LIMIT %(limit)s
    ) e
    ORDER BY w.idx, e.seq
    """


def look_back(
    conn: Conn, waits: list[Wait], *, limit: int = 1000
) -> list[list[tuple[int, dict[str, Any]]]]:
    """For each wait, the events already received that match it by name and `match` and that
    no step of its run consumed, oldest first (at most `limit`): each as (seq, the event as
    functions receive it)."""
    seen: list[list[tuple[int, dict[str, Any]]]] = [[] for _ in waits]
    if not waits:
        return seen
    params = {
        "runs": [w.run_id for w in waits],
        "names": [w.event_name for w in waits],
        "since": [w.since for w in waits],
        "paths": [w.match_path for w in waits],
        "values": [w.match_value_json for w in waits],
        "limit": limit,
    }
    for idx, seq, *event in driver(conn).execute(_LOOK_BACK, params, prepare=True):
        seen[idx - 1].append((seq, event_payload(*event)))
    return seen


# Suspend running runs on their waits, each fenced on its lease, in one statement: the runs
# still held are locked in id order (like every multi-row lock here), each waits until its
# wait expires (or for good), its step is recorded as waiting and its waits are stored. A
# wait_for_any step's waits after the first travel as a JSON array in its run's row (`more`):
# a row per wait would lock its run once per wait, and a CTE is read lazily, so a later lock
# would come after the run's update and skip it; joining a CTE of them to `locked` instead
# would compare every pair in the generic plan. As in
# `_RESOLVE`, each run row is locked by its own index probe, and the writes read the locked
# rows alone: the statement is prepared, and a generic plan joining two of its CTEs compares
# every pair.
_SUSPEND = """
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest(
            %(runs)b::uuid[], %(tokens)b::uuid[], %(dues)b::timestamptz[], %(steps)b::text[],
            %(positions)b::int[], %(kinds)b::text[], %(names)b::text[], %(paths)b::text[],
            %(values)b::jsonb[], %(exprs)b::text[], %(since)b::timestamptz[],
            %(expires)b::timestamptz[], %(more)b::jsonb[], %(states)b::jsonb[]
        ) AS t(run_id, token, due, step_id, position, kind, name, path, value, expr, since,
               expires, more, state)
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
        SET status = 'waiting', due_at = l.due, updated_at = coalesce(%(now)b::timestamptz, now()),
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
            state = coalesce(r.state || l.state, r.state)
        FROM locked l
        WHERE r.id = l.run_id
        RETURNING r.id
    ),
    step AS (
        INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, wake_at,
                                        created_at, updated_at)
        SELECT l.run_id, l.step_id, l.position, l.kind, 'waiting', 1, l.expires,
               coalesce(%(now)b::timestamptz, now()), coalesce(%(now)b::timestamptz, now())
        FROM locked l
        ON CONFLICT (run_id, step_id) DO UPDATE SET
            kind = EXCLUDED.kind, status = EXCLUDED.status, wake_at = EXCLUDED.wake_at,
            updated_at = coalesce(%(now)b::timestamptz, now())
    ),
    stored AS (
        INSERT INTO orchestrator.waits (run_id, step_id, branch, kind, event_name, match_path,
                                        match_value, expression, since, expires_at,
                                        created_at)
        SELECT l.run_id, l.step_id, 0, 'event', l.name, l.path, l.value, l.expr, l.since,
               l.expires, coalesce(%(now)b::timestamptz, now())
        FROM locked l
        UNION ALL
        SELECT l.run_id, l.step_id, m.branch, 'event', m.name, m.path,
               coalesce(m.value, 'null'::jsonb), m.expr,
               m.since, l.expires, coalesce(%(now)b::timestamptz, now())
        FROM locked l
        CROSS JOIN LATERAL jsonb_to_recordset(l.more)
             AS m(branch int, name text, path text, value jsonb, expr text, since timestamptz)
        WHERE l.more IS NOT NULL
        ON CONFLICT (run_id, step_id, branch) DO NOTHING
    )
    SELECT id::text FROM held
    """


def _suspend_sent(conn: Conn, storing: list[Storing]) -> Callable[[], set[str]]:
    """Suspend these runs on their waits (see `_SUSPEND`), sent now; call the result for the
    ids of the runs whose lease still held."""
    if not storing:
        return set
    firsts = [s.branches[0].wait for s in storing]
    params = {
        "runs": [s.run_id for s in storing],
        "tokens": [s.token for s in storing],
        "dues": [s.due for s in storing],
        "steps": [w.step_id for w in firsts],
        "positions": [s.record.position for s in storing],
        "kinds": [s.record.kind for s in storing],
        "names": [w.event_name for w in firsts],
        "paths": [w.match_path or "" for w in firsts],
        "values": [w.match_value_json for w in firsts],
        "exprs": [w.expression for w in firsts],
        "since": [w.since for w in firsts],
        "expires": [w.expires_at for w in firsts],
        "more": [_more(s.branches[1:]) for s in storing],
        "states": [s.state_json for s in storing],
        "now": clock.current(),
    }
    cursor = driver(conn).execute(_SUSPEND, params, prepare=True)
    return lambda: {str(row[0]) for row in cursor.fetchall()}


def _more(branches: tuple[Branch, ...]) -> str | None:
    """A step's waits after its first, as `_SUSPEND` reads them."""
    if not branches:
        return None
    return json.dumps(
        [
            {
                "branch": b.wait.branch,
                "name": b.wait.event_name,
                "path": b.wait.match_path or "",
                "value": json.loads(b.wait.match_value_json),
                "expr": b.wait.expression,
                "since": b.wait.since.isoformat(),
            }
            for b in branches
        ]
    )


def remove(conn: Conn, run_id: str, step_id: str) -> None:
    driver(conn).execute(
        "DELETE FROM orchestrator.waits WHERE run_id = %s::uuid AND step_id = %s",
        (run_id, step_id),
    )


# For each event: the distinct match paths in use for its name (a skip scan of the index,
# one probe per path), then one index lookup per (event, path) for the expected value. A wait
# that looks back may have been stored after a step of its run consumed the event by its own
# look back, before the ingest saw it: a probe of `steps_event` leaves it out (a `cancel_on`
# condition still sees it: a wait that consumed the event does not stop it cancelling).
def _candidates_sql(events: str) -> str:
    """The lookup for the events `events` selects (name, data, received_at, id, idx)."""
    return f"""
    WITH ev AS MATERIALIZED ({events}),
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
        SELECT e.idx, e.name, e.received_at, e.id, p.match_path,
               CASE WHEN p.match_path = '' THEN 'null'::jsonb
                    ELSE coalesce(e.data #> (string_to_array(p.match_path, '.'))[2:],
                                  'null'::jsonb) END AS match_value
        FROM ev e JOIN paths p ON p.name = e.name
    )
    SELECT k.idx, w.run_id::text, w.step_id, w.kind, w.expression,
           CASE WHEN w.expression IS NOT NULL THEN r.events -> 0 END, w.branch
    FROM keys k
    JOIN orchestrator.waits w
      ON w.event_name = k.name AND w.match_path = k.match_path
     AND w.match_value = k.match_value
    JOIN orchestrator.runs r ON r.id = w.run_id
    WHERE w.since <= k.received_at
      AND (w.expires_at IS NULL OR w.expires_at > k.received_at)
      AND r.status IN ('queued', 'running', 'sleeping', 'waiting')
      AND (w.kind = 'cancel' OR NOT EXISTS (SELECT 1 FROM orchestrator.steps s
                                            WHERE s.run_id = w.run_id AND s.event_id = k.id
                                              AND s.event_id IS NOT NULL))
    """


_CANDIDATES = _candidates_sql(
    "SELECT * FROM unnest(%(names)b::text[], %(datas)b::jsonb[], %(received)b::timestamptz[], "
    "%(ids)b::text[]) WITH ORDINALITY AS t(name, data, received_at, id, idx)"
)
# The events the ingest took in this transaction (db/events.py `claim_pending_sent`), but
# those over `max_bytes` (they are parked unread); `idx` is their `seq`.
_CANDIDATES_PENDING = _candidates_sql(
    "SELECT name, data, received_at, id, seq AS idx FROM orchestrator.events "
    f"WHERE seq = ANY({PENDING_SEQS}) "
    "AND (octet_length(data::text) <= %(max_bytes)s OR starts_with(name, 'orchestrator/'))"
)


def candidates_pending(
    conn: Conn, *, max_bytes: int
) -> Callable[[dict[int, int]], list[Candidate]]:
    """`candidates` for the events this transaction's ingest took (`PENDING_SEQS`): sent now,
    in the round trip of the statement that took them and their names' locks. Call the result
    with the position of each event (by `seq`) among the ingested ones for the rows."""
    cursor = driver(conn).execute(_CANDIDATES_PENDING, {"max_bytes": max_bytes}, prepare=True)

    def fetch(positions: dict[int, int]) -> list[Candidate]:
        found = [Candidate(positions[seq], *rest) for seq, *rest in cursor.fetchall()]
        return sorted(found, key=lambda c: (c.event_index, c.run_id, c.step_id, c.branch))

    return fetch


def candidates(
    conn: Conn,
    names: list[str],
    datas: list[Any],
    received: list[datetime],
    ids: list[str] | None = None,
) -> Callable[[], list[Candidate]]:
    """The waits that events (given in order, with their `ids`) match by name and `match`,
    and whose runs did not consume them yet, for a later evaluation of their expressions;
    `event_index` is the position in the input. Sent now; call the result for the rows (in
    pipeline mode, it shares a round trip with what was sent before it)."""
    if not names:
        return list
    params = {
        "names": names,
        "datas": [json.dumps(d, separators=(",", ":")) for d in datas],
        "received": received,
        "ids": ids if ids is not None else [""] * len(names),
    }
    cursor = driver(conn).execute(_CANDIDATES, params, prepare=True)

    def fetch() -> list[Candidate]:
        found = [Candidate(idx - 1, *rest) for idx, *rest in cursor.fetchall()]
        return sorted(found, key=lambda c: (c.event_index, c.run_id, c.step_id, c.branch))

    return fetch


# The `cancel_on` conditions of runs just made from the events this ingest took, met by an
# event ingested before them: received after the condition's `since` (the triggering event's
# arrival) but ingested first, by another daemon or ahead of a triggering event whose INSERT
# committed later. The ingest took the shared lock of every watched name before it read
# anything (db/events.py), so an ingest of such an event that was in flight has committed and
# is seen here; one that comes later sees the conditions. Events of this ingest's own batch are
# left to the lookup of the pending ones. One probe of `events_name_received` per condition; an
# expression is evaluated by the caller, on at most `_CANCEL_SCAN` events that match by `match`.
_CANCEL_SCAN = 1000
_ACTIVE = "r.status IN ('queued', 'running', 'sleeping', 'waiting')"
_CANCELS_SINCE_TAIL = f"""
    SELECT w.run_id::text, w.expression, CASE WHEN w.expression IS NOT NULL THEN r.events -> 0
           END, e.id, e.name, e.data, e.ts
    FROM made r
    -- one probe of `waits_pkey` per run (OFFSET 0: not flattened into a join, which a
    -- plan without statistics makes a scan of every wait)
    CROSS JOIN LATERAL (SELECT * FROM orchestrator.waits w
                        WHERE w.run_id = r.id AND w.kind = 'cancel' OFFSET 0) w
    CROSS JOIN LATERAL (
        SELECT e.id, e.name, e.data, e.ts, e.received_at FROM orchestrator.events e
        WHERE e.name = w.event_name AND e.received_at >= w.since
          AND (w.expires_at IS NULL OR e.received_at < w.expires_at)
          AND e.ingested_at IS NOT NULL AND e.error IS NULL
          AND e.seq <> ALL({PENDING_SEQS})
          AND CASE WHEN w.match_path = '' THEN 'null'::jsonb
                   ELSE coalesce(e.data #> (string_to_array(w.match_path, '.'))[2:],
                                 'null'::jsonb) END = w.match_value
        ORDER BY e.received_at
        LIMIT CASE WHEN w.expression IS NULL THEN 1 ELSE {_CANCEL_SCAN} END
    ) e
    ORDER BY r.id, e.received_at
    """
_CANCELS_SINCE = f"""
    WITH made AS MATERIALIZED (
        SELECT r.id, r.events FROM orchestrator.runs r
        WHERE r.event_id = ANY(%(eids)b::text[]) AND {_ACTIVE}
    ) {_CANCELS_SINCE_TAIL}"""
# the same for runs given by id (the runs a cron tick made; db/runs.py holds no event id)
_CANCELS_SINCE_RUNS = f"""
    WITH made AS MATERIALIZED (
        SELECT r.id, r.events FROM orchestrator.runs r
        WHERE r.id = ANY(%(ids)b::uuid[]) AND {_ACTIVE}
    ) {_CANCELS_SINCE_TAIL}"""


@dataclass(frozen=True)
class LateCancel:
    """An event ingested before a new run's `cancel_on` condition that meets it by `match`;
    its `expression`, if any, is still to be evaluated (`trigger`: the run's first event)."""

    run_id: str
    expression: str | None
    trigger: dict[str, Any] | None
    event: dict[str, Any]


def cancels_since(conn: Conn, event_ids: list[str]) -> Callable[[], list[LateCancel]]:
    """The events already ingested that meet the `cancel_on` conditions of the runs made from
    `event_ids` in this transaction (see `_CANCELS_SINCE`). Sent now; call the result for the
    rows, in run order."""
    return _late_cancels(driver(conn).execute(_CANCELS_SINCE, {"eids": event_ids}, prepare=True))


def cancels_since_runs(conn: Conn, run_ids: list[str]) -> Callable[[], list[LateCancel]]:
    """`cancels_since` for the runs with these ids."""
    return _late_cancels(driver(conn).execute(_CANCELS_SINCE_RUNS, {"ids": run_ids}, prepare=True))


def _late_cancels(cursor: Any) -> Callable[[], list[LateCancel]]:
    def fetch() -> list[LateCancel]:
        return [
            LateCancel(run_id, expression, trigger, event_payload(eid, name, data, ts))
            for run_id, expression, trigger, eid, name, data, ts in cursor.fetchall()
        ]

    return fetch


# Resolve waiting steps: the run rows first (in id order, like every multi-row lock), then the
# wait rows; a run no longer waiting, or a wait already resolved, is left alone. Each step
# looks up by index the rows the one before it returned. The ingest plans it generically, and
# a generic plan takes an array of any length for ten rows: joining two of these CTEs (500
# rows each) was a nested loop of 250,000 comparisons, 40 ms of a 500-event batch, and a join
# of the input with `runs` can be one too when the statistics think few runs wait. The run
# rows are therefore locked one probe per input row (a lateral subquery that locks is never
# flattened into a join), in the input's sorted order.
#
# Every wait row of the step goes (a wait_for_any step has one per entry): the step records
# the winning branch's event (with its index, for wait_for_any) and its id (`event_id`); the
# runs that losing entries invoked (their waits are for `finished` with the child's id as
# match value) are returned to be cancelled.
_RESOLVE = """
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest(%(runs)b::uuid[], %(steps)b::text[], %(events)b::jsonb[],
                             %(branches)b::int[])
             AS t(run_id, step_id, event, branch)
    ),
    locked AS MATERIALIZED (
        SELECT i.run_id, i.step_id, i.event, i.branch
        FROM (SELECT * FROM input ORDER BY run_id) i
        CROSS JOIN LATERAL (
            SELECT 1 FROM orchestrator.runs r
            WHERE r.id = i.run_id AND r.status = 'waiting'
            FOR UPDATE
        ) r
    ),
    gone AS MATERIALIZED (
        DELETE FROM orchestrator.waits w USING locked l
        WHERE w.run_id = l.run_id AND w.step_id = l.step_id
        RETURNING w.run_id, w.step_id, w.branch, w.event_name, w.match_value,
                  l.branch AS won, l.event
    ),
    -- the waiting step of each wait that won, found by its key one at a time (LIMIT keeps
    -- the lookup a parameterized index probe: joined directly, a generic plan may compare
    -- every pair of a step scan and the deleted waits)
    targets AS MATERIALIZED (
        SELECT g.run_id, g.step_id, g.branch, g.event
        FROM gone g
        CROSS JOIN LATERAL (
            SELECT 1 FROM orchestrator.steps s
            WHERE s.run_id = g.run_id AND s.step_id = g.step_id AND s.status = 'waiting'
            LIMIT 1
        ) s
        WHERE g.branch = g.won
    ),
    stepped AS (
        UPDATE orchestrator.steps s
        SET status = 'completed', event_id = t.event ->> 'id',
            updated_at = coalesce(%(now)b::timestamptz, now()),
            output = CASE WHEN s.kind = 'wait_any'
                          THEN jsonb_build_object('index', t.branch, 'event', t.event)
                          ELSE t.event END
        FROM targets t
        WHERE s.run_id = t.run_id AND s.step_id = t.step_id
        RETURNING s.run_id
    ),
    woken AS (
        UPDATE orchestrator.runs r SET status = 'queued',
            due_at = coalesce(%(now)b::timestamptz, now()),
            updated_at = coalesce(%(now)b::timestamptz, now())
        FROM stepped s WHERE r.id = s.run_id
        RETURNING r.id
    )
    SELECT true, id::text FROM woken
    UNION ALL
    SELECT false, match_value #>> '{}' FROM gone
    WHERE branch <> won AND event_name = %(finished)s AND jsonb_typeof(match_value) = 'string'
    """


@dataclass(frozen=True)
class Resolution:
    """A waiting step to complete with `event`, which ended its wait `branch`."""

    run_id: str
    step_id: str
    event: dict[str, Any]
    branch: int = 0


@dataclass(frozen=True)
class Resolved:
    """The runs woken, and the runs that the losing entries of resolved wait_for_any steps
    invoked (to be cancelled)."""

    woken: list[str]
    losers: list[str]


def resolve(conn: Conn, resolutions: list[Resolution]) -> Resolved:
    """Complete waiting steps with the event that resolved each, and make their runs due
    now. Each (run, step) appears at most once."""
    if not resolutions:
        return Resolved([], [])
    params = {
        "runs": [r.run_id for r in resolutions],
        "steps": [r.step_id for r in resolutions],
        "events": [json.dumps(r.event, separators=(",", ":")) for r in resolutions],
        "branches": [r.branch for r in resolutions],
        "finished": FINISHED_EVENT_NAME,
        "now": clock.current(),
    }
    rows = driver(conn).execute(_RESOLVE, params, prepare=True).fetchall()
    return Resolved([r for woke, r in rows if woke], [r for woke, r in rows if not woke])
