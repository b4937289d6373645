"""Statements on `orchestrator.daemons`: registration, heartbeats, liveness.

A daemon records the ids of the functions it serves when it registers (`daemons.functions`);
heartbeats never touch them. When it stops or is declared dead, its functions'
`last_served_at` is brought forward, so that when a function was last served is known after
the daemon's row is gone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from orchestrator.db import clock

# Advisory lock namespace (first int4 of the two-key form) of the daemons' liveness locks.
DAEMON_LOCK_CLASS = 0x6F726369


@dataclass(frozen=True)
class DaemonRow:
    id: str
    lock_key: int
    hostname: str
    pid: int
    app: str
    version: str
    workers: int
    concurrency: int
    status: str
    is_leader: bool
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None
    heartbeat_age: float


_NOW = clock.SQL_TEXT
_COLUMNS = (
    "id::text, lock_key, hostname, pid, app, version, workers, concurrency, status, is_leader, "
    f"started_at, heartbeat_at, stopped_at, extract(epoch FROM {_NOW} - heartbeat_at)::float8"
)


def register(
    conn: Connection,
    daemon_id: str,
    *,
    hostname: str,
    pid: int,
    app: str,
    version: str,
    workers: int,
    concurrency: int,
    functions: Sequence[str] = (),
) -> int:
    """Insert this daemon's row with the ids of the functions it serves; returns its
    liveness lock key."""
    key: int = conn.execute(
        text(
            "INSERT INTO orchestrator.daemons (id, hostname, pid, app, version, workers, "
            "concurrency, functions, started_at, heartbeat_at) VALUES (CAST(:p_id AS uuid), "
            ":p_host, :p_pid, :p_app, :p_version, :p_workers, :p_conc, "
            f"CAST(:p_functions AS text[]), {_NOW}, {_NOW}) RETURNING lock_key"
        ),
        {
            "p_id": daemon_id,
            "p_host": hostname,
            "p_pid": pid,
            "p_app": app,
            "p_version": version,
            "p_workers": workers,
            "p_conc": concurrency,
            "p_functions": sorted(functions),
            "p_now": clock.current(),
        },
    ).scalar_one()
    return key


def set_functions(conn: Connection, daemon_id: str, functions: Sequence[str]) -> None:
    """Record the ids of the functions this daemon serves now (a daemon serving Inngest
    SDK apps takes on their functions as the apps sync)."""
    conn.execute(
        text(
            "UPDATE orchestrator.daemons SET functions = CAST(:p_functions AS text[]) "
            "WHERE id = CAST(:p_id AS uuid)"
        ),
        {"p_id": daemon_id, "p_functions": sorted(functions)},
    )


def heartbeat(conn: Connection, daemon_id: str, *, is_leader: bool, status: str) -> str | None:
    """Refresh the heartbeat and status; returns the status the row had (None if missing)."""
    previous: str | None = conn.execute(
        text(
            f"UPDATE orchestrator.daemons d SET heartbeat_at = {_NOW}, is_leader = :p_leader, "
            "status = :p_status, stopped_at = NULL FROM orchestrator.daemons old "
            "WHERE d.id = CAST(:p_id AS uuid) AND old.id = d.id RETURNING old.status"
        ),
        {"p_id": daemon_id, "p_leader": is_leader, "p_status": status, "p_now": clock.current()},
    ).scalar()
    return previous


# Brings forward `last_served_at` of the functions of the daemon(s) CTE `gone` returned,
# locking their rows in id order first, as a starting daemon's registration does: two
# daemons, one signing off and one starting, cannot deadlock over them.
_LAST_SERVED = (
    ", locked AS MATERIALIZED (SELECT f.id, gone.served_until FROM orchestrator.functions f "
    "JOIN gone ON f.id = ANY(gone.functions) ORDER BY f.id FOR NO KEY UPDATE OF f) "
    "UPDATE orchestrator.functions f SET last_served_at = "
    "greatest(f.last_served_at, locked.served_until) FROM locked WHERE f.id = locked.id"
)


def mark_stopped(conn: Connection, daemon_id: str) -> None:
    """The daemon stopped: its functions were served until now."""
    conn.execute(
        text(
            "WITH gone AS (UPDATE orchestrator.daemons SET status = 'stopped', "
            f"stopped_at = {_NOW}, is_leader = false WHERE id = CAST(:p_id AS uuid) "
            f"RETURNING functions, {_NOW} AS served_until)" + _LAST_SERVED
        ),
        {"p_id": daemon_id, "p_now": clock.current()},
    )


def mark_dead(conn: Connection, daemon_id: str) -> None:
    """The daemon is gone: its functions were served until its last heartbeat."""
    conn.execute(
        text(
            "WITH gone AS (UPDATE orchestrator.daemons SET status = 'dead', "
            f"stopped_at = {_NOW}, is_leader = false "
            "WHERE id = CAST(:p_id AS uuid) AND status <> 'stopped' "
            "RETURNING functions, heartbeat_at AS served_until)" + _LAST_SERVED
        ),
        {"p_id": daemon_id, "p_now": clock.current()},
    )


def list_live(conn: Connection) -> list[DaemonRow]:
    rows = conn.execute(
        text(
            f"SELECT {_COLUMNS} FROM orchestrator.daemons "
            "WHERE status IN ('running', 'stopping') ORDER BY started_at"
        ),
        {"p_now": clock.current()},
    )
    return [DaemonRow(*row) for row in rows]


def is_lock_free(conn: Connection, lock_key: int) -> bool:
    """True if no session holds the daemon's liveness lock (its connection is gone)."""
    got = bool(
        conn.execute(
            text("SELECT pg_try_advisory_lock(:p_class, :p_key)"),
            {"p_class": DAEMON_LOCK_CLASS, "p_key": lock_key},
        ).scalar()
    )
    if got:
        conn.execute(
            text("SELECT pg_advisory_unlock(:p_class, :p_key)"),
            {"p_class": DAEMON_LOCK_CLASS, "p_key": lock_key},
        )
    return got


def elect(conn: Connection, daemon_id: str, *, ttl: float) -> bool:
    """Take or keep leadership for `ttl` seconds; True if this daemon now leads.

    The current leader extends its term; anyone else takes over only once the term expired.
    """
    leader = conn.execute(
        text(
            "INSERT INTO orchestrator.leader AS l (name, daemon_id, elected_at, expires_at) "
            f"VALUES ('leader', CAST(:p_id AS uuid), {_NOW}, "
            f"        {_NOW} + make_interval(secs => :p_ttl)) "
            "ON CONFLICT (name) DO UPDATE SET daemon_id = EXCLUDED.daemon_id, "
            "elected_at = CASE WHEN l.daemon_id = EXCLUDED.daemon_id THEN l.elected_at "
            "ELSE EXCLUDED.elected_at END, expires_at = EXCLUDED.expires_at "
            f"WHERE l.daemon_id = EXCLUDED.daemon_id OR l.expires_at < {_NOW} "
            "RETURNING daemon_id::text"
        ),
        {"p_id": daemon_id, "p_ttl": ttl, "p_now": clock.current()},
    ).scalar()
    return leader == daemon_id


def resign(conn: Connection, daemon_id: str) -> None:
    conn.execute(
        text("DELETE FROM orchestrator.leader WHERE daemon_id = CAST(:p_id AS uuid)"),
        {"p_id": daemon_id},
    )
