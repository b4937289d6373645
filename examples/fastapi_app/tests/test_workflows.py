"""The shop's functions (examples/fastapi_app/workflows.py) through `orchestrator.testing`:
both are `async def` and run on the environment's event loop. The inventory call (HTTP) and
the order update (the shop's table) are mocked steps; pricing runs for real."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import pytest

from examples.fastapi_app.workflows import app
from orchestrator import Orchestrator
from orchestrator.testing import TestEnv


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def stock_of(levels: dict[str, int]) -> Any:
    async def fetch(sku: str) -> dict[str, Any]:
        return {"sku": sku, "available": levels[sku]}

    return fetch


def order(sku: str, quantity: int) -> dict[str, Any]:
    return {"order_id": str(uuid.uuid4()), "sku": sku, "quantity": quantity}


@pytest.mark.parametrize(("quantity", "status"), [(25, "confirmed"), (26, "backordered")])
def test_confirm_order__marks_the_order_by_the_stock_it_was_told(
    orchestrator_env: TestEnv, quantity: int, status: str
) -> None:
    env = orchestrator_env
    stock = env.mock_step("confirm-order", "check-stock", side_effect=stock_of({"mug": 25}))
    record = env.mock_step("confirm-order", "record")
    placed = order("mug", quantity)

    env.send("order/placed", placed)
    env.run_until_idle()

    (run,) = env.runs("confirm-order")
    assert run.status == "completed"
    assert run.output == {"order_id": placed["order_id"], "status": status, "available": 25}
    assert [s.id for s in run.steps] == ["check-stock", "record"]
    assert run.step("check-stock").output == {"sku": "mug", "available": 25}
    assert [c.args for c in stock.calls] == [("mug",)]
    assert [c.args for c in record.calls] == [(placed["order_id"], status, 25)]


def test_confirm_order__an_inventory_outage_is_retried_with_back_off(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    env.mock_step("confirm-order", "check-stock", side_effect=stock_of({"tee": 3}))
    record = env.mock_step("confirm-order", "record")
    env.fail_step("confirm-order", "check-stock", times=2, error=ConnectionError("inventory down"))
    sent_at = env.now

    env.send("order/placed", order("tee", 1))
    env.run_until_idle()
    (run,) = env.runs("confirm-order")
    assert run.status == "queued"  # due again once the back-off is over
    assert run.step("check-stock").wake_at > env.now
    assert run.step("check-stock").status == "retrying"
    assert not record.called

    env.advance(timedelta(minutes=5))

    done = env.run(run.id)
    assert done.status == "completed"
    assert done.output["status"] == "confirmed"
    calls = env.calls("confirm-order", "check-stock")
    assert [c.attempt for c in calls] == [1, 2, 3]
    assert calls[0].at == sent_at
    assert calls[1].at > calls[0].at and calls[2].at > calls[1].at  # virtual back-off
    assert len(record.calls) == 1


def test_confirm_order__a_failed_stock_check_after_its_retries_fails_the_run(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    env.mock_step("confirm-order", "check-stock", side_effect=ConnectionError("inventory down"))
    record = env.mock_step("confirm-order", "record")

    env.send("order/placed", order("mug", 1))
    env.advance(timedelta(hours=2))

    (run,) = env.runs("confirm-order")
    assert run.status == "failed"
    assert "inventory down" in str(run.error)
    assert len(env.calls("confirm-order", "check-stock")) == 6  # the call and 5 retries
    assert not record.called


def quote_request(quantity: int, sku: str = "mug") -> dict[str, Any]:
    return {"quote_id": str(uuid.uuid4()), "sku": sku, "quantity": quantity}


def test_quote__a_small_quote_is_priced_and_approved_at_once(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.mock_step("quote", "check-stock", side_effect=stock_of({"mug": 25}))
    asked = quote_request(10)

    run_id = env.start("quote", asked)
    env.run_until_idle()

    run = env.run(run_id)
    assert run.status == "completed"
    assert run.output == asked | {
        "unit_cents": 1200,
        "discount_percent": 0,
        "total_cents": 12000,
        "in_stock": True,
        "approved_by": "auto",
    }
    assert [s.id for s in run.steps] == ["check-stock", "price"]


def test_quote__a_large_quote_waits_for_its_own_approval(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.mock_step("quote", "check-stock", side_effect=stock_of({"tee": 3}))
    asked = quote_request(150, sku="tee")

    run_id = env.start("quote", asked)
    env.run_until_idle()
    assert env.run(run_id).status == "waiting"
    env.advance(timedelta(days=1))
    env.send("quote/approved", {"quote_id": str(uuid.uuid4()), "by": "someone-else"})
    env.run_until_idle()
    assert env.run(run_id).status == "waiting"  # another quote's approval does not match

    env.send("quote/approved", {"quote_id": asked["quote_id"], "by": "grace"})
    env.run_until_idle()

    run = env.run(run_id)
    assert run.status == "completed"
    assert run.output["approved_by"] == "grace"
    assert run.output["discount_percent"] == 10
    assert run.output["total_cents"] == 1800 * 150 * 90 // 100
    assert run.output["in_stock"] is False
    assert run.step("approval").kind == "wait"
    assert run.step("approval").output["data"]["by"] == "grace"


def test_quote__an_unapproved_large_quote_expires_after_two_days(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    env.mock_step("quote", "check-stock", side_effect=stock_of({"mug": 500}))
    started_at = env.now

    run_id = env.start("quote", quote_request(100))
    env.run_until_idle()
    assert env.run(run_id).step("approval").wake_at == started_at + timedelta(days=2)
    env.advance(timedelta(days=2) - timedelta(seconds=1))
    assert env.run(run_id).status == "waiting"
    env.advance(timedelta(seconds=1))

    run = env.run(run_id)
    assert run.status == "completed"
    assert run.output["approved_by"] is None
    assert run.output["expired"] is True
    assert run.finished_at == started_at + timedelta(days=2)
