"""Functions whose runs the tracing tests follow (tests/e2e/test_tracing.py).

`traced-order`: three steps, the second of which fails its first execution (counted in
`effects`, so the outcome does not depend on the engine's counters), the third of which can
block on a gate (`data.gate`) for a kill -9; then it invokes `traced-child`.
"""

from __future__ import annotations

from typing import Any

from orchestrator import Backoff, Context, Orchestrator, event
from tests.e2e.apps.common import record, wait_gate
from tests.e2e.apps.counting import executions

app = Orchestrator()


def reserve(run_id: str) -> dict[str, Any]:
    record(run_id, "reserve")
    return {"reserved": True}


def charge(run_id: str) -> dict[str, Any]:
    record(run_id, "charge")
    if executions(run_id, "charge") < 2:
        raise ConnectionError("card processor unreachable (on purpose, once)")
    return {"charged": True}


def pack(run_id: str, gate: str | None) -> dict[str, Any]:
    record(run_id, "pack")
    if gate:
        wait_gate(f"{run_id}:{gate}")
    return {"packed": True}


def write() -> str:
    return "sent"


@app.function(
    "traced-order", trigger=event("trace/order"), retries=3, backoff=Backoff.of(base=0.2, max=1)
)
def traced_order(ctx: Context) -> dict[str, Any]:
    ctx.step.run("reserve", reserve, ctx.run_id)
    ctx.step.run("charge", charge, ctx.run_id)
    ctx.step.run("pack", pack, ctx.run_id, ctx.event.data.get("gate"))
    receipt = ctx.step.invoke("notify", function="traced-child", data={"order": ctx.run_id})
    return {"receipt": receipt}


@app.function("traced-child", trigger=event("trace/never-sent"))
def traced_child(ctx: Context) -> str:
    return str(ctx.step.run("write", write))
