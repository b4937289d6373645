"""Functions for the look-back and wait-for-any tests (tests/e2e/test_wait_lookback.py)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from orchestrator import Context, OnEvent, Orchestrator, event
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()


@app.function("two-approvals", trigger=event("doc/submitted"))
def two_approvals(ctx: Context) -> list[str | None]:
    """Two approvals in a row, the second looking back: it finds an approval that arrived
    while the first wait was pending, and never the one that ended the first wait."""
    ctx.step.run("one", record, ctx.run_id, "one")
    first = ctx.step.wait_for_event(
        "first", event="doc/approved", match="data.doc", timeout=60, lookback="run"
    )

    def between() -> None:
        record(ctx.run_id, "between")
        wait_gate(f"{ctx.run_id}:between")

    ctx.step.run("between", between)
    second = ctx.step.wait_for_event(
        "second", event="doc/approved", match="data.doc", timeout=60, lookback="run"
    )
    return [first and first.id, second and second.id]


@app.function("early-bird", trigger=event("bird/start"))
def early_bird(ctx: Context) -> dict[str, Any]:
    """Its event was received before the run was created: only the look back finds it."""
    ctx.step.run("before", record, ctx.run_id, "before")
    seed = ctx.step.wait_for_event(
        "seed", event="bird/seed", match="data.k", timeout=30, lookback=timedelta(minutes=5)
    )
    return {"k": seed and seed.data["k"], "event_id": seed and seed.id}


@app.function("racer", trigger=event("race/start"))
def racer(ctx: Context) -> dict[str, Any] | None:
    """Two events and a timeout race; whichever came first is the step's one answer."""
    ctx.step.run("before", record, ctx.run_id, "before")
    won = ctx.step.wait_for_any(
        "pick",
        events=[OnEvent("race/a", match="data.k"), OnEvent("race/b", match="data.k")],
        timeout=float(ctx.event.data["timeout"]),
    )
    if won is None:
        return None
    return {"index": won.index, "key": won.key, "event_id": won.value.id}
