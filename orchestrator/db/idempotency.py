"""Statements on `orchestrator.idempotency_keys`: the keys of a function's idempotency
option that were seen, until they expire."""

from __future__ import annotations

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver

_NOW = clock.SQL


def claim(conn: Conn, entries: list[tuple[str, str, str, float]]) -> set[tuple[str, str]]:
    """Record (function id, key, event id, period in seconds) entries; returns the
    (function id, key) pairs that were new or whose earlier entry had expired. An entry
    recorded by a transaction still open waits for it, so two daemons cannot both see a key
    as new."""
    if not entries:
        return set()
    rows = driver(conn).execute(
        "INSERT INTO orchestrator.idempotency_keys "
        "(function_id, key, event_id, expires_at, created_at) "
        f"SELECT f, k, e, {_NOW} + make_interval(secs => p), {_NOW} "
        "FROM unnest(%(f)s::text[], %(k)s::text[], %(e)s::text[], %(p)s::float8[]) "
        "AS t(f, k, e, p) "
        "ORDER BY f, k "
        "ON CONFLICT (function_id, key) DO UPDATE SET event_id = EXCLUDED.event_id, "
        "expires_at = EXCLUDED.expires_at, created_at = EXCLUDED.created_at "
        f"WHERE idempotency_keys.expires_at <= {_NOW} "
        "RETURNING function_id, key",
        {
            "f": [e[0] for e in entries],
            "k": [e[1] for e in entries],
            "e": [e[2] for e in entries],
            "p": [e[3] for e in entries],
            "now": clock.current(),
        },
    )
    return {(row[0], row[1]) for row in rows}


def purge(conn: Conn, *, limit: int = 1000) -> int:
    """Delete expired keys (an expired key is treated as new anyway)."""
    return (
        driver(conn)
        .execute(
            "DELETE FROM orchestrator.idempotency_keys WHERE (function_id, key) IN ("
            "SELECT function_id, key FROM orchestrator.idempotency_keys "
            f"WHERE expires_at <= {_NOW} LIMIT %(limit)s FOR UPDATE SKIP LOCKED)",
            {"limit": limit, "now": clock.current()},
        )
        .rowcount
    )
