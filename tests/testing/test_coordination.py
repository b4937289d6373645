"""Signals, invoked runs, sent events and sleep_until, by virtual time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import Context, Orchestrator, event
from orchestrator.testing import TestEnv

app = Orchestrator()
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@app.function("approve", trigger=event("order/created"))
def approve(ctx: Context) -> dict[str, Any]:
    decision = ctx.step.wait_for_signal("approval", "decision", timeout=timedelta(days=2))
    return {"approved": bool(decision and decision.get("ok"))}


@app.function("double")
def double(ctx: Context) -> int:
    return ctx.step.run("double", lambda n: 2 * n, ctx.event.data["n"])


@app.function("parent", trigger=event("parent/go"))
def parent(ctx: Context) -> dict[str, Any]:
    got = ctx.step.invoke("child", function="double", data={"n": ctx.event.data["n"]})
    return {"got": got}


@app.function("notify", trigger=event("invoice/paid"))
def notify(ctx: Context) -> list[str]:
    return ctx.step.send_event(
        "notify",
        [
            {"name": "mail/queued", "data": {"invoice": ctx.event.data["invoice"]}},
            {"name": "ledger/posted", "data": {"invoice": ctx.event.data["invoice"]}},
        ],
    )


@app.function("nightly", trigger=event("report/requested"))
def nightly(ctx: Context) -> str:
    ctx.step.sleep_until("midnight", datetime.fromisoformat(ctx.event.data["at"]))
    return ctx.step.run("report", lambda: "done")


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_signal__wakes_the_waiting_run_with_its_data(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.send("order/created", {"order_id": 1})
    env.run_until_idle()
    (run,) = env.runs("approve")
    assert run.status == "waiting"

    env.advance(timedelta(hours=3))
    env.signal(run.id, "decision", {"ok": True})
    env.run_until_idle()

    run = env.run(run.id)
    assert run.status == "completed"
    assert run.output == {"approved": True}
    assert run.step("approval").output == {"ok": True}


def test_signal__timeout_gives_none(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.send("order/created", {"order_id": 2})
    env.advance(timedelta(days=2))
    (run,) = env.runs("approve")
    assert run.status == "completed"
    assert run.output == {"approved": False}


def test_invoke__parent_and_child_complete(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.send("parent/go", {"n": 21})
    env.run_until_idle()

    (parent_run,) = env.runs("parent")
    (child,) = env.runs("double")
    assert (parent_run.status, child.status) == ("completed", "completed")
    assert child.parent_run_id == parent_run.id
    assert child.event["data"] == {"n": 21}
    assert parent_run.output == {"got": 42}
    assert parent_run.step("child").kind == "invoke"


def test_send_event__recorded_as_the_runs_sent_events(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.send("invoice/paid", {"invoice": 7})
    env.run_until_idle()

    (run,) = env.runs("notify")
    assert run.status == "completed"
    assert [(e.name, e.data) for e in run.sent_events] == [
        ("mail/queued", {"invoice": 7}),
        ("ledger/posted", {"invoice": 7}),
    ]
    assert run.output == [e.id for e in run.sent_events]
    assert [e.name for e in env.events()] == ["invoice/paid", "mail/queued", "ledger/posted"]
    assert [e.id for e in env.events("mail/queued")] == [run.sent_events[0].id]


def test_sleep_until__wakes_at_that_moment(db_url: str) -> None:
    midnight = datetime(2026, 3, 3, 0, 0, tzinfo=UTC)
    with TestEnv(app, url=db_url, start=START) as env:
        env.send("report/requested", {"at": midnight.isoformat()})
        env.run_until_idle()
        (run,) = env.runs("nightly")
        assert run.status == "sleeping"
        assert run.step("midnight").wake_at == midnight
        assert env.next_due() == midnight

        env.advance_to(midnight - timedelta(microseconds=1))
        assert env.run(run.id).status == "sleeping"
        env.advance_to(midnight)
        run = env.run(run.id)
        assert run.status == "completed"
        (call,) = env.calls("nightly", "report")
        assert call.at == midnight
