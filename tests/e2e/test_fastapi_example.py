"""The FastAPI example (examples/fastapi_app), driven over HTTP: uvicorn serving the API and
the real daemon serving its workflows, both subprocesses on one test database.

An order's row and its event commit together or not at all (the outbox in the endpoint's
AsyncSession); the async function it triggers calls the API back with httpx.AsyncClient and
records what it learnt; a quote is started and awaited by the endpoint itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import count, finished_run, sql
from tests.e2e.webserver import ExampleSite as Shop
from tests.e2e.webserver import python, serve_example

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.fixture(scope="module")
def shop(
    server_url: str, template_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Shop]:
    with serve_example(
        server_url,
        template_name,
        tmp_path_factory.mktemp("fastapi-example"),
        app="examples.fastapi_app.workflows:app",
        server=lambda port: python(
            "-m", "uvicorn", "examples.fastapi_app.main:api", "--port", port
        ),
        probe="/inventory/probe",
        extra=lambda url, port: {
            "SHOP_DATABASE_URL": url,
            "SHOP_API_URL": f"http://127.0.0.1:{port}",
        },
    ) as site:
        yield site


def run_steps(url: str, run_id: str) -> dict[str, str]:
    rows = sql(url, "SELECT step_id, status FROM orchestrator.steps WHERE run_id = %s", (run_id,))
    return dict(rows)


def test_order__async_run_asks_the_api_for_stock_and_records_the_status(shop: Shop) -> None:
    placed = {
        sku: shop.http.post("/orders", json={"sku": sku, "quantity": quantity})
        for sku, quantity in (("mug", 2), ("tee", 5))
    }

    for response in placed.values():
        assert response.status_code == 201, shop.web.logs()
    runs = {sku: finished_run(shop.url, r.json()["event_id"]) for sku, r in placed.items()}
    mug, tee = placed["mug"].json(), placed["tee"].json()
    assert runs["mug"]["status"] == "completed", runs["mug"]
    assert runs["mug"]["output"] == {
        "order_id": mug["order_id"],
        "status": "confirmed",
        "available": 25,
    }
    assert runs["tee"]["output"]["status"] == "backordered"  # 5 wanted, 3 in stock
    assert run_steps(shop.url, runs["mug"]["id"]) == {
        "check-stock": "completed",
        "record": "completed",
    }
    order = shop.http.get(f"/orders/{mug['order_id']}").json()
    assert order["status"] == "confirmed" and order["available"] == 25
    assert shop.http.get(f"/orders/{tee['order_id']}").json()["status"] == "backordered"
    access = shop.web.logs()
    assert '"GET /inventory/mug HTTP/1.1" 200' in access  # the step's HTTP call
    assert '"GET /inventory/tee HTTP/1.1" 200' in access


def test_order__fail_after_send__neither_the_row_nor_the_event_is_kept(shop: Shop) -> None:
    sku = f"rollback-{uuid.uuid4().hex[:8]}"

    response = shop.http.post(
        "/orders", params={"fail_after_send": "true"}, json={"sku": sku, "quantity": 1}
    )

    assert response.status_code == 500, shop.web.logs()
    assert "rolled back" in response.json()["detail"]
    assert count(shop.url, "SELECT count(*) FROM public.shop_orders WHERE sku = %s", (sku,)) == 0
    events = "SELECT count(*) FROM orchestrator.events WHERE data ->> 'sku' = %s"
    assert count(shop.url, events, (sku,)) == 0
    runs = "SELECT count(*) FROM orchestrator.runs WHERE events -> 0 -> 'data' ->> 'sku' = %s"
    assert count(shop.url, runs, (sku,)) == 0
    # the same request without the flag keeps both: the check above is not vacuous
    kept = shop.http.post("/orders", json={"sku": sku, "quantity": 1})
    assert kept.status_code == 201, kept.text
    assert count(shop.url, events, (sku,)) == 1
    assert finished_run(shop.url, kept.json()["event_id"])["output"]["status"] == "backordered"


def test_quote__started_and_awaited_by_the_endpoint(shop: Shop) -> None:
    response = shop.http.post("/quotes", json={"sku": "mug", "quantity": 3, "wait": 20})

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "completed"
    assert body["quote"] == {
        "quote_id": body["quote_id"],
        "sku": "mug",
        "quantity": 3,
        "unit_cents": 1200,
        "discount_percent": 0,
        "total_cents": 3600,
        "in_stock": True,
        "approved_by": "auto",
    }
    status = "SELECT status, function_id FROM orchestrator.runs WHERE id = %s"
    assert sql(shop.url, status, (body["quote_id"],)) == [("completed", "quote")]


def test_quote__needing_approval__202_with_the_run_id_then_the_result(shop: Shop) -> None:
    response = shop.http.post("/quotes", json={"sku": "mug", "quantity": 150, "wait": 0.5})

    assert response.status_code == 202, response.text
    quote_id = response.json()["quote_id"]
    assert shop.http.get(f"/quotes/{quote_id}").status_code == 202
    approved = shop.http.post(f"/quotes/{quote_id}/approve", json={"by": "ana"})
    assert approved.status_code == 202, approved.text

    def answered() -> dict[str, Any] | None:
        reply = shop.http.get(f"/quotes/{quote_id}")
        return reply.json() if reply.status_code == 200 else None

    body = eventually(answered, timeout=30, interval=0.2, what="the approved quote")
    assert body["quote"]["approved_by"] == "ana"
    assert body["quote"]["total_cents"] == 1200 * 150 * 90 // 100
    assert shop.http.get(f"/quotes/{uuid.uuid4()}").status_code == 404
