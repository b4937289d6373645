"""Functions for the signal and run-state tests: runs that take signals in a loop, one that
takes a signal sent before it waits, and one that publishes its progress."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Orchestrator, event
from orchestrator.context import AsyncContext
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()

TAKES = 10


@app.function("collect", trigger=event("signals/collect"))
def collect(ctx: Context) -> list[Any]:
    got = []
    for _ in range(TAKES):
        got.append(ctx.step.wait_for_signal("next", "item", timeout=None))
        ctx.set_state("taken", len(got))
    return got


@app.function("collect-async", trigger=event("signals/collect-async"))
async def collect_async(ctx: AsyncContext) -> list[Any]:
    got = []
    for _ in range(TAKES):
        got.append(await ctx.step.wait_for_signal("next", "item", timeout=None))
        ctx.set_state("taken", len(got))
    return got


@app.function("late-waiter", trigger=event("signals/late"))
def late_waiter(ctx: Context) -> Any:
    ctx.step.run("busy", wait_gate, f"{ctx.run_id}:busy")
    return ctx.step.wait_for_signal("approval", "approved", timeout=60)


@app.function("progress", trigger=event("signals/progress"))
def progress(ctx: Context) -> str:
    ctx.set_state("phase", "started")
    ctx.step.run("one", record, ctx.run_id, "one")
    ctx.set_state("phase", "one")
    ctx.step.wait_for_signal("go", "go", timeout=None)
    ctx.set_state("phase", "two")
    ctx.step.run("two", _two, ctx.run_id)
    ctx.set_state("phase", "three")
    ctx.step.run("three", record, ctx.run_id, "three")
    return "done"


def _two(run_id: str) -> None:
    record(run_id, "two")
    wait_gate(f"{run_id}:two")
