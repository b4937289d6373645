"""Functions for the tests of cancelling executing runs: a plain function limited to one run
at a time whose step body holds until a gate opens, an async one asleep in its step, and a
parent that invokes a child held at a gate.

Bodies record themselves in `public.effects` (tests/e2e/apps/common.py): `work` when a body
starts, `returned` when it returns, `after` when the function goes on past its step.
"""

from __future__ import annotations

import asyncio
from typing import Any

from orchestrator import AsyncContext, Concurrency, Context, Orchestrator, event
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()


@app.function("one-at-a-time", trigger=event("cx/one"), concurrency=Concurrency(limit=1))
def one_at_a_time(ctx: Context) -> str:
    def body() -> str:
        record(ctx.run_id, "work")
        gate = ctx.event.data.get("gate")
        if gate:
            wait_gate(str(gate))
        record(ctx.run_id, "returned")
        return "worked"

    ctx.step.run("work", body)
    record(ctx.run_id, "after")
    return "done"


@app.function("async-sleeper", trigger=event("cx/async"))
async def async_sleeper(ctx: AsyncContext) -> str:
    async def body() -> None:
        record(ctx.run_id, "work")
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            record(ctx.run_id, "interrupted")
            raise

    await ctx.step.run("nap", body)
    record(ctx.run_id, "after")
    return "done"


@app.function("invoker", trigger=event("cx/invoker"))
def invoker(ctx: Context) -> Any:
    return ctx.step.invoke("child", function="gated-child", data=ctx.event.data)


@app.function("gated-child", trigger=event("cx/never"))
def gated_child(ctx: Context) -> str:
    def body() -> str:
        record(ctx.run_id, "work")
        wait_gate(str(ctx.event.data["gate"]))
        return "child done"

    return ctx.step.run("work", body)
