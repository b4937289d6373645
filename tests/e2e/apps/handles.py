"""Functions started directly (`app.start`) and awaited (`RunHandle.result`): none has a
trigger."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, NonRetriableError, Orchestrator
from tests.e2e.apps.common import wait_gate

app = Orchestrator()


@app.function("double")
def double(ctx: Context) -> dict[str, Any]:
    doubled = ctx.step.run("double", lambda x: 2 * x, ctx.event.data["x"])
    return {"doubled": doubled, "event": ctx.event.name, "event_id": ctx.event.id}


def _explode() -> None:
    raise NonRetriableError("exploded on purpose")


@app.function("explode", retries=0)
def explode(ctx: Context) -> None:
    ctx.step.run("explode", _explode)


@app.function("gated")
def gated(ctx: Context) -> str:
    ctx.step.run("wait", wait_gate, ctx.event.data["gate"])
    return "through"
