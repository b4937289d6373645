"""Statements of retention: deleting finished runs, ingested events and stopped daemons.

Each delete statement works on one small batch and is meant to be its own short
transaction (the daemon runs it in autocommit, on a connection with short lock and statement
timeouts): it walks an index in order from a cursor the caller keeps, locks the rows it may
delete with `FOR UPDATE SKIP LOCKED` (a row another transaction holds is left for a later
pass, never waited on), deletes them, and returns where it stopped. Rows it must keep are
stepped over by the cursor, so a pass reads each of them once, whatever their number; a
caller that keeps its cursor from one pass to the next reads only what is new.

- Runs are walked by `runs_created (created_at)`. A run finishes after it is created, so the
  runs finished before a cutoff are all among those created before it. Deleted: `completed`
  and `skipped` runs finished before `now - completed_age`, `failed` and `cancelled` runs
  finished before `now - failed_age` (an age of None keeps them forever). Kept: a run with an
  active child (`parent_run_id`), an active parent, or an active run replayed or forked
  from it (`origin_run_id`). Its steps and waits go with it.
- Events are walked by `events_seq (seq)`. Deleted: events ingested and received before
  `now - age`; kept: pending events and the triggering event of an active run. `seq`
  follows `received_at` closely, so the walk ends at the first event received after the
  cutoff.
- Daemons: rows `stopped` or `dead` since before `now - age` that hold neither the leader
  lease nor a running run's lease.

`now` defaults to the virtual clock of db/clock.py, else the database's clock; tests pass it
to pin time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver

_ACTIVE = "('queued', 'running', 'sleeping', 'waiting')"
_NIL_UUID = "00000000-0000-0000-0000-000000000000"


@dataclass(frozen=True)
class RunCursor:
    """Where a walk over `runs` stopped: the last run it read, in (created_at, id) order."""

    created_at: datetime
    id: str


@dataclass(frozen=True)
class RunBatch:
    scanned: int  # runs read (deleted or kept)
    cursor: RunCursor | None  # where to go on from (None: nothing was read)
    exhausted: bool  # no runs left to read before the cutoff
    completed: int  # `completed` and `skipped` runs deleted
    failed: int  # `failed` and `cancelled` runs deleted
    steps: int
    waits: int

    @property
    def runs(self) -> int:
        return self.completed + self.failed


@dataclass(frozen=True)
class EventBatch:
    scanned: int
    last_seq: int | None  # where to go on from: before the first event past the cutoff
    exhausted: bool  # no events left to read before the cutoff
    deleted: int


@dataclass(frozen=True)
class Backlog:
    """What a pass would delete now (a dry run)."""

    completed: int
    failed: int
    steps: int
    waits: int
    events: int
    daemons: int


def timed_out(exc: BaseException) -> bool:
    """True if `exc` is a statement cancelled by the statement timeout (or by hand)."""
    return isinstance(getattr(exc, "orig", exc), psycopg.errors.QueryCanceled)


# The cutoffs, by the database clock unless pinned; an age of NULL keeps a class forever.
_CUTOFFS = """
    params AS (
        SELECT coalesce(%(now)s::timestamptz, now())
                   - make_interval(secs => %(completed_age)s::float8) AS completed_before,
               coalesce(%(now)s::timestamptz, now())
                   - make_interval(secs => %(failed_age)s::float8) AS failed_before
    )"""

# A finished run old enough to go, and not referenced by an active run (`r`, `params`).
_RUN_EXPIRED = f"""
    ((r.status IN ('completed', 'skipped') AND r.finished_at < params.completed_before)
      OR (r.status IN ('failed', 'cancelled') AND r.finished_at < params.failed_before))
    AND NOT EXISTS (SELECT 1 FROM orchestrator.runs c
                    WHERE c.parent_run_id = r.id AND c.status IN {_ACTIVE})
    AND NOT EXISTS (SELECT 1 FROM orchestrator.runs o
                    WHERE o.origin_run_id = r.id AND o.status IN {_ACTIVE})
    AND NOT EXISTS (SELECT 1 FROM orchestrator.runs p
                    WHERE p.id = r.parent_run_id AND p.status IN {_ACTIVE})"""

# `greatest` ignores a NULL cutoff; both NULL reads nothing.
_RUNS_BEFORE = "greatest(params.completed_before, params.failed_before)"

# The scan goes by `runs_created` (created_at), and by id among equal times (an incremental
# sort of each group of equal times; the engine spaces the runs it makes together a
# microsecond apart). The row comparison is an index condition on created_at.
_DELETE_RUNS = f"""
    WITH {_CUTOFFS},
    scanned AS MATERIALIZED (
        SELECT r.id, r.created_at FROM orchestrator.runs r, params
        WHERE r.created_at < {_RUNS_BEFORE}
          AND (r.created_at, r.id) > (coalesce(%(after_at)s::timestamptz, '-infinity'),
                                      coalesce(%(after_id)s::uuid, '{_NIL_UUID}'))
        ORDER BY r.created_at, r.id
        LIMIT %(limit)s
    ),
    doomed AS MATERIALIZED (
        SELECT r.id, r.status FROM orchestrator.runs r, params
        WHERE r.id = ANY(ARRAY(SELECT id FROM scanned)) AND {_RUN_EXPIRED}
        ORDER BY r.id
        FOR UPDATE OF r SKIP LOCKED
    ),
    steps_gone AS (
        DELETE FROM orchestrator.steps WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))
        RETURNING 1
    ),
    waits_gone AS (
        DELETE FROM orchestrator.waits WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))
        RETURNING 1
    ),
    runs_gone AS (
        DELETE FROM orchestrator.runs WHERE id = ANY(ARRAY(SELECT id FROM doomed))
        RETURNING status
    )
    SELECT (SELECT count(*) FROM scanned), last.created_at, last.id::text,
           gone.completed, gone.failed,
           (SELECT count(*) FROM steps_gone), (SELECT count(*) FROM waits_gone)
    FROM (SELECT count(*) FILTER (WHERE status IN ('completed', 'skipped')) AS completed,
                 count(*) FILTER (WHERE status IN ('failed', 'cancelled')) AS failed
          FROM runs_gone) gone
    LEFT JOIN LATERAL (SELECT s.created_at, s.id FROM scanned s
                       ORDER BY s.created_at DESC, s.id DESC LIMIT 1) last ON true
    """


def delete_runs(
    conn: Conn,
    *,
    completed_age: float | None,
    failed_age: float | None,
    after: RunCursor | None,
    limit: int,
    now: datetime | None = None,
) -> RunBatch:
    """Read up to `limit` runs created before the cutoffs, going on from `after`, and delete
    those that have expired (see the module doc) with their steps and waits."""
    params = {
        "now": clock.pick(now),
        "completed_age": completed_age,
        "failed_age": failed_age,
        "after_at": after.created_at if after else None,
        "after_id": after.id if after else None,
        "limit": limit,
    }
    row = driver(conn).execute(_DELETE_RUNS, params, prepare=True).fetchone()
    assert row is not None
    scanned, last_at, last_id, completed, failed, steps, waits = row
    cursor = RunCursor(last_at, last_id) if last_at is not None else None
    return RunBatch(scanned, cursor, scanned < limit, completed, failed, steps, waits)


_EVENT_EXPIRED = f"""
    e.ingested_at IS NOT NULL AND e.received_at < params.before
    AND NOT EXISTS (SELECT 1 FROM orchestrator.runs r
                    WHERE r.event_id = e.id AND r.status IN {_ACTIVE})"""

_EVENT_CUTOFF = """
    params AS (
        SELECT coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(age)s::float8)
               AS before
    )"""

_DELETE_EVENTS = f"""
    WITH {_EVENT_CUTOFF},
    scanned AS MATERIALIZED (
        SELECT seq, received_at FROM orchestrator.events
        WHERE seq > %(after)s ORDER BY seq LIMIT %(limit)s
    ),
    doomed AS MATERIALIZED (
        SELECT e.id FROM orchestrator.events e, params
        WHERE e.seq = ANY(ARRAY(SELECT seq FROM scanned)) AND {_EVENT_EXPIRED}
        ORDER BY e.seq
        FOR UPDATE OF e SKIP LOCKED
    ),
    gone AS (
        DELETE FROM orchestrator.events WHERE id = ANY(ARRAY(SELECT id FROM doomed)) RETURNING 1
    )
    SELECT (SELECT count(*) FROM scanned),
           coalesce((SELECT min(s.seq) - 1 FROM scanned s WHERE s.received_at >= params.before),
                    (SELECT max(seq) FROM scanned)),
           coalesce((SELECT bool_or(s.received_at >= params.before) FROM scanned s), false),
           (SELECT count(*) FROM gone)
    FROM params
    """


def delete_events(
    conn: Conn, *, age: float, after: int | None, limit: int, now: datetime | None = None
) -> EventBatch:
    """Read up to `limit` events in `seq` order after `after`, and delete those ingested and
    received more than `age` seconds ago that no active run was triggered by. The walk is
    exhausted at the first event received after the cutoff, and goes on from just before it
    (`last_seq`)."""
    params = {"now": clock.pick(now), "age": age, "after": after or 0, "limit": limit}
    row = driver(conn).execute(_DELETE_EVENTS, params, prepare=True).fetchone()
    assert row is not None
    scanned, last_seq, horizon, deleted = row
    return EventBatch(scanned, last_seq, scanned < limit or bool(horizon), deleted)


_DAEMON_EXPIRED = """
    d.status IN ('stopped', 'dead')
    AND coalesce(d.stopped_at, d.heartbeat_at)
        < coalesce(%(now)s::timestamptz, now()) - make_interval(secs => %(age)s::float8)
    AND NOT EXISTS (SELECT 1 FROM orchestrator.leader l WHERE l.daemon_id = d.id)
    AND NOT EXISTS (SELECT 1 FROM orchestrator.runs r
                    WHERE r.status = 'running' AND r.lease_owner = d.id)"""


def delete_daemons(conn: Conn, *, age: float, limit: int, now: datetime | None = None) -> int:
    """Delete up to `limit` rows of daemons stopped or declared dead more than `age` seconds
    ago (never a running or stopping one)."""
    return (
        driver(conn)
        .execute(
            "DELETE FROM orchestrator.daemons WHERE id IN (SELECT d.id FROM "
            f"orchestrator.daemons d WHERE {_DAEMON_EXPIRED} ORDER BY d.id LIMIT %(limit)s "
            "FOR UPDATE SKIP LOCKED)",
            {"now": clock.pick(now), "age": age, "limit": limit},
        )
        .rowcount
    )


_BACKLOG = f"""
    WITH {_CUTOFFS},
    doomed AS MATERIALIZED (
        SELECT r.id, r.status FROM orchestrator.runs r, params
        WHERE r.created_at < {_RUNS_BEFORE} AND {_RUN_EXPIRED}
    )
    SELECT (SELECT count(*) FROM doomed WHERE status IN ('completed', 'skipped')),
           (SELECT count(*) FROM doomed WHERE status IN ('failed', 'cancelled')),
           (SELECT count(*) FROM orchestrator.steps
            WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))),
           (SELECT count(*) FROM orchestrator.waits
            WHERE run_id = ANY(ARRAY(SELECT id FROM doomed))),
           (SELECT count(*) FROM orchestrator.events e,
                (SELECT coalesce(%(now)s::timestamptz, now())
                        - make_interval(secs => %(event_age)s::float8) AS before) params
            WHERE {_EVENT_EXPIRED}),
           (SELECT count(*) FROM orchestrator.daemons d
            WHERE {_DAEMON_EXPIRED.replace("%(age)s", "%(daemon_age)s")})
    """


def backlog(
    conn: Conn,
    *,
    completed_age: float | None,
    failed_age: float | None,
    event_age: float | None,
    daemon_age: float,
    now: datetime | None = None,
) -> Backlog:
    """Count what a pass would delete now, locking and changing nothing. It reads every
    candidate at once: for `orchestrator gc --dry-run`, not for the daemon."""
    params = {
        "now": clock.pick(now),
        "completed_age": completed_age,
        "failed_age": failed_age,
        "event_age": event_age,
        "daemon_age": daemon_age,
    }
    row = driver(conn).execute(_BACKLOG, params).fetchone()
    assert row is not None
    return Backlog(*row)
