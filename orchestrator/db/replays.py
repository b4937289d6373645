"""Statements behind replay, resume and fork (see orchestrator/recovery.py).

- a replay or a fork is a new run made with `runs.create_many`, then marked with its origin;
- a fork starts with copies of the steps the original recorded before the step it forks
  from;
- a resume puts a failed or cancelled run back in the queue, forgetting the step that failed
  it (and any unfinished attempt or wait), so that step runs again while the completed ones
  are replayed from their records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.db.direct import driver
from orchestrator.db.runs import (
    RUN_COLUMNS,
    CancelWatch,
    RunRow,
    insert_cancel_watches,
    watch_params,
)

RESUMABLE = ("failed", "cancelled")
FINISHED = ("completed", "failed", "cancelled", "skipped")


@dataclass(frozen=True)
class RecordedStep:
    step_id: str
    position: int
    kind: str
    status: str


def matching(
    conn: Connection,
    *,
    statuses: tuple[str, ...],
    function_id: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[str]:
    """Ids of the runs with one of `statuses` (of `function_id` if given) that finished in
    [since, until), oldest first."""
    rows = conn.execute(
        text(
            "SELECT id::text FROM orchestrator.runs "
            "WHERE status = ANY(CAST(:p_statuses AS text[])) "
            "AND (CAST(:p_fid AS text) IS NULL OR function_id = :p_fid) "
            "AND (CAST(:p_since AS timestamptz) IS NULL "
            "     OR coalesce(finished_at, updated_at) >= :p_since) "
            "AND (CAST(:p_until AS timestamptz) IS NULL "
            "     OR coalesce(finished_at, updated_at) < :p_until) "
            "ORDER BY coalesce(finished_at, updated_at), id"
        ),
        {
            "p_statuses": list(statuses),
            "p_fid": function_id,
            "p_since": since,
            "p_until": until,
        },
    )
    return [row[0] for row in rows]


def originals(conn: Connection, run_ids: list[str]) -> list[RunRow]:
    rows = conn.execute(
        text(f"SELECT {RUN_COLUMNS} FROM orchestrator.runs WHERE id = ANY(CAST(:p_ids AS uuid[]))"),
        {"p_ids": run_ids},
    )
    return [RunRow(*row) for row in rows]


def hold(conn: Connection, run_id: str) -> bool:
    """Keep the run from being deleted (by retention) until the transaction ends; False if
    it is gone already."""
    row = conn.execute(
        text("SELECT 1 FROM orchestrator.runs WHERE id = CAST(:p_run AS uuid) FOR KEY SHARE"),
        {"p_run": run_id},
    ).first()
    return row is not None


def steps_of(conn: Connection, run_id: str) -> list[RecordedStep]:
    rows = conn.execute(
        text(
            "SELECT step_id, position, kind, status FROM orchestrator.steps "
            "WHERE run_id = CAST(:p_run AS uuid) ORDER BY position, step_id"
        ),
        {"p_run": run_id},
    )
    return [RecordedStep(*row) for row in rows]


def mark_origin(conn: Connection, pairs: list[tuple[str, str]], origin: str) -> None:
    """Record that each new run (first of a pair) was made from the run (second) by
    `origin` ('replay' or 'fork'). It keeps the original's trace context: its spans join the
    original's trace (and link to it, see orchestrator/runtime/tracing.py)."""
    conn.execute(
        text(
            "UPDATE orchestrator.runs r SET origin = :p_origin, origin_run_id = t.source, "
            "trace_context = o.trace_context "
            "FROM unnest(CAST(:p_new AS uuid[]), CAST(:p_sources AS uuid[])) AS t(id, source) "
            "JOIN orchestrator.runs o ON o.id = t.source "
            "WHERE r.id = t.id"
        ),
        {"p_origin": origin, "p_new": [p[0] for p in pairs], "p_sources": [p[1] for p in pairs]},
    )


def copy_steps(conn: Connection, source: str, target: str, *, before: int) -> int:
    """Copy the finished steps `source` recorded before position `before` to `target`."""
    result = conn.execute(
        text(
            "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, "
            "output, error, wake_at, duration_ms, created_at, updated_at, started_at) "
            "SELECT CAST(:p_target AS uuid), step_id, position, kind, status, attempt, output, "
            "error, wake_at, duration_ms, created_at, updated_at, started_at "
            "FROM orchestrator.steps "
            "WHERE run_id = CAST(:p_source AS uuid) AND position < :p_before "
            "AND status IN ('completed', 'failed')"
        ),
        {"p_target": target, "p_source": source, "p_before": before},
    )
    return int(result.rowcount)


# The step that failed the run is the one its error names (else the last failed one); it and
# the failed steps after it (other branches of a parallel group) are forgotten, with every
# unfinished attempt or wait. Failures before it were caught by the code and stay recorded,
# so the code takes the same path as before. A sleep keeps its wake-up time.
_RESUME = """
    WITH target AS (
        SELECT r.id, r.error FROM orchestrator.runs r
        WHERE r.id = ANY(CAST(:p_ids AS uuid[])) AND r.status IN ('failed', 'cancelled')
        FOR UPDATE
    ),
    cut AS (
        SELECT t.id, CASE WHEN t.error ? 'step' THEN
                   (SELECT s.position FROM orchestrator.steps s WHERE s.run_id = t.id
                    AND s.step_id = t.error ->> 'step' AND s.status = 'failed')
               ELSE (SELECT max(s.position) FROM orchestrator.steps s
                     WHERE s.run_id = t.id AND s.status = 'failed') END AS position
        FROM target t
    ),
    forgotten AS (
        DELETE FROM orchestrator.steps s USING cut c
        WHERE s.run_id = c.id AND (s.status IN ('retrying', 'waiting')
                                   OR (s.status = 'failed' AND s.position >= c.position))
    ),
    unwatched AS (
        DELETE FROM orchestrator.waits w USING target t WHERE w.run_id = t.id
    )
    UPDATE orchestrator.runs r
    SET status = 'queued', due_at = coalesce(CAST(:p_now AS timestamptz), now()),
        output = NULL, error = NULL, finished_at = NULL,
        recoveries = 0, crashes = 0, retries = 0, cancel_requested_at = NULL,
        cancel_children = true, lease_owner = NULL,
        lease_token = NULL, lease_expires_at = NULL, resumes = r.resumes + 1,
        updated_at = coalesce(CAST(:p_now AS timestamptz), now())
    FROM target t WHERE r.id = t.id
    RETURNING r.id::text
"""

# A resumed run's `cancel_on` conditions watch again, from now.
_WATCH = f"""
    {insert_cancel_watches("r", clock.SQL_BINARY, clock.SQL_BINARY)}
    FROM orchestrator.runs r
    JOIN unnest(%(c_fids)b::text[], %(c_ns)b::int[], %(c_events)b::text[],
                %(c_paths)b::text[], %(c_exprs)b::text[], %(c_timeouts)b::float8[])
         AS c(fid, n, ev, path, expr, timeout) ON c.fid = r.function_id
    WHERE r.id = ANY(%(ids)b::uuid[]) AND r.status = 'queued'
    ON CONFLICT DO NOTHING
"""


def resume(conn: Connection, run_ids: list[str], watches: list[CancelWatch]) -> list[str]:
    """Requeue the failed or cancelled runs among `run_ids`; returns those requeued."""
    params = {"p_ids": run_ids, "p_now": clock.current()}
    resumed = [row[0] for row in conn.execute(text(_RESUME), params)]
    if resumed and watches:
        params = {"ids": resumed, "now": clock.current(), **watch_params(watches)}
        driver(conn).execute(_WATCH, params)
    return resumed
