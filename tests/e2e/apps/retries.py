"""Functions whose steps fail on purpose, to exercise the retry policy end to end.

Each step body records its execution in `effects` first, then decides whether to fail from the
number of executions recorded so far, so the outcome does not depend on the engine's counters.
"""

from __future__ import annotations

from typing import Any

from orchestrator import (
    Backoff,
    Context,
    NonRetriableError,
    Orchestrator,
    RetryAfterError,
    StepError,
    event,
)
from tests.e2e.apps.common import record
from tests.e2e.apps.counting import executions

app = Orchestrator()
FAST = Backoff.of(base=0.2, max=1)


class FlakyError(RuntimeError):
    pass


def fail_until(run_id: str, step: str, succeed_on: int) -> dict[str, Any]:
    """Fail on every execution before the `succeed_on`-th one."""
    record(run_id, step)
    n = executions(run_id, step)
    if n < succeed_on:
        raise FlakyError(f"{step}: execution {n} fails on purpose")
    return {"step": step, "execution": n}


@app.function("flaky", trigger=event("retry/flaky"), retries=3, backoff=FAST)
def flaky(ctx: Context) -> dict[str, Any]:
    succeed_on = int(ctx.event.data.get("succeed_on", 3))
    return ctx.step.run("flaky-step", fail_until, ctx.run_id, "flaky-step", succeed_on)


@app.function("non-retriable", trigger=event("retry/non-retriable"), retries=3, backoff=FAST)
def non_retriable(ctx: Context) -> str:
    def refuse() -> str:
        record(ctx.run_id, "refuse")
        raise NonRetriableError("card declined: do not retry")

    return ctx.step.run("refuse", refuse)


@app.function("saga", trigger=event("retry/saga"), retries=1, backoff=FAST)
def saga(ctx: Context) -> dict[str, Any]:
    def charge() -> str:
        record(ctx.run_id, "charge")
        raise FlakyError("payment provider is down")

    def refund(reason: str) -> str:
        record(ctx.run_id, "refund")
        return f"refunded after: {reason}"

    try:
        ctx.step.run("charge", charge)
    except StepError as exc:
        note = ctx.step.run("refund", refund, exc.error_type)
        return {"compensated": note, "failed_step": exc.step_id, "error_type": exc.error_type}
    return {"compensated": None}


@app.function("retry-after", trigger=event("retry/after"), retries=3, backoff=FAST)
def retry_after(ctx: Context) -> int:
    delay = float(ctx.event.data["delay"])

    def rate_limited() -> int:
        record(ctx.run_id, "rate-limited")
        n = executions(ctx.run_id, "rate-limited")
        if n == 1:
            raise RetryAfterError(delay, "rate limited by the provider")
        return n

    return ctx.step.run("rate-limited", rate_limited)


@app.function("always-fails", trigger=event("retry/always"), retries=2, backoff=FAST)
def always_fails(ctx: Context) -> None:
    def broken() -> None:
        record(ctx.run_id, "broken")
        raise FlakyError("always broken")

    ctx.step.run("broken", broken)
