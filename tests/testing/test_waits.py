"""Waiting for an event with a timeout: the timeout branch by advancing the clock, the
payment branch by sending the event (a non-matching one first)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import Context, Orchestrator, event
from orchestrator.testing import TestEnv

app = Orchestrator()


def record_payment(order_id: str, amount: int) -> dict[str, Any]:
    return {"order_id": order_id, "amount": amount}


def cancel_order(order_id: str) -> dict[str, Any]:
    return {"cancelled": order_id}


@app.function("wait-for-payment", trigger=event("order/created"))
def wait_for_payment(ctx: Context) -> dict[str, Any]:
    order_id = ctx.event.data["order_id"]
    paid = ctx.step.wait_for_event(
        "payment", event="payment/received", match="data.order_id", timeout=timedelta(hours=1)
    )
    if paid is None:
        ctx.step.run("cancel-order", cancel_order, order_id)
        return {"paid": False}
    ctx.step.run("record-payment", record_payment, order_id, paid.data["amount"])
    return {"paid": True, "amount": paid.data["amount"]}


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_wait__timeout_runs_the_timeout_branch(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.send("order/created", {"order_id": "o-1"})
    env.run_until_idle()
    (run,) = env.runs("wait-for-payment")
    assert run.status == "waiting"
    assert run.step("payment").wake_at == env.now + timedelta(hours=1)

    env.advance(timedelta(minutes=59, seconds=59))
    assert env.run(run.id).status == "waiting"  # not yet
    env.advance(timedelta(seconds=1))  # exactly the hour: the timeout falls due

    run = env.run(run.id)
    assert run.status == "completed"
    assert run.output == {"paid": False}
    assert run.step("cancel-order").output == {"cancelled": "o-1"}
    assert env.calls("wait-for-payment", "record-payment") == []
    assert [s.id for s in run.steps] == ["payment", "cancel-order"]


def test_wait__matching_event_runs_the_payment_branch(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    start = env.now
    env.send("order/created", {"order_id": "o-2"})
    env.run_until_idle()
    env.advance(timedelta(minutes=10))
    env.send("payment/received", {"order_id": "o-other", "amount": 1})
    env.run_until_idle()
    (run,) = env.runs("wait-for-payment")
    assert run.status == "waiting"  # the other order's payment does not end this wait

    env.advance(timedelta(minutes=10))
    paid_id = env.send("payment/received", {"order_id": "o-2", "amount": 4200})
    env.run_until_idle()

    run = env.run(run.id)
    assert run.status == "completed"
    assert run.output == {"paid": True, "amount": 4200}
    assert run.step("payment").output["id"] == paid_id
    assert run.step("payment").output["data"] == {"order_id": "o-2", "amount": 4200}
    assert run.step("record-payment").output == {"order_id": "o-2", "amount": 4200}
    assert env.calls("wait-for-payment", "cancel-order") == []
    (call,) = env.calls("wait-for-payment", "record-payment")
    assert call.args == ("o-2", 4200)
    assert call.at == start + timedelta(minutes=20)
    assert isinstance(call.at, datetime) and call.at.tzinfo is not None
    assert call.at.astimezone(UTC) == call.at
