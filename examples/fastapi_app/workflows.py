"""The shop's durable functions, served by `orchestrator run --app
examples.fastapi_app.workflows:app` and imported by the API (examples/fastapi_app/main.py) to
send events and start runs.

Both functions are `async def`: a worker runs hundreds of them at once on one event loop,
and each awaits its I/O (an HTTP call, a database write) without holding a thread.

- `confirm-order` (event `order/placed`): asks the shop's own API how much stock there is
  (`GET /inventory/{sku}`, through httpx.AsyncClient, base URL `SHOP_API_URL`), then marks
  the order confirmed or backordered.
- `quote` (started by `POST /quotes` with `app.start_async`): prices a quantity; a large one
  waits for a `quote/approved` event with the same `quote_id` before it answers.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import httpx

from examples.fastapi_app import shop
from orchestrator import Orchestrator, event
from orchestrator.context import AsyncContext

app = Orchestrator()

REVIEW_FROM = 100  # quotes for this many items or more wait for a person's approval
UNIT_PRICES = {"mug": 1200, "tee": 1800}  # cents


def api_url() -> str:
    return os.environ.get("SHOP_API_URL", "http://127.0.0.1:8000")


async def fetch_stock(sku: str) -> dict[str, Any]:
    """The inventory service's answer (the shop's own endpoint here), as the step's result."""
    async with httpx.AsyncClient(base_url=api_url(), timeout=10) as client:
        response = await client.get(f"/inventory/{sku}")
        response.raise_for_status()
        return dict(response.json())


@app.function("confirm-order", trigger=event("order/placed"), retries=5)
async def confirm_order(ctx: AsyncContext) -> dict[str, Any]:
    order = ctx.event.data
    stock = await ctx.step.run("check-stock", fetch_stock, order["sku"])
    status = "confirmed" if stock["available"] >= order["quantity"] else "backordered"
    await ctx.step.run("record", shop.set_status, order["order_id"], status, stock["available"])
    ctx.log.info("order checked", order_id=order["order_id"], status=status)
    return {"order_id": order["order_id"], "status": status, "available": stock["available"]}


def price(sku: str, quantity: int) -> dict[str, Any]:
    """A plain function: in an async run it runs on a thread, off the event loop."""
    unit = UNIT_PRICES.get(sku, 1000)
    discount = 10 if quantity >= 50 else 0
    total = unit * quantity * (100 - discount) // 100
    return {"unit_cents": unit, "discount_percent": discount, "total_cents": total}


@app.function("quote")
async def quote(ctx: AsyncContext) -> dict[str, Any]:
    data = ctx.event.data
    stock = await ctx.step.run("check-stock", fetch_stock, data["sku"])
    offer = await ctx.step.run("price", price, data["sku"], data["quantity"])
    result = {"quote_id": data["quote_id"], "sku": data["sku"], "quantity": data["quantity"]}
    result |= offer | {"in_stock": stock["available"] >= data["quantity"]}
    if data["quantity"] < REVIEW_FROM:
        return result | {"approved_by": "auto"}
    approval = await ctx.step.wait_for_event(
        "approval", event="quote/approved", match="data.quote_id", timeout=timedelta(days=2)
    )
    if approval is None:
        return result | {"approved_by": None, "expired": True}
    return result | {"approved_by": approval.data.get("by", "unknown")}
