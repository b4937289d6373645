"""An Inngest app written with the official Python SDK, served by FastAPI under uvicorn.

`python -m tests.inngest.sdk_apps.python_app` with PORT, COUNT_FILE (one line appended per
step body execution: "<function>\\t<step>\\t<run id>\\t<attempt>"), APP_ID, and the INNGEST_*
variables the SDK reads itself (INNGEST_DEV, INNGEST_BASE_URL, INNGEST_SIGNING_KEY, ...).
Async and sync functions side by side, like the Node apps' send-welcome, await-payment,
double / invoke-double, fan-out and tick.
"""

from __future__ import annotations

import datetime
import os
from typing import Any

import fastapi
import inngest
import inngest.fast_api
import uvicorn

client = inngest.Inngest(app_id=os.environ.get("APP_ID", "e2e-python"))


def mark(fn: str, step: str, run_id: str, attempt: int) -> None:
    path = os.environ.get("COUNT_FILE")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{fn}\t{step}\t{run_id}\t{attempt}\n")


def _pause(event: inngest.Event) -> datetime.timedelta:
    seconds = event.data.get("pause_s", 1)
    assert isinstance(seconds, int | float)
    return datetime.timedelta(seconds=seconds)


@client.create_function(
    fn_id="send-welcome", retries=2, trigger=inngest.TriggerEvent(event="app/user.signup")
)
async def send_welcome(ctx: inngest.Context) -> dict[str, Any]:
    async def load_user() -> dict[str, Any]:
        mark("send-welcome", "load-user", ctx.run_id, ctx.attempt)
        return {"email": ctx.event.data.get("email")}

    user = await ctx.step.run("load-user", load_user)
    await ctx.step.sleep("pause", _pause(ctx.event))

    async def send_email() -> dict[str, Any]:
        mark("send-welcome", "send-email", ctx.run_id, ctx.attempt)
        return {"to": user["email"]}

    sent = await ctx.step.run("send-email", send_email)
    return {"sent": sent["to"]}


@client.create_function(fn_id="tick", trigger=inngest.TriggerCron(cron="* * * * *"))
def tick(ctx: inngest.ContextSync) -> dict[str, Any]:
    def once() -> str:
        mark("tick", "tick-once", ctx.run_id, ctx.attempt)
        return "ticked"

    ctx.step.run("tick-once", once)
    return {"ticked": True}


@client.create_function(
    fn_id="await-payment", trigger=inngest.TriggerEvent(event="app/order.created")
)
def await_payment(ctx: inngest.ContextSync) -> dict[str, Any]:
    timeout_s = ctx.event.data.get("timeout_s", 30)
    assert isinstance(timeout_s, int | float)
    paid = ctx.step.wait_for_event(
        "wait-paid",
        event="app/order.paid",
        if_exp="async.data.order_id == event.data.order_id",
        timeout=datetime.timedelta(seconds=timeout_s),
    )

    def after_wait() -> Any:
        mark("await-payment", "after-wait", ctx.run_id, ctx.attempt)
        return None if paid is None else paid.data.get("amount")

    return {"paid": ctx.step.run("after-wait", after_wait)}


@client.create_function(fn_id="double", trigger=inngest.TriggerEvent(event="app/double"))
def double(ctx: inngest.ContextSync) -> dict[str, Any]:
    n = ctx.event.data.get("n")
    assert isinstance(n, int)

    def double_it() -> int:
        mark("double", "double-it", ctx.run_id, ctx.attempt)
        return n * 2

    return {"doubled": ctx.step.run("double-it", double_it)}


@client.create_function(fn_id="invoke-double", trigger=inngest.TriggerEvent(event="app/invoke"))
async def invoke_double(ctx: inngest.Context) -> dict[str, Any]:
    result = await ctx.step.invoke(
        "call-double", function=double, data={"n": ctx.event.data.get("n")}
    )
    return {"result": result}


@client.create_function(fn_id="fan-out", trigger=inngest.TriggerEvent(event="app/fan.out"))
async def fan_out(ctx: inngest.Context) -> dict[str, Any]:
    def part(k: str) -> Any:
        async def body() -> int:
            mark("fan-out", f"part-{k}", ctx.run_id, ctx.attempt)
            return ord(k)

        return lambda: ctx.step.run(f"part-{k}", body)

    parts = await ctx.group.parallel(tuple(part(k) for k in "abc"))

    async def total() -> int:
        mark("fan-out", "total", ctx.run_id, ctx.attempt)
        return sum(parts)

    return {"parts": list(parts), "total": await ctx.step.run("total", total)}


def _note_failure(ctx: inngest.ContextSync) -> dict[str, Any]:
    error = ctx.event.data.get("error")
    message = error.get("message") if isinstance(error, dict) else None

    def note() -> Any:
        mark("always-fails-failure", "note-failure", ctx.run_id, 0)
        return message

    ctx.step.run("note-failure", note)
    return {"handled": message}


@client.create_function(
    fn_id="always-fails",
    retries=0,
    on_failure=_note_failure,
    trigger=inngest.TriggerEvent(event="app/fail"),
)
def always_fails(ctx: inngest.ContextSync) -> None:
    def doomed() -> None:
        mark("always-fails", "doomed", ctx.run_id, ctx.attempt)
        raise inngest.NonRetriableError("nope, on purpose")

    ctx.step.run("doomed", doomed)


@client.create_function(fn_id="relay", trigger=inngest.TriggerEvent(event="app/relay"))
async def relay(ctx: inngest.Context) -> dict[str, Any]:
    x = ctx.event.data.get("x")
    ids = await ctx.step.send_event(
        "relay-it", inngest.Event(name="app/native.ping", data={"x": x})
    )
    return {"relayed": len(ids)}


FUNCTIONS = [
    send_welcome,
    tick,
    await_payment,
    double,
    invoke_double,
    fan_out,
    always_fails,
    relay,
]

app = fastapi.FastAPI()
inngest.fast_api.serve(app, client, FUNCTIONS, serve_path="/api/inngest")


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["PORT"]), log_level="warning")
