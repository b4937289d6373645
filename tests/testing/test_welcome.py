"""README's send-welcome function, tested by virtual time: a day's sleep in no time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import Context, Orchestrator, event
from orchestrator.testing import TestEnv

app = Orchestrator()
START = datetime(2026, 3, 2, 9, 30, tzinfo=UTC)


def send_email(email: str) -> dict[str, Any]:
    return {"to": email, "template": "welcome"}


def send_tips(email: str) -> dict[str, Any]:
    return {"to": email, "template": "tips"}


@app.function("send-welcome", trigger=event("user/created"), retries=3)
def send_welcome(ctx: Context) -> dict[str, Any]:
    ctx.step.run("send-email", send_email, ctx.event.data["email"])
    ctx.step.sleep("wait-a-day", timedelta(days=1))
    ctx.step.run("send-tips", send_tips, ctx.event.data["email"])
    return {"sent": 2}


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_welcome__sleeps_a_virtual_day_then_sends_tips(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.send("user/created", {"email": "ada@example.com"})
    env.run_until_idle()

    (run,) = env.runs("send-welcome")
    assert run.status == "sleeping"
    assert run.step("send-email").status == "completed"
    assert run.step("wait-a-day").status == "sleeping"
    assert [s.id for s in run.steps] == ["send-email", "wait-a-day"]

    env.advance(timedelta(days=1))

    run = env.run(run.id)
    assert run.status == "completed"
    assert run.output == {"sent": 2}
    email, tips = run.step("send-email"), run.step("send-tips")
    assert email.output == {"to": "ada@example.com", "template": "welcome"}
    assert tips.output == {"to": "ada@example.com", "template": "tips"}
    assert tips.updated_at - email.updated_at >= timedelta(days=1)


def test_welcome__tips_are_sent_exactly_a_day_after_a_pinned_start(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        env.send("user/created", {"email": "bob@example.com"})
        env.run_until_idle()
        env.advance(timedelta(days=1))

        assert [c.at for c in env.calls("send-welcome", "send-email")] == [START]
        assert [c.at for c in env.calls("send-welcome", "send-tips")] == [START + timedelta(days=1)]
        (run,) = env.runs("send-welcome", status="completed")
        assert run.step("wait-a-day").wake_at == START + timedelta(days=1)
