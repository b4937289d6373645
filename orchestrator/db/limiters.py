"""Statements on `orchestrator.limiters`: the state of throttles and rate limits.

Each row is one key of one function's throttle or rate limit, holding its theoretical arrival
time (`tat`) in the generic cell rate algorithm (runtime/gcra.py). A throttle's rows are read
and written under the function's flow-control lock (db/flow.py); a rate limit's rows are
locked with FOR UPDATE by the ingest that applies them, so two daemons take turns.
"""

from __future__ import annotations

from datetime import UTC, datetime

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver

_NOW = clock.SQL

NEVER = datetime(1970, 1, 1, tzinfo=UTC)  # the state of a key not seen yet


def load(
    conn: Conn, function_id: str, kind: str, keys: list[str], *, lock: bool
) -> tuple[datetime, dict[str, datetime]]:
    """The database's now, and the state of these keys (NEVER for a new one). With `lock`,
    the rows are created if missing and locked until the transaction ends."""
    cur = driver(conn)
    params = {
        "f": function_id,
        "kind": kind,
        "keys": sorted(set(keys)),
        "never": NEVER,
        "now": clock.current(),
    }
    if lock:
        cur.execute(
            "INSERT INTO orchestrator.limiters (function_id, kind, key, tat, updated_at) "
            f"SELECT %(f)s, %(kind)s, k, %(never)s, {_NOW} FROM unnest(%(keys)b::text[]) AS k "
            "ORDER BY k ON CONFLICT DO NOTHING",
            params,
        )
    lock_clause = " FOR UPDATE" if lock else ""
    row = cur.execute(
        "WITH found AS (SELECT key, tat FROM orchestrator.limiters WHERE function_id = %(f)s "
        f"AND kind = %(kind)s AND key = ANY(%(keys)b::text[]) ORDER BY key{lock_clause}) "
        f"SELECT {_NOW}, array_agg(key), array_agg(tat) FROM found",
        params,
    ).fetchone()
    assert row is not None  # an aggregate returns one row
    now, found_keys, tats = row
    state = dict.fromkeys(keys, NEVER)
    state.update(zip(found_keys or [], tats or [], strict=True))
    return now, state


def store(conn: Conn, function_id: str, kind: str, state: dict[str, datetime]) -> None:
    """Record the new state of these keys."""
    if not state:
        return
    driver(conn).execute(
        "INSERT INTO orchestrator.limiters (function_id, kind, key, tat, updated_at) "
        f"SELECT %(f)s, %(kind)s, k, t, {_NOW} "
        "FROM unnest(%(keys)s::text[], %(tats)s::timestamptz[]) AS u(k, t) "
        "ON CONFLICT (function_id, kind, key) DO UPDATE SET tat = EXCLUDED.tat, "
        "updated_at = EXCLUDED.updated_at",
        {
            "f": function_id,
            "kind": kind,
            "keys": list(state),
            "tats": list(state.values()),
            "now": clock.current(),
        },
    )


def purge(conn: Conn, *, limit: int = 1000) -> int:
    """Delete rows whose state has run out (their time has passed: a new key behaves the
    same), skipping rows in use."""
    return (
        driver(conn)
        .execute(
            "DELETE FROM orchestrator.limiters WHERE (function_id, kind, key) IN ("
            "SELECT function_id, kind, key FROM orchestrator.limiters "
            f"WHERE tat < {_NOW} - interval '1 minute' LIMIT %(limit)s FOR UPDATE SKIP LOCKED)",
            {"limit": limit, "now": clock.current()},
        )
        .rowcount
    )
