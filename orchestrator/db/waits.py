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
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db.direct import Conn, driver
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
        "FROM unnest(%(names)s::text[]) AS n ORDER BY k) keys",
        {"cls": WAIT_LOCK_CLASS, "names": names},
        prepare=True,
    )


# Suspend a running run on a wait, fenced on its lease, in one statement: the run waits until
# the wait expires (or for good), its step is recorded as waiting, the wait is stored.
_SUSPEND = """
    WITH held AS (
        UPDATE orchestrator.runs
        SET status = 'waiting', due_at = %(due)s, updated_at = now(),
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL
        WHERE id = %(run)s::uuid AND lease_token = %(token)s::uuid AND status = 'running'
        RETURNING id
    ),
    step AS (
        INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, wake_at)
        SELECT id, %(step)s, %(position)s, %(kind)s, 'waiting', 1, %(expires)s FROM held
        ON CONFLICT (run_id, step_id) DO UPDATE SET
            kind = EXCLUDED.kind, status = EXCLUDED.status, wake_at = EXCLUDED.wake_at,
            updated_at = now()
    ),
    stored AS (
        INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path,
                                        match_value, expression, since, expires_at)
        SELECT id, %(step)s, 'event', %(name)s, %(path)s, %(value)s::jsonb, %(expr)s,
               %(since)s, %(expires)s
        FROM held
        ON CONFLICT (run_id, step_id) DO NOTHING
    )
    SELECT count(*) FROM held
    """


def suspend(conn: Conn, wait: Wait, record: StepRecord, *, token: str, due: datetime) -> bool:
    """Suspend the run on `wait` (see `_SUSPEND`); False if its lease no longer holds."""
    params = {
        "run": wait.run_id,
        "token": token,
        "due": due,
        "step": wait.step_id,
        "position": record.position,
        "kind": record.kind,
        "name": wait.event_name,
        "path": wait.match_path or "",
        "value": wait.match_value_json,
        "expr": wait.expression,
        "since": wait.since,
        "expires": wait.expires_at,
    }
    row = driver(conn).execute(_SUSPEND, params, prepare=True).fetchone()
    return bool(row and row[0])


def remove(conn: Conn, run_id: str, step_id: str) -> None:
    driver(conn).execute(
        "DELETE FROM orchestrator.waits WHERE run_id = %s::uuid AND step_id = %s",
        (run_id, step_id),
    )


# For each event: the distinct match paths in use for its name (a skip scan of the index,
# one probe per path), then one index lookup per (event, path) for the expected value.
_CANDIDATES = """
    WITH ev AS MATERIALIZED (
        SELECT * FROM unnest(%(names)s::text[], %(datas)s::jsonb[], %(received)s::timestamptz[])
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
# wait rows; a run no longer waiting, or a wait already resolved, is left alone.
_RESOLVE = """
    WITH input AS MATERIALIZED (
        SELECT * FROM unnest(%(runs)s::uuid[], %(steps)s::text[], %(events)s::jsonb[])
             AS t(run_id, step_id, event)
    ),
    locked AS MATERIALIZED (
        SELECT r.id FROM orchestrator.runs r
        WHERE r.id IN (SELECT run_id FROM input) AND r.status = 'waiting'
        ORDER BY r.id
        FOR UPDATE
    ),
    gone AS (
        DELETE FROM orchestrator.waits w USING input i, locked l
        WHERE w.run_id = i.run_id AND w.step_id = i.step_id AND l.id = i.run_id
        RETURNING w.run_id, w.step_id
    ),
    stepped AS (
        UPDATE orchestrator.steps s
        SET status = 'completed', output = i.event, updated_at = now()
        FROM gone g JOIN input i ON i.run_id = g.run_id AND i.step_id = g.step_id
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
