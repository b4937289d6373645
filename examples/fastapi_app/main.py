"""The shop's HTTP API (FastAPI): `uvicorn examples.fastapi_app.main:api`.

- `POST /orders` writes the order row and sends `order/placed` in one transaction of the
  endpoint's `AsyncSession` (the outbox pattern: `app.send_async(..., conn=session)`), so
  either both commit or neither does; `?fail_after_send=true` raises after sending to show
  the rollback. It answers at once; the function `confirm-order` does the rest.
- `GET /orders/{id}`: the order as it stands.
- `GET /inventory/{sku}`: the stock the shop has (what `confirm-order` asks over HTTP).
- `POST /quotes` starts the function `quote` and waits up to `wait` seconds for its result:
  200 with the quote, or 202 with the run id to come back for (`GET /quotes/{id}`); a large
  quote waits for `POST /quotes/{id}/approve`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from examples.fastapi_app import shop
from examples.fastapi_app.workflows import app
from orchestrator import RunHandle, RunNotCompletedError, RunNotFoundError, RunTimeoutError

STOCK = {"mug": 25, "tee": 3}


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    await shop.create_tables()
    yield
    await shop.dispose()
    await app.aclose()


api = FastAPI(title="shop", lifespan=lifespan)


class OrderIn(BaseModel):
    sku: str = Field(min_length=1, max_length=64)
    quantity: int = Field(gt=0, le=10_000)


class QuoteIn(OrderIn):
    wait: float = Field(default=5.0, ge=0, le=30, description="seconds to wait for the result")


class Approval(BaseModel):
    by: str = Field(min_length=1, max_length=64)


@api.post("/orders", status_code=201)
async def place_order(order: OrderIn, fail_after_send: bool = False) -> dict[str, str]:
    async with shop.session() as session, session.begin():
        order_id = await shop.insert_order(session, order.sku, order.quantity)
        event_id = await app.send_async(
            "order/placed", {"order_id": order_id} | order.model_dump(), conn=session
        )
        if fail_after_send:  # leaves the block by an exception: both writes roll back
            raise HTTPException(500, "failed after sending; the order and its event rolled back")
    return {"order_id": order_id, "event_id": event_id}


@api.get("/orders/{order_id}")
async def get_order(order_id: uuid.UUID) -> dict[str, Any]:
    found = await shop.get_order(str(order_id))
    if found is None:
        raise HTTPException(404, f"no order {order_id}")
    return found


@api.get("/inventory/{sku}")
async def inventory(sku: str) -> dict[str, Any]:
    return {"sku": sku, "available": STOCK.get(sku, 0)}


@api.post("/quotes")
async def request_quote(body: QuoteIn) -> JSONResponse:
    quote_id = str(uuid.uuid4())
    data = {"quote_id": quote_id, "sku": body.sku, "quantity": body.quantity}
    handle = await app.start_async("quote", data, id=quote_id)  # the run id is the quote id
    return await answer(handle, body.wait)


@api.get("/quotes/{quote_id}")
async def get_quote(quote_id: uuid.UUID) -> JSONResponse:
    return await answer(app.run_handle(quote_id), 0)


@api.post("/quotes/{quote_id}/approve", status_code=202)
async def approve_quote(quote_id: uuid.UUID, approval: Approval) -> dict[str, str]:
    event_id = await app.send_async(
        "quote/approved", {"quote_id": str(quote_id)} | approval.model_dump()
    )
    return {"event_id": event_id}


async def answer(handle: RunHandle, wait: float) -> JSONResponse:
    """The run's result (200), its id while it goes on (202), or why it has none."""
    try:
        result = await handle.result_async(timeout=wait)
    except RunTimeoutError as exc:
        return JSONResponse({"quote_id": handle.run_id, "status": exc.status}, status_code=202)
    except RunNotFoundError:
        return JSONResponse({"detail": f"no quote {handle.run_id}"}, status_code=404)
    except RunNotCompletedError as exc:
        body = {"quote_id": handle.run_id, "status": exc.status, "error": exc.error_message}
        return JSONResponse(body, status_code=502)
    return JSONResponse({"quote_id": handle.run_id, "status": "completed", "quote": result})
