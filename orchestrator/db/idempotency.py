"""Statements on `orchestrator.idempotency_keys`: the keys of a function's idempotency
option that were seen, until they expire."""

from __future__ import annotations

from orchestrator.db.direct import Conn, driver


def claim(conn: Conn, entries: list[tuple[str, str, str, float]]) -> set[tuple[str, str]]:
    """Record (function id, key, event id, period in seconds) entries; returns the
    (function id, key) pairs that were new or whose earlier entry had expired. An entry
    recorded by a transaction still open waits for it, so two daemons cannot both see a key
    as new."""
    if not entries:
        return set()
    rows = driver(conn).execute(
        "INSERT INTO orchestrator.idempotency_keys (function_id, key, event_id, expires_at) "
        "SELECT f, k, e, now() + make_interval(secs => p) "
        "FROM unnest(%s::text[], %s::text[], %s::text[], %s::float8[]) AS t(f, k, e, p) "
        "ORDER BY f, k "
        "ON CONFLICT (function_id, key) DO UPDATE SET event_id = EXCLUDED.event_id, "
        "expires_at = EXCLUDED.expires_at, created_at = now() "
        "WHERE idempotency_keys.expires_at <= now() "
        "RETURNING function_id, key",
        (
            [e[0] for e in entries],
            [e[1] for e in entries],
            [e[2] for e in entries],
            [e[3] for e in entries],
        ),
    )
    return {(row[0], row[1]) for row in rows}


def purge(conn: Conn, *, limit: int = 1000) -> int:
    """Delete expired keys (an expired key is treated as new anyway)."""
    return (
        driver(conn)
        .execute(
            "DELETE FROM orchestrator.idempotency_keys WHERE (function_id, key) IN ("
            "SELECT function_id, key FROM orchestrator.idempotency_keys WHERE expires_at <= now() "
            "LIMIT %s FOR UPDATE SKIP LOCKED)",
            (limit,),
        )
        .rowcount
    )
