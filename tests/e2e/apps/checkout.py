"""A checkout flow that uses every table the daemon writes, with a card token (a secret) in
its event data, step outputs, return value and error messages.

- `checkout` (event `shop/checkout`): a step, a sleep, a wait for `shop/paid` matched on the
  order, an invoked child run, and sent events; it returns the token.
- `receipt`: the invoked child.
- `audit` (event `shop/audited`, sent by `checkout`): throttled, debounced and idempotent, so
  its runs go through `limiters`, `buffered_events` and `idempotency_keys`.
- `declined` (event `shop/declined`): a step whose error message quotes the token on its
  second line (logs show an error's first line only).
- `heartbeat`: a cron function firing every second (`schedules`).

Step bodies touch no tables of their own, so the app runs under a role that has only the
engine's grants.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from orchestrator import (
    Context,
    Debounce,
    NonRetriableError,
    Orchestrator,
    Throttle,
    cron,
    event,
)

app = Orchestrator()


@app.function("checkout", trigger=event("shop/checkout"))
def checkout(ctx: Context) -> dict[str, Any]:
    card, order = ctx.event.data["card"], ctx.event.data["order"]
    charged = ctx.step.run("charge", lambda: {"charged": f"{card}-charged", "order": order})
    ctx.step.sleep("settle", 0.2)
    paid = ctx.step.wait_for_event(
        "paid", event="shop/paid", match="data.order", timeout=timedelta(seconds=60)
    )
    receipt = ctx.step.invoke("receipt", function="receipt", data={"card": card}, timeout=60)
    ctx.step.send_event("audit", [{"name": "shop/audited", "data": {"order": order}}])
    return {"card": card, "charged": charged, "paid": paid is not None, "receipt": receipt}


@app.function("receipt")
def receipt(ctx: Context) -> str:
    return str(ctx.step.run("print", lambda: f"receipt for {ctx.event.data['card']}"))


@app.function(
    "audit",
    trigger=event("shop/audited"),
    throttle=Throttle(10, timedelta(seconds=1)),
    debounce=Debounce(timedelta(milliseconds=200)),
    idempotency="event.data.order",
)
def audit(ctx: Context) -> dict[str, Any]:
    return {"order": ctx.step.run("record", lambda: ctx.event.data["order"])}


@app.function("declined", trigger=event("shop/declined"), retries=0)
def declined(ctx: Context) -> None:
    card = ctx.event.data["card"]

    def charge() -> None:
        raise NonRetriableError(f"the card was declined\ncard: {card}")

    ctx.step.run("charge", charge)


@app.function("heartbeat", trigger=cron("* * * * * *"))
def heartbeat(ctx: Context) -> str:
    return str(ctx.step.run("beat", lambda: ctx.event.data["scheduled_at"]))
