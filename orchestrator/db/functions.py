"""Statements on `orchestrator.functions` and `orchestrator.schedules`, and on who serves the
functions.

A function is served while a running daemon lists it in `daemons.functions` (a daemon that
lists nothing known, registered before that column existed, counts as serving every
function). Runs of a function nobody serves wait forever: `unserved_backlog` finds them for
the leader's warning and metric, `serving` says who serves what for `orchestrator
functions`, and `hold`/`remove` retire a function from the registry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.db.runs import CancelWatch
from orchestrator.db.schema import ACTIVE_STATUSES

if TYPE_CHECKING:
    from orchestrator.functions import FunctionDef

# Running daemons that serve the function `{f}.id` (NULL functions: any).
_SERVES = "d.status = 'running' AND (d.functions IS NULL OR {f}.id = ANY(d.functions))"

_NOW = clock.SQL_TEXT


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


def record_all(conn: Connection, registry: Mapping[str, FunctionDef]) -> None:
    """Record every function of an app, in id order (the order every statement locks their
    rows in): what a daemon serving it does at start-up, and a test environment."""
    for fid, fdef in sorted(registry.items()):
        desc = fdef.describe()
        upsert(conn, fid, triggers=desc.pop("triggers"), options=desc, version=fdef.source_hash())


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
            "INSERT INTO orchestrator.functions "
            "(id, triggers, options, version, created_at, updated_at) "
            "VALUES (:p_id, CAST(:p_triggers AS jsonb), CAST(:p_options AS jsonb), :p_version, "
            f"        {_NOW}, {_NOW}) "
            "ON CONFLICT (id) DO UPDATE SET triggers = EXCLUDED.triggers, "
            "options = EXCLUDED.options, version = EXCLUDED.version, "
            "updated_at = EXCLUDED.updated_at "
            "WHERE (functions.triggers, functions.options, functions.version) IS DISTINCT FROM "
            "(EXCLUDED.triggers, EXCLUDED.options, EXCLUDED.version)"
        ),
        {
            "p_id": function_id,
            "p_triggers": json.dumps(triggers),
            "p_options": json.dumps(options),
            "p_version": version,
            "p_now": clock.current(),
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
    """The current time by the database's clock (or the virtual clock, db/clock.py)."""
    value: datetime = conn.execute(
        text("SELECT coalesce(CAST(:p_now AS timestamptz), now())"), {"p_now": clock.current()}
    ).scalar_one()
    return value


def upsert_schedule(
    conn: Connection, function_id: str, *, cron: str, tz: str, next_fire_at: datetime
) -> None:
    """Record a cron schedule; the next fire time is kept unless the expression changed."""
    conn.execute(
        text(
            "INSERT INTO orchestrator.schedules (function_id, cron, tz, next_fire_at, updated_at) "
            f"VALUES (:p_fid, :p_cron, :p_tz, :p_next, {_NOW}) "
            "ON CONFLICT (function_id) DO UPDATE SET cron = EXCLUDED.cron, tz = EXCLUDED.tz, "
            "next_fire_at = EXCLUDED.next_fire_at, updated_at = EXCLUDED.updated_at "
            "WHERE (schedules.cron, schedules.tz) IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.tz)"
        ),
        {
            "p_fid": function_id,
            "p_cron": cron,
            "p_tz": tz,
            "p_next": next_fire_at,
            "p_now": clock.current(),
        },
    )


def claim_due_schedules(conn: Connection, function_ids: list[str]) -> list[DueSchedule]:
    rows = conn.execute(
        text(
            f"SELECT function_id, cron, tz, next_fire_at, {_NOW} FROM orchestrator.schedules "
            f"WHERE next_fire_at <= {_NOW} AND function_id = ANY(CAST(:p_ids AS text[])) "
            "ORDER BY next_fire_at FOR UPDATE SKIP LOCKED"
        ),
        {"p_ids": function_ids, "p_now": clock.current()},
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
            "last_run_id = coalesce(CAST(:p_run AS uuid), last_run_id), "
            "updated_at = coalesce(CAST(:p_now AS timestamptz), now()) "
            "WHERE function_id = :p_fid"
        ),
        {
            "p_fid": function_id,
            "p_fired": fired_at,
            "p_next": next_fire_at,
            "p_run": run_id,
            "p_now": clock.current(),
        },
    )


@dataclass(frozen=True)
class ServingDaemon:
    daemon_id: str
    hostname: str
    pid: int
    app: str
    heartbeat_at: datetime


@dataclass(frozen=True)
class Serving:
    """Who serves a function now, and when one last did."""

    function_id: str
    daemons: list[ServingDaemon]
    last_served_at: datetime | None  # the latest heartbeat of a live one, else the record


def serving(conn: Connection) -> dict[str, Serving]:
    """Every registered function's serving daemons and when it was last served."""
    rows = conn.execute(
        text(
            "SELECT f.id, coalesce(s.daemons, '[]'::jsonb), "
            "greatest(f.last_served_at, s.last_heartbeat, g.last_heartbeat) "
            "FROM orchestrator.functions f "
            "LEFT JOIN LATERAL (SELECT jsonb_agg(jsonb_build_object('daemon_id', d.id, "
            "'hostname', d.hostname, 'pid', d.pid, 'app', d.app, 'heartbeat_at', "
            "d.heartbeat_at) ORDER BY d.started_at, d.id) AS daemons, "
            "max(d.heartbeat_at) AS last_heartbeat "
            f"FROM orchestrator.daemons d WHERE {_SERVES.format(f='f')}) s ON true "
            # a daemon stopping (draining) serves no more, but did a moment ago
            "LEFT JOIN LATERAL (SELECT max(d.heartbeat_at) AS last_heartbeat "
            "FROM orchestrator.daemons d WHERE d.status = 'stopping' "
            "AND f.id = ANY(d.functions)) g ON true ORDER BY f.id"
        )
    )
    return {fid: Serving(fid, _daemons(found), last) for fid, found, last in rows}


