"""Read back `effects` from inside a step body (how many times has this step run?)."""

from __future__ import annotations

from tests.e2e.apps.common import _conn


def executions(run_id: str, step: str) -> int:
    """How many executions of `step` in `run_id` have been recorded, this one included."""
    row = (
        _conn()
        .execute(
            "SELECT count(*) FROM public.effects WHERE run_id = %s AND step = %s", (run_id, step)
        )
        .fetchone()
    )
    return int(row[0]) if row else 0
