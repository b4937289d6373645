"""Side effects recorded on their own connection, so tests can count step-body executions
independently of the engine's own tables."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import psycopg

_local = threading.local()

SCHEMA_SQL = """
CREATE TABLE IF NOT EXISTS public.effects (
    run_id text NOT NULL, step text NOT NULL, pid int NOT NULL, at timestamptz DEFAULT now()
);
CREATE TABLE IF NOT EXISTS public.gates (name text PRIMARY KEY);
"""


def _conn() -> psycopg.Connection[Any]:
    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed:
        conn = psycopg.connect(os.environ["ORCHESTRATOR_DATABASE_URL"], autocommit=True)
        _local.conn = conn
    return conn


def record(run_id: str, step: str) -> None:
    """Note that a step body ran (committed before the body returns)."""
    _conn().execute(
        "INSERT INTO public.effects (run_id, step, pid) VALUES (%s, %s, %s)",
        (run_id, step, os.getpid()),
    )


def wait_gate(name: str, timeout: float = 120.0) -> None:
    """Block until a test opens the gate `name` (INSERT INTO gates)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _conn().execute("SELECT 1 FROM public.gates WHERE name = %s", (name,)).fetchone():
            return
        time.sleep(0.02)
    raise TimeoutError(f"gate {name!r} was never opened")


def ensure_schema(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SCHEMA_SQL)
