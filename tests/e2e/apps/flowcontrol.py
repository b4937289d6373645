"""Functions with every flow-control option, for the flow-control end-to-end tests.

Each step body records itself in `public.effects` (tests/e2e/apps/common.py), so tests see
executions independently of the engine's tables; `hold` sleeps in the step body so that
runs overlap long enough to be sampled, and `gate` (optional) holds it until the test opens
that gate (`INSERT INTO gates`).
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from orchestrator import (
    Batch,
    Concurrency,
    Context,
    Debounce,
    Orchestrator,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    event,
)
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()


def _work(ctx: Context, seconds: float) -> dict[str, Any]:
    def body() -> int:
        record(ctx.run_id, "work")
        gate = ctx.event.data.get("gate")
        if gate:
            wait_gate(str(gate))
        time.sleep(seconds)
        return len(ctx.events)

    return {"events": ctx.step.run("work", body), "data": ctx.event.data}


@app.function("limited", trigger=event("fc/limited"), concurrency=Concurrency(limit=3))
def limited(ctx: Context) -> dict[str, Any]:
    return _work(ctx, float(ctx.event.data.get("hold", 0.02)))


@app.function(
    "per-key",
    trigger=event("fc/per-key"),
    concurrency=[Concurrency(limit=10), Concurrency(limit=1, key="event.data.key")],
)
def per_key(ctx: Context) -> dict[str, Any]:
    return _work(ctx, float(ctx.event.data.get("hold", 0.02)))


@app.function(
    "throttled", trigger=event("fc/throttled"), throttle=Throttle(10, timedelta(seconds=1))
)
def throttled(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function(
    "rate-limited", trigger=event("fc/rate-limited"), rate_limit=RateLimit(5, timedelta(minutes=1))
)
def rate_limited(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function("debounced", trigger=event("fc/debounced"), debounce=Debounce(timedelta(seconds=1)))
def debounced(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function("batched", trigger=event("fc/batched"), batch_events=Batch(100, timedelta(seconds=2)))
def batched(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function("idempotent", trigger=event("fc/idempotent"), idempotency="event.data.order_id")
def idempotent(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function(
    "singleton", trigger=event("fc/singleton"), singleton=Singleton(key="event.data.user")
)
def singleton(ctx: Context) -> dict[str, Any]:
    return _work(ctx, float(ctx.event.data.get("hold", 1.0)))


@app.function(
    "singleton-cancel",
    trigger=event("fc/singleton-cancel"),
    singleton=Singleton(key="event.data.user", mode="cancel"),
)
def singleton_cancel(ctx: Context) -> dict[str, Any]:
    # many short steps: a cancellation takes effect at the next step boundary
    for i in range(int(ctx.event.data.get("ticks", 0))):
        ctx.step.run(f"tick-{i}", lambda: time.sleep(0.1))
    return _work(ctx, 0)


@app.function(
    "prioritized",
    trigger=event("fc/prioritized"),
    concurrency=Concurrency(limit=1),
    priority=Priority(run="event.data.plan == 'pro' ? 100 : 0"),
)
def prioritized(ctx: Context) -> dict[str, Any]:
    return _work(ctx, float(ctx.event.data.get("hold", 0.0)))


@app.function(
    "timed",
    trigger=event("fc/timed"),
    concurrency=Concurrency(limit=1),
    timeouts=Timeouts(start=timedelta(seconds=1), finish=timedelta(seconds=2)),
)
def timed(ctx: Context) -> dict[str, Any]:
    hold = float(ctx.event.data.get("hold", 0.0))
    ctx.step.run("first", lambda: time.sleep(hold))
    return _work(ctx, 0)


# The run_queue test's own functions, with the options of those above: it shares its daemons
# with the tests of those.
@app.function("queue-limited", trigger=event("fc/queue-limited"), concurrency=Concurrency(limit=3))
def queue_limited(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0.0)


@app.function(
    "queue-throttled",
    trigger=event("fc/queue-throttled"),
    throttle=Throttle(10, timedelta(seconds=1)),
)
def queue_throttled(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function(
    "queue-debounced", trigger=event("fc/queue-debounced"), debounce=Debounce(timedelta(seconds=1))
)
def queue_debounced(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)


@app.function(
    "queue-batched",
    trigger=event("fc/queue-batched"),
    batch_events=Batch(100, timedelta(seconds=2)),
)
def queue_batched(ctx: Context) -> dict[str, Any]:
    return _work(ctx, 0)
