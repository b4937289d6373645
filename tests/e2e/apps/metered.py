"""Functions with a known number of steps, retries and outcomes, for the metrics tests."""

from __future__ import annotations

import os
import time

from orchestrator import Backoff, Concurrency, Context, Orchestrator, event
from tests.e2e.apps.common import wait_gate

app = Orchestrator()
FAST = Backoff.of(base=0.05, max=0.1)
SLOW_STEP = 0.06  # seconds the second step of metered-ok takes, at least


def _slow() -> str:
    time.sleep(SLOW_STEP)
    return "slow"


@app.function("metered-ok", trigger=event("metered/ok"))
def ok(ctx: Context) -> str:
    ctx.step.run("quick", lambda: "quick")
    return ctx.step.run("slow", _slow)


@app.function("metered-flaky", trigger=event("metered/flaky"), retries=3, backoff=FAST)
def flaky(ctx: Context) -> int:
    def once() -> int:
        if ctx.attempt == 1:  # the run's first execution: fail, so the step retries once
            raise RuntimeError("fails on the run's first execution")
        return ctx.attempt

    return ctx.step.run("once", once)


@app.function("metered-fails", trigger=event("metered/fails"), retries=2, backoff=FAST)
def fails(ctx: Context) -> None:
    def broken() -> None:
        raise RuntimeError("always broken")

    ctx.step.run("broken", broken)


@app.function("metered-sleeper", trigger=event("metered/sleeper"))
def sleeper(ctx: Context) -> None:
    ctx.step.sleep("nap", 3600)


@app.function("metered-crash", trigger=event("metered/crash"))
def crash(ctx: Context) -> str:
    def die_once() -> str:
        if ctx.attempt == 1:
            os._exit(1)  # the worker process dies inside the step body
        return "survived"

    return ctx.step.run("die-once", die_once)


@app.function("metered-gated", trigger=event("metered/gated"), concurrency=[Concurrency(1)])
def gated(ctx: Context) -> str:
    # one run at a time, each held at the gate: the others queue up, due
    ctx.step.run("gate", wait_gate, "metered")
    return "passed"
