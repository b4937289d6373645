"""Statements on `orchestrator.functions` and `orchestrator.schedules`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.db.runs import CancelWatch


@dataclass(frozen=True)
class FunctionRow:
    id: str
    triggers: list[dict[str, Any]]
    options: dict[str, Any]
    version: str
    updated_at: datetime


@dataclass(frozen=True)
class DueSchedule:
    function_id: str
    cron: str
    tz: str
    next_fire_at: datetime
    now: datetime


def upsert(
    conn: Connection,
    function_id: str,
    *,
    triggers: list[dict[str, Any]],
    options: dict[str, Any],
    version: str,
) -> None:
    conn.execute(
        text(
            "INSERT INTO orchestrator.functions (id, triggers, options, version) "
            "VALUES (:p_id, CAST(:p_triggers AS jsonb), CAST(:p_options AS jsonb), :p_version) "
            "ON CONFLICT (id) DO UPDATE SET triggers = EXCLUDED.triggers, "
            "options = EXCLUDED.options, version = EXCLUDED.version, updated_at = now() "
            "WHERE (functions.triggers, functions.options, functions.version) IS DISTINCT FROM "
            "(EXCLUDED.triggers, EXCLUDED.options, EXCLUDED.version)"
        ),
        {
            "p_id": function_id,
            "p_triggers": json.dumps(triggers),
            "p_options": json.dumps(options),
            "p_version": version,
        },
    )


def list_all(conn: Connection) -> list[FunctionRow]:
    rows = conn.execute(
        text(
            "SELECT id, triggers, options, version, updated_at FROM orchestrator.functions "
            "ORDER BY id"
        )
    )
    return [FunctionRow(*row) for row in rows]


def event_subscriptions(conn: Connection) -> dict[str, list[tuple[str, str | None]]]:
    """Event name → (function id, `if` expression or None) of every trigger on it, from every
    registered function."""
    rows = conn.execute(
        text(
            "SELECT t->>'name', f.id, t->>'if' FROM orchestrator.functions f, "
            "jsonb_array_elements(f.triggers) t WHERE t->>'type' = 'event' ORDER BY f.id"
        )
    )
    subs: dict[str, list[tuple[str, str | None]]] = {}
    for name, function_id, expression in rows:
        subs.setdefault(name, []).append((function_id, expression))
    return subs


def options(conn: Connection) -> dict[str, dict[str, Any]]:
    """Every registered function's options (retries, cancel_on, flow control, …)."""
    rows = conn.execute(text("SELECT id, options FROM orchestrator.functions"))
    return {row[0]: row[1] for row in rows}


def cancel_watches(conn: Connection) -> list[CancelWatch]:
    """The `cancel_on` conditions of every registered function."""
    rows = conn.execute(
        text(
            "SELECT f.id, (c.n - 1)::int, c.spec->>'event', c.spec->>'match', c.spec->>'if', "
            "(c.spec->>'timeout')::float8 FROM orchestrator.functions f, "
            "jsonb_array_elements(coalesce(f.options->'cancel_on', '[]'::jsonb)) "
            "WITH ORDINALITY AS c(spec, n) ORDER BY f.id, c.n"
        )
    )
    return [CancelWatch(*row) for row in rows]


def db_now(conn: Connection) -> datetime:
    value: datetime = conn.execute(text("SELECT now()")).scalar_one()
    return value


def upsert_schedule(
    conn: Connection, function_id: str, *, cron: str, tz: str, next_fire_at: datetime
) -> None:
    """Record a cron schedule; the next fire time is kept unless the expression changed."""
    conn.execute(
        text(
            "INSERT INTO orchestrator.schedules (function_id, cron, tz, next_fire_at) "
            "VALUES (:p_fid, :p_cron, :p_tz, :p_next) "
            "ON CONFLICT (function_id) DO UPDATE SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, "
            "next_fire_at = EXCLUDED.next_fire_at, updated_at = now() "
            "WHERE (schedules.cron, schedules.tz) IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.tz)"
        ),
        {"p_fid": function_id, "p_cron": cron, "p_tz": tz, "p_next": next_fire_at},
    )


def claim_due_schedules(conn: Connection, function_ids: list[str]) -> list[DueSchedule]:
    rows = conn.execute(
        text(
            "SELECT function_id, cron, tz, next_fire_at, now() FROM orchestrator.schedules "
            "WHERE next_fire_at <= now() AND function_id = ANY(CAST(:p_ids AS text[])) "
            "ORDER BY next_fire_at FOR UPDATE SKIP LOCKED"
        ),
        {"p_ids": function_ids},
    )
    return [DueSchedule(*row) for row in rows]


def mark_fired(
    conn: Connection,
    function_id: str,
    *,
    fired_at: datetime,
    next_fire_at: datetime,
    run_id: str | None,
) -> None:
    conn.execute(
        text(
            "UPDATE orchestrator.schedules SET last_fired_at = :p_fired, next_fire_at = :p_next, "
            "last_run_id = coalesce(CAST(:p_run AS uuid), last_run_id), updated_at = now() "
            "WHERE function_id = :p_fid"
        ),
        {"p_fid": function_id, "p_fired": fired_at, "p_next": next_fire_at, "p_run": run_id},
    )
