"""An `async def` function tested by virtual time from an async test."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import AsyncContext, Orchestrator, event
from orchestrator.testing import TestEnv

app = Orchestrator()


async def fetch_rate(currency: str) -> float:
    await asyncio.sleep(0)  # gives the loop a turn, as real I/O would
    return {"EUR": 1.5, "USD": 1.0}[currency]


async def price(amount: int, rate: float) -> float:
    await asyncio.sleep(0)
    return round(amount * rate, 2)


@app.function("quote", trigger=event("quote/requested"))
async def quote(ctx: AsyncContext) -> dict[str, Any]:
    rate = await ctx.step.run("rate", fetch_rate, ctx.event.data["currency"])
    await ctx.step.sleep("cool-off", timedelta(minutes=5))
    total = await ctx.step.run("price", price, ctx.event.data["amount"], rate)
    return {"total": total}


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async__steps_and_sleep_by_virtual_time(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    start = env.now
    await env.send_async("quote/requested", {"currency": "EUR", "amount": 10})
    assert await env.run_until_idle_async() == 1

    (run,) = await env.runs_async("quote")
    assert run.status == "sleeping"
    assert run.step("rate").output == 1.5
    assert run.step("cool-off").wake_at == start + timedelta(minutes=5)

    await env.advance_async(timedelta(minutes=4))
    assert (await env.run_async(run.id)).status == "sleeping"
    await env.advance_async(timedelta(minutes=1))

    run = await env.run_async(run.id)
    assert run.status == "completed"
    assert run.output == {"total": 15.0}
    assert run.step("price").output == 15.0
    assert [(c.step_id, c.at - start) for c in env.calls("quote")] == [
        ("rate", timedelta(0)),
        ("price", timedelta(minutes=5)),
    ]
