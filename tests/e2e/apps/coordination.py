"""Functions for the coordination tests: waits, invokes, sent events, parallel steps,
triggers with conditions, cancellation and failure handlers."""

from __future__ import annotations

import os
import threading
from typing import Any

import psycopg

from orchestrator import (
    Backoff,
    Context,
    NonRetriableError,
    Orchestrator,
    StepError,
    cancel_on,
    event,
)
from tests.e2e.apps.common import record, wait_gate

app = Orchestrator()


def _count(run_id: str, step: str) -> int:
    with psycopg.connect(os.environ["ORCHESTRATOR_DATABASE_URL"]) as conn:
        row = conn.execute(
            "SELECT count(*) FROM public.effects WHERE run_id = %s AND step = %s", (run_id, step)
        ).fetchone()
    return int(row[0]) if row else 0


@app.function("await-payment", trigger=event("order/created"))
def await_payment(ctx: Context) -> dict[str, Any]:
    paid = ctx.step.wait_for_event(
        "paid",
        event="payment/received",
        match="data.order_id",
        timeout=float(ctx.event.data.get("timeout", 3600)),
    )
    return {"paid": None if paid is None else paid.data, "event_id": paid and paid.id}


@app.function("big-payment", trigger=event("invoice/created"))
def big_payment(ctx: Context) -> dict[str, Any]:
    paid = ctx.step.wait_for_event(
        "paid",
        event="invoice/paid",
        if_="async.data.customer == event.data.customer && async.data.amount >= event.data.due",
        timeout=60,
    )
    return {"paid": None if paid is None else paid.data}


def _send_reply(key: str) -> None:
    with psycopg.connect(os.environ["ORCHESTRATOR_DATABASE_URL"], autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.events (name, data) "
            "VALUES ('race/reply', jsonb_build_object('key', %s::text))",
            (key,),
        )


@app.function("race", trigger=event("race/start"))
def race(ctx: Context) -> dict[str, Any]:
    key = ctx.event.data["key"]

    def request() -> str:
        record(ctx.run_id, "request")
        replier = threading.Thread(target=_send_reply, args=(key,))
        replier.start()  # the reply is sent at once, before this step is even checkpointed
        if ctx.event.data.get("join"):
            replier.join()  # ... and here it is surely committed before the wait is stored
        return key

    ctx.step.run("request", request)
    reply = ctx.step.wait_for_event("reply", event="race/reply", match="data.key", timeout=30)
    return {"replied": reply is not None}


@app.function("double", trigger=event("math/double"))
def double(ctx: Context) -> int:
    return int(ctx.step.run("double", lambda: ctx.event.data["x"] * 2))


@app.function("explode", retries=0)
def explode(ctx: Context) -> None:
    def boom() -> None:
        raise NonRetriableError("child exploded")

    ctx.step.run("boom", boom)


@app.function("slow-child")
def slow_child(ctx: Context) -> str:
    ctx.step.sleep("nap", 300)
    return "woke"


@app.function("parent", trigger=event("math/parent"))
def parent(ctx: Context) -> dict[str, Any]:
    doubled = ctx.step.invoke("double", function="double", data={"x": ctx.event.data["x"]})
    try:
        ctx.step.invoke("explode", function="explode", data={})
        caught = None
    except StepError as exc:
        caught = exc.error_message
    return {"doubled": doubled, "caught": caught}


@app.function("slow-parent", trigger=event("math/slow-parent"))
def slow_parent(ctx: Context) -> Any:
    return ctx.step.invoke("child", function="slow-child", data={})


@app.function("sender", trigger=event("send/start"))
def sender(ctx: Context) -> list[str]:
    n = int(ctx.event.data.get("n", 3))
    ids = ctx.step.send_event(
        "notify", [{"name": "send/out", "data": {"i": i, "run": ctx.run_id}} for i in range(n)]
    )
    ctx.step.run("after", lambda: (record(ctx.run_id, "after"), wait_gate(ctx.run_id))[1])
    return ids


@app.function("fanout", trigger=event("fan/start"), retries=3, backoff=Backoff.of(0.1, 0.2))
def fanout(ctx: Context) -> list[Any]:
    gate = ctx.event.data.get("gate")

    def branch(name: str) -> str:
        record(ctx.run_id, name)
        if name == gate:
            wait_gate(f"{ctx.run_id}:{name}")
        if name == "b" and _count(ctx.run_id, "b") < 3 and ctx.event.data.get("flaky"):
            raise RuntimeError("b fails twice")
        return name.upper()

    return ctx.step.parallel(
        "fan", [("a", branch, ("a",)), ("b", branch, ("b",)), ("c", branch, ("c",))]
    )


@app.function(
    "cancellable",
    trigger=event("order/placed"),
    cancel_on=[cancel_on("order/cancelled", match="data.order_id")],
)
def cancellable(ctx: Context) -> str:
    ctx.step.sleep("hold", 300)
    record(ctx.run_id, "after-hold")
    return "shipped"


@app.function("long-steps", trigger=event("long/start"))
def long_steps(ctx: Context) -> str:
    ctx.step.run("one", lambda: (record(ctx.run_id, "one"), wait_gate(ctx.run_id))[1])
    ctx.step.run("two", lambda: record(ctx.run_id, "two"))
    return "done"


def on_failure(ctx: Context) -> dict[str, Any]:
    ctx.step.run("note", lambda: record(ctx.event.data["run_id"], "on-failure"))
    return {"failed": ctx.event.data["run_id"], "message": ctx.event.data["error"]["message"]}


@app.function("fragile", trigger=event("fragile/start"), retries=0, on_failure=on_failure)
def fragile(ctx: Context) -> None:
    if ctx.event.data.get("sleep"):
        ctx.step.sleep("nap", 300)

    def fail() -> None:
        raise RuntimeError("fragile broke")

    ctx.step.run("fail", fail)


@app.function("big-orders", trigger=event("shop/order", if_="event.data.amount > 100"))
def big_orders(ctx: Context) -> str:
    return "big"


@app.function("any-order", trigger=[event("shop/order"), event("shop/order", if_="true")])
def any_order(ctx: Context) -> str:
    return "any"


@app.function("either", trigger=[event("shop/a"), event("shop/b")])
def either(ctx: Context) -> str:
    return ctx.event.name
