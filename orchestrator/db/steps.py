"""Statements on `orchestrator.steps`: load a run's memo, save a step under a held run row.

The hot path writes steps in groups (see db/checkpoints.py) and loads the memos of resumed
runs in batches (`load_many`, see engine/loader.py)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver


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
    event_id: str | None = None  # the event that ended a waiting step (`steps.event_id`)
    started_at: datetime | None = None  # when the attempt began, on the database's clock


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
    started_at: datetime | None = None  # when the attempt began (NULL: no body, or older)


_COLUMNS = (
    "run_id::text, step_id, position, kind, status, attempt, output, error, wake_at, "
    "duration_ms, created_at, updated_at, started_at"
)

_VALUES = """
    SELECT CAST(:p_run AS uuid), :p_step, :p_position, :p_kind, :p_status, :p_attempt,
           CAST(:p_output AS jsonb), CAST(:p_error AS jsonb), CAST(:p_wake AS timestamptz),
           :p_duration, :p_event, coalesce(CAST(:p_now AS timestamptz), now()),
           coalesce(CAST(:p_now AS timestamptz), now()), CAST(:p_started AS timestamptz)
"""
_UPSERT_TAIL = """
    ON CONFLICT (run_id, step_id) DO UPDATE SET
        kind = EXCLUDED.kind, status = EXCLUDED.status, attempt = EXCLUDED.attempt,
        output = EXCLUDED.output, error = EXCLUDED.error, wake_at = EXCLUDED.wake_at,
        duration_ms = EXCLUDED.duration_ms, event_id = EXCLUDED.event_id,
        started_at = EXCLUDED.started_at,
        updated_at = coalesce(CAST(:p_now AS timestamptz), now())
"""
_INSERT = (
    "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, "
    "output, error, wake_at, duration_ms, event_id, created_at, updated_at, started_at)"
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
        "p_event": step.event_id,
        "p_started": step.started_at,
        "p_now": clock.current(),
    }


def save_locked(conn: Connection, run_id: str, step: StepRecord) -> None:
    """Write a step when this transaction already holds the run row (after `runs.suspend`)."""
    conn.execute(_UNFENCED, _params(run_id, step))


def load(conn: Connection, run_id: str) -> list[StepRow]:
    rows = conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM orchestrator.steps WHERE run_id = CAST(:p_run AS uuid) "
            "ORDER BY position, step_id"
        ),
        {"p_run": run_id},
    )
    return [StepRow(*row) for row in rows]


_LOAD_MANY = f"""
    SELECT {_COLUMNS} FROM orchestrator.steps WHERE run_id = ANY(%(runs)b::uuid[])
    ORDER BY run_id, position, step_id
    """


def load_many(conn: Conn, run_ids: list[str]) -> dict[str, list[StepRow]]:
    """The recorded steps of each of these runs (a run without any gets an empty list), in
    the order `load` gives them, with one statement."""
    loaded: dict[str, list[StepRow]] = {run_id: [] for run_id in run_ids}
    if not run_ids:
        return loaded
    given = {_canonical(run_id): run_id for run_id in run_ids}  # rows carry the canonical form
    for row in driver(conn).execute(_LOAD_MANY, {"runs": run_ids}, prepare=True):
        loaded[given[row[0]]].append(StepRow(*row))
    return loaded


def _canonical(run_id: str) -> str:
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return run_id  # the statement rejects it
