"""Apps the end-to-end tests serve."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Orchestrator, event
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()


@app.function("three-steps", trigger=event("test/three"))
def three_steps(ctx: Context) -> dict[str, Any]:
    data = ctx.event.data

    def step(name: str) -> str:
        record(ctx.run_id, name)
        if data.get("gate") == name:
            wait_gate(f"{ctx.run_id}:{name}")
        return name

    a = ctx.step.run("one", step, "one")
    if data.get("sleep"):
        ctx.step.sleep("nap", float(data["sleep"]))
    b = ctx.step.run("two", step, "two")
    c = ctx.step.run("three", step, "three")
    return {"steps": [a, b, c]}
