"""Functions that hand the engine bad values, plus a well-behaved one to prove the daemon
keeps serving after each."""

from __future__ import annotations

from typing import Any

from orchestrator import Backoff, Context, Orchestrator, event
from tests.e2e.apps.common import record

app = Orchestrator()
FAST = Backoff.of(base=0.2, max=1)
HOSTILE_EVENT = "bad/hostile'; DROP TABLE orchestrator.runs; --\u202e😀"


class Widget:
    def __repr__(self) -> str:
        return "Widget()"


BAD_VALUES: dict[str, Any] = {
    "set": lambda: {1, 2, 3},
    "object": Widget,
    "nan": lambda: {"ratio": float("nan")},
    "lone-surrogate": lambda: {"text": "broken \ud800 half"},
    "big": lambda: "x" * 2000,
}


@app.function("bad-output", trigger=event("bad/output"), retries=3, backoff=FAST)
def bad_output(ctx: Context) -> Any:
    kind = ctx.event.data["kind"]

    def produce() -> Any:
        record(ctx.run_id, "produce")
        return BAD_VALUES[kind]()

    return ctx.step.run("produce", produce)


@app.function("bad-error", trigger=event("bad/error"), retries=1, backoff=FAST)
def bad_error(ctx: Context) -> None:
    message = ctx.event.data["message"].replace("<NUL>", "\x00")

    def explode() -> None:
        record(ctx.run_id, "explode")
        raise ValueError(message)

    ctx.step.run("explode", explode)


@app.function("normal", trigger=event("bad/normal"))
def normal(ctx: Context) -> str:
    def ok() -> str:
        record(ctx.run_id, "ok")
        return "ok"

    return ctx.step.run("ok", ok)


@app.function("echo", trigger=event(HOSTILE_EVENT))
def echo(ctx: Context) -> dict[str, Any]:
    return ctx.step.run(
        "echo", lambda: {"id": ctx.event.id, "name": ctx.event.name, "data": ctx.event.data}
    )
