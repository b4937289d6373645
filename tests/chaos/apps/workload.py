"""The fault tests' workload. Every step body records (run, step, token in, token out) on its
own connection before returning, so the checker can compare what really executed with what
the engine recorded."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import datetime
from typing import Any

import psycopg

from orchestrator import Backoff, Context, Orchestrator, event

app = Orchestrator()
_local = threading.local()

EFFECTS_SQL = """
CREATE TABLE IF NOT EXISTS public.chaos_effects (
    run_id    text NOT NULL,
    step      text NOT NULL,
    token_in  text NOT NULL,
    token_out text NOT NULL,
    pid       int NOT NULL,
    at        timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS chaos_effects_run ON public.chaos_effects (run_id, step);
"""


def _record(run_id: str, step: str, token_in: str, token_out: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            conn = getattr(_local, "conn", None)
            if conn is None or conn.closed:
                conn = psycopg.connect(os.environ["ORCHESTRATOR_DATABASE_URL"], autocommit=True)
                _local.conn = conn
            conn.execute(
                "INSERT INTO public.chaos_effects (run_id, step, token_in, token_out, pid) "
                "VALUES (%s, %s, %s, %s, %s)",
                (run_id, step, token_in, token_out, os.getpid()),
            )
            return
        except psycopg.OperationalError:
            _local.conn = None
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def body(run_id: str, step: str, token_in: str, work_ms: int) -> str:
    token_out = uuid.uuid4().hex
    if work_ms:
        time.sleep(work_ms / 1000)
    _record(run_id, step, token_in, token_out)
    return token_out


def die(run_id: str) -> None:
    _record(run_id, "die", "-", uuid.uuid4().hex)
    os._exit(137)


FAST = Backoff.of(base=0.05, max=0.5)


@app.function("chaos-flow", trigger=event("chaos/flow"), retries=5, backoff=FAST)
def flow(ctx: Context) -> dict[str, Any]:
    data = ctx.event.data
    token = ctx.event.id
    tokens = []
    for i in range(int(data.get("steps", 3))):
        token = ctx.step.run(f"s{i}", body, ctx.run_id, f"s{i}", token, data.get("work_ms", 0))
        tokens.append(token)
    return {"tokens": tokens}


@app.function("chaos-timer", trigger=event("chaos/timer"), retries=5, backoff=FAST)
def timer(ctx: Context) -> dict[str, Any]:
    first = ctx.step.run("s0", body, ctx.run_id, "s0", ctx.event.id, 0)
    ctx.step.sleep_until("wait", datetime.fromisoformat(ctx.event.data["at"]))
    second = ctx.step.run("s1", body, ctx.run_id, "s1", first, 0)
    return {"tokens": [first, second]}


@app.function("chaos-poison", trigger=event("chaos/poison"))
def poison(ctx: Context) -> None:
    ctx.step.run("die", die, ctx.run_id)
