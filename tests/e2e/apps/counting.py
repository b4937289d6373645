"""Read back `effects` from inside a step body (how many times has this step run?)."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg

_local = threading.local()


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["ORCHESTRATOR_DATABASE_URL"], autocommit=True)
        _local.conn = conn
    return conn


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
