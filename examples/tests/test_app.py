"""The example app (examples/app.py) through `orchestrator.testing`: its functions run in the
test's process on a fresh database, by virtual time; the e-mails are mocked steps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from examples.app import app
from orchestrator import Orchestrator
from orchestrator.testing import TestEnv


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def sent_email(_email: str, template: str) -> dict[str, Any]:
    return {"sent": template, "mocked": True}


def test_signup_flow__creates_the_account_emails_then_sends_tips_after_its_sleep(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    emails = env.mock_step("signup-flow", "welcome-email", side_effect=sent_email)
    tips = env.mock_step("signup-flow", "tips-email", side_effect=sent_email)
    sent_at = env.now

    env.send("user/signed-up", {"email": "ada@example.com"})
    env.run_until_idle()

    (run,) = env.runs("signup-flow")
    assert run.status == "sleeping"
    assert [s.id for s in run.steps] == ["create-account", "welcome-email", "wait-before-tips"]
    assert run.step("create-account").output == {"account": "ada", "plan": "free"}
    assert run.step("wait-before-tips").wake_at == sent_at + timedelta(seconds=5)
    assert [c.args for c in emails.calls] == [("ada@example.com", "welcome")]
    assert not tips.called

    env.advance(timedelta(seconds=4))
    assert env.run(run.id).status == "sleeping"
    env.advance(timedelta(seconds=1))

    done = env.run(run.id)
    assert done.status == "completed"
    assert done.output == {"account": "ada"}
    assert done.step("tips-email").output == {"sent": "tips", "mocked": True}
    assert [c.at for c in tips.calls] == [sent_at + timedelta(seconds=5)]
    assert done.attempts == 2  # one execution up to the sleep, one after it


def test_signup_flow__a_failing_email_is_retried_and_the_account_step_is_not_redone(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    env.mock_step("signup-flow", "welcome-email", side_effect=sent_email)
    env.mock_step("signup-flow", "tips-email", side_effect=sent_email)
    env.fail_step("signup-flow", "welcome-email", times=2)

    env.send("user/signed-up", {"email": "bob@example.com"})
    env.advance(timedelta(minutes=1))  # the back-off of both retries, then the sleep

    (run,) = env.runs("signup-flow")
    assert run.status == "completed"
    assert run.step("welcome-email").attempts == 3
    assert [c.attempt for c in env.calls("signup-flow", "welcome-email")] == [1, 2, 3]
    assert len(env.calls("signup-flow", "create-account")) == 1  # replayed, not rerun


def test_signup_flow__an_email_failing_past_its_retries_fails_the_run(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    env.mock_step("signup-flow", "welcome-email", side_effect=sent_email)
    env.fail_step("signup-flow", "welcome-email", times=10)

    env.send("user/signed-up", {"email": "eve@example.com"})
    env.advance(timedelta(hours=1))

    (run,) = env.runs("signup-flow")
    assert run.status == "failed"
    assert run.step("welcome-email").status == "failed"
    assert len(env.calls("signup-flow", "welcome-email")) == 4  # the call and 3 retries
    assert env.calls("signup-flow", "tips-email") == []


def test_nightly_report__runs_once_a_night_at_three_utc_across_three_days(
    orchestrator_env: TestEnv,
) -> None:
    env = orchestrator_env
    begun = env.now

    env.advance(timedelta(days=3))

    reports = env.runs("nightly-report")
    assert len(reports) == 3
    assert all(r.status == "completed" for r in reports)
    scheduled = [datetime.fromisoformat(r.output["scheduled_at"]) for r in reports]
    first = begun.replace(hour=3, minute=0, second=0, microsecond=0)
    first += timedelta(days=1) if first <= begun else timedelta(0)
    assert scheduled == [first + timedelta(days=n) for n in range(3)]
    assert all(s.tzinfo is not None and s.utcoffset() == timedelta(0) for s in scheduled)
    assert [r.created_at for r in reports] == scheduled  # each made at its tick, not late


def test_nightly_report__nothing_runs_before_three(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    midnight = (env.now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    env.advance_to(midnight)
    before = len(env.runs("nightly-report"))

    env.advance_to(midnight + timedelta(hours=2, minutes=59))
    assert len(env.runs("nightly-report")) == before
    env.advance_to(midnight + timedelta(hours=3))

    latest = env.runs("nightly-report")[-1]
    assert len(env.runs("nightly-report")) == before + 1
    assert datetime.fromisoformat(latest.output["scheduled_at"]) == midnight.replace(
        hour=3, tzinfo=UTC
    )
