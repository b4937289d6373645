"""Async functions for the end-to-end tests: async and plain step bodies, a sleep and a wait
(crash tests), and many concurrent runs that await beside blocked plain bodies."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from orchestrator import Orchestrator, event
from orchestrator.context import AsyncContext, Context
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()


async def fetch(run_id: str) -> dict[str, Any]:
    await asyncio.sleep(0)
    record(run_id, "fetch")
    return {"fetched": run_id[:8]}


def compute(run_id: str, gate: str | None) -> int:
    """A plain body: it runs in a thread beside the loop."""
    record(run_id, "compute")
    if gate:
        wait_gate(f"{run_id}:{gate}")
    return 42


async def finish(run_id: str, approval: dict[str, Any] | None) -> str:
    record(run_id, "finish")
    return "approved" if approval else "timed out"


@app.function("async-flow", trigger=event("test/async"))
async def async_flow(ctx: AsyncContext) -> dict[str, Any]:
    data = ctx.event.data
    fetched = await ctx.step.run("fetch", fetch, ctx.run_id)
    answer = await ctx.step.run("compute", compute, ctx.run_id, data.get("gate"))
    await ctx.step.sleep("nap", data.get("sleep", 0))
    approval = await ctx.step.wait_for_event(
        "approval", event="test/approve", match="data.key", timeout=60
    )
    verdict = await ctx.step.run("finish", finish, ctx.run_id, approval.data if approval else None)
    return {"fetched": fetched, "answer": answer, "verdict": verdict}


async def nap(seconds: float) -> list[float]:
    began = time.time()
    await asyncio.sleep(seconds)
    return [began, time.time()]


@app.function("async-nap", trigger=event("test/nap"), retries=0)
async def async_nap(ctx: AsyncContext) -> list[float]:
    return await ctx.step.run("nap", nap, ctx.event.data.get("seconds", 2))


def stuck(run_id: str) -> str:
    record(run_id, "stuck")
    wait_gate(f"{run_id}:stuck")
    return "unstuck"


@app.function("plain-stuck", trigger=event("test/stuck"), retries=0)
def plain_stuck(ctx: Context) -> str:
    """A plain function whose body blocks a worker thread until its gate opens."""
    return ctx.step.run("stuck", stuck, ctx.run_id)


@app.function("async-stuck", trigger=event("test/async-stuck"), retries=0)
async def async_stuck(ctx: AsyncContext) -> str:
    """An async function whose plain body blocks (a thread beside the loop) until its gate."""
    return await ctx.step.run("stuck", stuck, ctx.run_id)


async def forever(run_id: str) -> None:
    record(run_id, "forever")
    await asyncio.sleep(3600)


@app.function("async-forever", trigger=event("test/forever"), retries=0)
async def async_forever(ctx: AsyncContext) -> None:
    await ctx.step.run("forever", forever, ctx.run_id)


@app.function("plain-napper", trigger=event("test/plain-nap"), retries=0)
def plain_napper(ctx: Context) -> str:
    ctx.step.sleep("nap", 0.3)
    return "rested"
