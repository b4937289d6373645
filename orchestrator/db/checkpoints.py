"""The group write: step records and terminal statuses of many runs, fenced, in one statement.

This is the statement behind group commit (engine/commit.py). Run on a direct connection in
autocommit it is a whole transaction: one round trip and one WAL flush make every write in
the group durable. It

1. locks the rows of the runs whose lease token still matches, in id order (like every
   multi-row lock here, so it cannot deadlock with a rescue or a lease renewal), and re-reads
   each under the lock: a rescue that committed first has changed the token, and the run's
   write is dropped; a rescue that comes later waits for this commit;
2. upserts the step records of those runs;
3. records the terminal status of those runs that finished, with what ending a run entails
   (db/finish.py);
4. merges the state a write carries (`ctx.set_state`, see engine/execution.py) into its
   run's `state`, with the finish or, for a run that goes on, by itself;

and returns the ids of the runs whose write was made, and of those whose write was refused
because a cancellation ended the run (its execution stops quietly: nothing went wrong). A run
appears at most once in a group.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver
from orchestrator.db.finish import after_finish
from orchestrator.db.steps import StepRecord

SETTINGS = {"plan_cache_mode": "force_generic_plan", "jit": "off"}
"""The settings of a connection that makes group writes: the statement's generic plan, every
time. It looks each run up by its id whatever the group's size, and a custom plan for each
group (which Postgres would otherwise keep choosing for small groups: their estimated cost
is below the generic plan's) costs a millisecond or more of planning per write."""


@dataclass(frozen=True)
class GroupWrite:
    """One run's write under its lease: a step record, a terminal status, or both (a run's
    last step and its end, in one write)."""

    run_id: str
    token: str
    step: StepRecord | None = None
    final_status: str | None = None  # completed | failed
    output_json: str | None = None  # the run's output, with final_status
    error_json: str | None = None  # the run's error, with final_status
    # the finish has effects beyond the run's row (db/finish.py): the run failed or was
    # cancelled, has a parent, or has cancellation conditions to remove
    effects: bool = False
    # the keys the run set with ctx.set_state (a JSON object), merged into runs.state
    state_json: str | None = None


_NOW = clock.SQL_BINARY
_WRITE_GROUP_HEAD = f"""
WITH input AS MATERIALIZED (
    SELECT * FROM unnest(
        %(runs)b::uuid[], %(tokens)b::uuid[], %(steps)b::text[], %(positions)b::int[],
        %(kinds)b::text[], %(step_statuses)b::text[], %(attempts)b::int[],
        %(outputs)b::text[], %(errors)b::text[], %(wakes)b::timestamptz[],
        %(durations)b::int[], %(finals)b::text[], %(run_outputs)b::text[],
        %(run_errors)b::text[], %(states)b::text[], %(event_ids)b::text[],
        %(starts)b::timestamptz[]
    ) AS t(run_id, token, step_id, position, kind, step_status, attempt, output, error,
           wake_at, duration_ms, final, run_output, run_error, state, event_id, started_at)
),
-- (id, token): a stale write of a held run is not made with it. Each run is looked up
-- and locked by its id, in id order. A join would let a generic plan read every running run
-- for each group (the `runs_running` index), however few it writes; and so would a lookup
-- that says `status = 'running'`, for each run of the group, since that partial index is the
-- smallest that answers it. The token is what fences (a claim sets it, every status change
-- away from running clears it); the status is checked on the row once locked.
held AS MATERIALIZED (
    SELECT h.id, h.token FROM (SELECT run_id, token FROM input ORDER BY run_id) i
    CROSS JOIN LATERAL (
        SELECT r.id, r.lease_token AS token, r.status FROM orchestrator.runs r
        WHERE r.id = i.run_id AND r.lease_token = i.token
        OFFSET 0  -- the status test below is not pushed in here
        FOR NO KEY UPDATE
    ) h
    WHERE h.status = 'running'
),
refused AS MATERIALIZED (  -- runs not held because a cancellation ended them (db/runs.py)
    -- the held ones first (a hashed subplan), then a lookup by id for each other (a
    -- scalar subquery, which is not turned into a join over every cancelled run)
    SELECT i.run_id AS id FROM input i
    WHERE i.run_id NOT IN (SELECT id FROM held)
      AND (SELECT r.status FROM orchestrator.runs r WHERE r.id = i.run_id) = 'cancelled'
),
saved AS (
    INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt,
                                    output, error, wake_at, duration_ms, event_id,
                                    created_at, updated_at, started_at)
    SELECT i.run_id, i.step_id, i.position, i.kind, i.step_status, i.attempt,
           i.output::jsonb, i.error::jsonb, i.wake_at, i.duration_ms, i.event_id, {_NOW}, {_NOW},
           i.started_at
    FROM input i JOIN held h ON h.id = i.run_id AND h.token = i.token
    WHERE i.step_id IS NOT NULL
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        kind = EXCLUDED.kind, status = EXCLUDED.status, attempt = EXCLUDED.attempt,
        output = EXCLUDED.output, error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
        duration_ms = EXCLUDED.duration_ms, event_id = EXCLUDED.event_id,
        started_at = EXCLUDED.started_at, updated_at = {_NOW}
    RETURNING run_id
),
finished AS (
    UPDATE orchestrator.runs r
    SET status = i.final, output = i.run_output::jsonb,
        error = i.run_error::jsonb,
        finished_at = {_NOW}, updated_at = {_NOW},
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        state = coalesce(r.state || i.state::jsonb, r.state)
    FROM input i JOIN held h ON h.id = i.run_id AND h.token = i.token
    -- held: running, and locked by this statement (no status here: see `held`)
    WHERE r.id = i.run_id AND i.final IS NOT NULL
    RETURNING r.id, r.function_id, r.status, r.output, r.error, r.events, r.parent_run_id
),
stated AS (  -- a run that goes on: its state alone (a finish carries its own, above)
    UPDATE orchestrator.runs r SET state = r.state || i.state::jsonb
    FROM input i JOIN held h ON h.id = i.run_id AND h.token = i.token
    WHERE r.id = i.run_id AND i.final IS NULL AND i.state IS NOT NULL
)
"""
# Every held run's write is made (the upsert and the update cannot skip a held run), and
# the data-modifying CTEs run whether or not the result reads them.
_WRITE_GROUP_TAIL = """
SELECT id::text, true FROM held UNION ALL SELECT id::text, false FROM refused
"""
_WRITE_GROUP = _WRITE_GROUP_HEAD + _WRITE_GROUP_TAIL
# Only when a finish in the group has effects: they cost a fifth of the throughput of
# short runs if made for every group.
_WRITE_GROUP_EFFECTS = _WRITE_GROUP_HEAD + after_finish("finished", _NOW) + _WRITE_GROUP_TAIL


def prepare(conn: Conn) -> None:
    """Plan both forms of the group statement on this connection now (a worker at start-up,
    so that its first checkpoint pays for neither): each with a write for a run that does not
    exist, which changes nothing."""
    nobody = str(uuid.UUID(int=0))
    step = StepRecord("-", 0, "run", "completed", 1, output_json="null", duration_ms=0)
    write_group(conn, [GroupWrite(nobody, nobody, step=step)])
    write_group(conn, [GroupWrite(nobody, nobody, final_status="completed", output_json="null")])
    write_group(conn, [GroupWrite(nobody, nobody, final_status="failed", effects=True)])


def write_group(conn: Conn, writes: list[GroupWrite]) -> dict[str, bool]:
    """Make every write whose lease still holds; returns the ids of those runs (True), and
    of the runs whose write was refused because a cancellation ended them (False)."""
    if not writes:
        return {}
    steps = [w.step for w in writes]
    params = {
        "runs": [w.run_id for w in writes],
        "tokens": [w.token for w in writes],
        "steps": [s.step_id if s else None for s in steps],
        "positions": [s.position if s else None for s in steps],
        "kinds": [s.kind if s else None for s in steps],
        "step_statuses": [s.status if s else None for s in steps],
        "attempts": [s.attempt if s else None for s in steps],
        "outputs": [s.output_json if s else None for s in steps],
        "errors": [s.error_json if s else None for s in steps],
        "wakes": [s.wake_at if s else None for s in steps],
        "durations": [s.duration_ms if s else None for s in steps],
        "finals": [w.final_status for w in writes],
        "run_outputs": [w.output_json for w in writes],
        "run_errors": [w.error_json for w in writes],
        "states": [w.state_json for w in writes],
        "event_ids": [s.event_id if s else None for s in steps],
        "starts": [s.started_at if s else None for s in steps],
        "now": clock.current(),
    }
    stmt = _WRITE_GROUP_EFFECTS if any(w.effects for w in writes) else _WRITE_GROUP
    rows = driver(conn).execute(stmt, params, prepare=True).fetchall()
    return {str(row[0]): bool(row[1]) for row in rows}
