"""How many runs of each function are due and not executing, and how long the oldest has
waited: the due queue's depth and lag, for the metrics.

One statement probes every function with two index scans of `runs_function_due`
(`(function_id, due_at, id) WHERE status IN ('queued', 'sleeping', 'waiting')`): the first
due row for the lag, and at most `cap` due rows for the depth. So the cost is bounded by
the number of functions and the cap, not by the size of the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, text

from orchestrator.db import clock

_DUE = (
    "r.function_id = f.id AND r.status IN ('queued', 'sleeping', 'waiting') "
    f"AND r.due_at <= {clock.SQL_TEXT}"
)

_PROBE = f"""
    SELECT f.id, depth.n, extract(epoch FROM {clock.SQL_TEXT} - oldest.due_at)::float8
    FROM unnest(CAST(:p_fids AS text[])) AS f(id)
    CROSS JOIN LATERAL (
        SELECT count(*) AS n FROM (
            -- in index order, so that the plan walks the index and stops at the cap
            SELECT 1 FROM orchestrator.runs r WHERE {_DUE} ORDER BY r.due_at LIMIT :p_cap
        ) capped
    ) depth
    LEFT JOIN LATERAL (
        SELECT r.due_at FROM orchestrator.runs r WHERE {_DUE} ORDER BY r.due_at LIMIT 1
    ) oldest ON true
    ORDER BY f.id
"""


@dataclass(frozen=True)
class DueBacklog:
    function_id: str
    depth: int  # due runs, counted up to the cap
    lag_seconds: float  # how long the oldest due run has been due (0 when none is)


def due_backlog(conn: Connection, function_ids: list[str], *, cap: int) -> list[DueBacklog]:
    """Depth (at most `cap`) and lag of each function's due runs, by the database clock."""
    if not function_ids:
        return []
    # a probe that takes long is of no use; never let one hold a connection for long
    conn.execute(text("SET LOCAL statement_timeout = '5s'"))
    params = {"p_fids": sorted(function_ids), "p_cap": cap, "p_now": clock.current()}
    rows = conn.execute(text(_PROBE), params)
    return [DueBacklog(fid, int(n), max(0.0, float(lag or 0.0))) for fid, n, lag in rows]
