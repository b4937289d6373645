"""Functions for function-level retries and step timeouts under kill -9.

Step bodies and the function's own code record each execution in `effects` (on their own
connection, tests/e2e/apps/common.py), so the tests count executions independently of the
engine's tables.
"""

from __future__ import annotations

from typing import Any

from orchestrator import Backoff, Context, Orchestrator, event
from tests.e2e.apps.common import record, wait_gate
from tests.e2e.apps.counting import executions

app = Orchestrator()
# 2-4 s between attempts (equal jitter): long enough to kill the daemon meanwhile
PENDING = Backoff.of(base=4, max=4)


def one(run_id: str) -> str:
    record(run_id, "one")
    return "one done"


@app.function("raise-after-step", trigger=event("fretry/after-step"), retries=2, backoff=PENDING)
def raise_after_step(ctx: Context) -> dict[str, Any]:
    first = ctx.step.run("one", one, ctx.run_id)
    record(ctx.run_id, "code")  # the function's own code after the step, on every execution
    if executions(ctx.run_id, "code") == 1:
        raise ConnectionError("the code after step one failed on its first execution")
    return {"one": first, "executions": executions(ctx.run_id, "code")}


def slow(run_id: str) -> str:
    """Blocks past the step's timeout on its first execution (until a gate nobody opens)."""
    record(run_id, "slow")
    n = executions(run_id, "slow")
    if n == 1:
        wait_gate(f"{run_id}:slow", timeout=120)
    return f"slow done on execution {n}"


@app.function("timed-step", trigger=event("fretry/timed-step"), retries=0)
def timed_step(ctx: Context) -> dict[str, Any]:
    first = ctx.step.run("one", one, ctx.run_id)
    done = ctx.step.run("slow", slow, ctx.run_id, timeout=1, retries=2, backoff=PENDING)
    return {"one": first, "slow": done}
