"""Statements on `orchestrator.steps`: load a run's memo, checkpoint a step under the lease."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text


@dataclass(frozen=True)
class StepRecord:
    """What a worker writes for one step."""

    step_id: str
    position: int
    kind: str
    status: str
    attempt: int
    output_json: str | None = None
    error_json: str | None = None
    duration_ms: int | None = None
    wake_at: datetime | None = None


@dataclass(frozen=True)
class StepRow:
    run_id: str
    step_id: str
    position: int
    kind: str
    status: str
    attempt: int
    output: Any
    error: Any
    wake_at: datetime | None
    duration_ms: int | None
    created_at: datetime
    updated_at: datetime


_COLUMNS = (
    "run_id::text, step_id, position, kind, status, attempt, output, error, wake_at, "
    "duration_ms, created_at, updated_at"
)

_VALUES = """
    SELECT CAST(:p_run AS uuid), :p_step, :p_position, :p_kind, :p_status, :p_attempt,
           CAST(:p_output AS jsonb), CAST(:p_error AS jsonb), CAST(:p_wake AS timestamptz),
           :p_duration
"""
_UPSERT_TAIL = """
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        kind = EXCLUDED.kind, status = EXCLUDED.status, attempt = EXCLUDED.attempt,
        output = EXCLUDED.output, error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
        duration_ms = EXCLUDED.duration_ms, updated_at = now()
"""
_INSERT = (
    "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, "
    "output, error, wake_at, duration_ms)"
)

# FOR SHARE conflicts with the UPDATE a rescue makes, so either this checkpoint commits before
# the rescue (and the new owner replays it) or it sees the new token and writes nothing.
_FENCED = text(
    f"""
    WITH fence AS (
        SELECT id FROM orchestrator.runs
        WHERE id = CAST(:p_run AS uuid) AND lease_token = CAST(:p_token AS uuid)
          AND status = 'running'
        FOR SHARE
    )
    {_INSERT}
    {_VALUES} FROM fence
    {_UPSERT_TAIL}
    """
)
_UNFENCED = text(f"{_INSERT} {_VALUES} {_UPSERT_TAIL}")


def _params(run_id: str, step: StepRecord) -> dict[str, Any]:
    return {
        "p_run": run_id,
        "p_step": step.step_id,
        "p_position": step.position,
        "p_kind": step.kind,
        "p_status": step.status,
        "p_attempt": step.attempt,
        "p_output": step.output_json,
        "p_error": step.error_json,
        "p_wake": step.wake_at,
        "p_duration": step.duration_ms,
    }


def checkpoint(conn: Connection, run_id: str, token: str, step: StepRecord) -> bool:
    """Write a step if `token` is still the run's lease; False (nothing written) otherwise."""
    params = _params(run_id, step) | {"p_token": token}
    return conn.execute(_FENCED, params).rowcount == 1


def save_locked(conn: Connection, run_id: str, step: StepRecord) -> None:
    """Write a step when this transaction already holds the run row (after `runs.suspend`)."""
    conn.execute(_UNFENCED, _params(run_id, step))


_SAVE_MANY = text(
    f"""
    {_INSERT}
    SELECT r, s, p, k, st, a, CAST(o AS jsonb), CAST(e AS jsonb), w, d
    FROM unnest(CAST(:p_runs AS uuid[]), CAST(:p_steps AS text[]), CAST(:p_positions AS int[]),
                CAST(:p_kinds AS text[]), CAST(:p_statuses AS text[]),
                CAST(:p_attempts AS int[]), CAST(:p_outputs AS text[]),
                CAST(:p_errors AS text[]), CAST(:p_wakes AS timestamptz[]),
                CAST(:p_durations AS int[])) AS t(r, s, p, k, st, a, o, e, w, d)
    {_UPSERT_TAIL}
    """
)


def save_many(conn: Connection, items: list[tuple[str, StepRecord]]) -> None:
    """Write many steps in one statement, when this transaction already holds their run rows
    (see `runs.lock_leases`). At most one record per (run, step) in one call."""
    if not items:
        return
    conn.execute(
        _SAVE_MANY,
        {
            "p_runs": [run_id for run_id, _ in items],
            "p_steps": [s.step_id for _, s in items],
            "p_positions": [s.position for _, s in items],
            "p_kinds": [s.kind for _, s in items],
            "p_statuses": [s.status for _, s in items],
            "p_attempts": [s.attempt for _, s in items],
            "p_outputs": [s.output_json for _, s in items],
            "p_errors": [s.error_json for _, s in items],
            "p_wakes": [s.wake_at for _, s in items],
            "p_durations": [s.duration_ms for _, s in items],
        },
    )


def load(conn: Connection, run_id: str) -> list[StepRow]:
    rows = conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM orchestrator.steps WHERE run_id = CAST(:p_run AS uuid) "
            "ORDER BY position, step_id"
        ),
        {"p_run": run_id},
    )
    return [StepRow(*row) for row in rows]
