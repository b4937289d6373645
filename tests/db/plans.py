"""The generic plan of a prepared statement, as a prepared statement with these parameters
runs once Postgres stops re-planning it (the hot statements are prepared), with EXPLAIN
ANALYZE. The statement's `%(name)s`/`%(name)b` placeholders become `$n` in first-use order."""

from __future__ import annotations

import re
from typing import Any

import psycopg


def generic_plan(
    conn: psycopg.Connection[Any], stmt: str, args: dict[str, Any], types: dict[str, str]
) -> str:
    """EXPLAIN (ANALYZE) of `stmt`'s generic plan with `args`, each cast to `types[name]`, in a
    transaction rolled back afterwards (so its writes are undone)."""
    order = list(dict.fromkeys(re.findall(r"%\((\w+)\)[bs]", stmt)))
    for n, name in enumerate(order, start=1):
        stmt = re.sub(r"%\(" + name + r"\)[bs]", f"${n}", stmt)
    placeholders = ", ".join(f"%s::{types[name]}" for name in order)
    with conn.transaction(force_rollback=True):
        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE planned AS {stmt}")
        try:
            rows = (
                psycopg.ClientCursor(conn)  # values inlined: EXPLAIN cannot type parameters
                .execute(
                    f"EXPLAIN (ANALYZE) EXECUTE planned({placeholders})", [args[n] for n in order]
                )
                .fetchall()
            )
        finally:
            conn.execute("DEALLOCATE planned")
    return "\n".join(str(row[0]) for row in rows)


def most_removed_by_join(plan: str) -> int:
    """The most rows a join's filter threw away: a join comparing every pair of two inputs
    throws away nearly all of their product."""
    removed = [int(line.split(":")[1]) for line in plan.splitlines() if "Removed by Join" in line]
    return max(removed, default=0)