def _daemons(found: list[dict[str, Any]]) -> list[ServingDaemon]:
    return [
        ServingDaemon(
            str(d["daemon_id"]),
            d["hostname"],
            int(d["pid"]),
            d["app"],
            datetime.fromisoformat(d["heartbeat_at"]),
        )
        for d in found
    ]


@dataclass(frozen=True)
class UnservedBacklog:
    function_id: str
    runs: int  # due runs, counted up to the cap
    since: datetime  # when the oldest of them fell due
    waited_seconds: float  # how long ago that was, by the database clock


# The unserved functions are found first, behind a fence: the planner cannot tell how many
# functions the daemons serve, and would otherwise count the due runs of every function.
_UNSERVED = f"""
    WITH unserved AS MATERIALIZED (
        SELECT f.id, greatest(f.last_served_at, (
            -- a daemon draining after SIGTERM served it until its last heartbeat
            SELECT max(d.heartbeat_at) FROM orchestrator.daemons d
            WHERE d.status = 'stopping' AND (d.functions IS NULL OR f.id = ANY(d.functions))
        )) AS served_until
        FROM orchestrator.functions f
        WHERE NOT EXISTS (SELECT FROM orchestrator.daemons d WHERE {_SERVES.format(f="f")})
    )
    -- waited: since the runs were due, or since the function was last served if later (a
    -- backlog older than a restart has not waited for want of a daemon all that time)
    SELECT u.id, due.n, due.since,
           extract(epoch FROM {_NOW} - greatest(due.since, u.served_until))::float8
    FROM unserved u
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, min(c.due_at) AS since FROM (
            SELECT r.due_at FROM orchestrator.runs r
            WHERE r.function_id = u.id AND r.status IN ('queued', 'sleeping', 'waiting')
              AND r.due_at <= {_NOW} AND r.cancel_requested_at IS NULL
            ORDER BY r.due_at LIMIT :p_cap
        ) c
    ) due
    WHERE due.n > 0
    ORDER BY u.id
"""


def unserved_backlog(conn: Connection, *, cap: int) -> list[UnservedBacklog]:
    """The registered functions no running daemon serves that have due runs (not being
    cancelled): how many (up to `cap`) and since when. Costs an index probe of
    `runs_function_due` per unserved function, and nothing per served one."""
    rows = conn.execute(text(_UNSERVED), {"p_cap": cap, "p_now": clock.current()})
    return [UnservedBacklog(fid, int(n), since, max(0.0, wait)) for fid, n, since, wait in rows]


@dataclass(frozen=True)
class Hold:
    """What keeps a function from being removed from the registry."""

    function_id: str
    daemons: list[ServingDaemon]  # running daemons that serve it (it would register again)
    active: dict[str, int]  # its unfinished runs by status
    buffered: int  # events gathered for a debounced or batched run not made yet


def hold(conn: Connection, function_id: str, *, lock: bool = False) -> Hold | None:
    """What holds the function in the registry; None if it is not registered. `lock` takes
    its row lock, so a daemon registering it again waits for this transaction."""
    lock_clause = " FOR UPDATE" if lock else ""
    found = conn.execute(
        text(f"SELECT id FROM orchestrator.functions WHERE id = :p_id{lock_clause}"),
        {"p_id": function_id},
    ).scalar()
    if found is None:
        return None
    by_status = conn.execute(
        text(
            "SELECT status, count(*) FROM orchestrator.runs WHERE function_id = :p_id "
            "AND status = ANY(CAST(:p_active AS text[])) GROUP BY status ORDER BY status"
        ),
        {"p_id": function_id, "p_active": list(ACTIVE_STATUSES)},
    )
    buffered = conn.execute(
        text("SELECT count(*) FROM orchestrator.buffered_events WHERE function_id = :p_id"),
        {"p_id": function_id},
    ).scalar_one()
    live = serving_daemons(conn, function_id)
    return Hold(function_id, live, {s: int(n) for s, n in by_status}, int(buffered))


def serving_daemons(conn: Connection, function_id: str) -> list[ServingDaemon]:
    rows = conn.execute(
        text(
            "SELECT d.id::text, d.hostname, d.pid, d.app, d.heartbeat_at FROM "
            "orchestrator.daemons d, (SELECT CAST(:p_id AS text) AS id) f "
            f"WHERE {_SERVES.format(f='f')} ORDER BY d.started_at, d.id"
        ),
        {"p_id": function_id},
    )
    return [ServingDaemon(*row) for row in rows]


def active_run_ids(conn: Connection, function_id: str) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT id::text FROM orchestrator.runs WHERE function_id = :p_id "
            "AND status = ANY(CAST(:p_active AS text[])) ORDER BY created_at, id"
        ),
        {"p_id": function_id, "p_active": list(ACTIVE_STATUSES)},
    )
    return [row[0] for row in rows]


def remove(conn: Connection, function_id: str) -> int:
    """Delete the function from the registry (its schedule goes with it) and the events
    buffered for it; returns how many buffered events were dropped. The daemons are told
    at commit, so that their ingest stops starting it at once."""
    dropped = conn.execute(
        text("DELETE FROM orchestrator.buffered_events WHERE function_id = :p_id"),
        {"p_id": function_id},
    ).rowcount
    conn.execute(text("DELETE FROM orchestrator.functions WHERE id = :p_id"), {"p_id": function_id})
    conn.execute(text("SELECT pg_notify('orchestrator_functions', '')"))
    return int(dropped)
