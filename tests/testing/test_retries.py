"""Retry back-off by virtual time: each retry comes when the step's wake_at said, within
[nominal/2, nominal] of the function's back-off (equal jitter)."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta
from typing import Any

import pytest

from orchestrator import Backoff, Context, Orchestrator, event
from orchestrator.testing import InjectedFailure, TestEnv

app = Orchestrator()
BASE = 10.0  # seconds: retries after [5, 10], [10, 20], [20, 40]
flaky_calls: list[int] = []


def charge(amount: int) -> dict[str, Any]:
    return {"charged": amount}


def flaky(amount: int) -> dict[str, Any]:
    flaky_calls.append(amount)
    if len(flaky_calls) <= 2:
        raise ConnectionError(f"attempt {len(flaky_calls)} refused")
    return {"charged": amount}


@app.function("charge", trigger=event("charge/requested"), retries=3, backoff=Backoff.of(base=BASE))
def charge_fn(ctx: Context) -> dict[str, Any]:
    return ctx.step.run("charge", charge, ctx.event.data["amount"])


@app.function(
    "charge-flaky", trigger=event("flaky/requested"), retries=3, backoff=Backoff.of(base=BASE)
)
def flaky_fn(ctx: Context) -> dict[str, Any]:
    return ctx.step.run("charge", flaky, ctx.event.data["amount"])


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def nominal(attempt: int) -> timedelta:
    return timedelta(seconds=min(600.0, BASE * 2 ** (attempt - 1)))


def follow_retries(env: TestEnv, function_id: str, failures: int) -> list[datetime]:
    """Run the step through `failures` failed attempts, checking each retry falls due at the
    recorded wake_at; returns the wake_at of each."""
    env.run_until_idle()
    wakes = []
    for attempt in range(1, failures + 1):
        (run,) = env.runs(function_id)
        step = run.step("charge")
        assert (step.status, step.attempts) == ("retrying", attempt)
        assert step.wake_at is not None and step.error is not None
        wakes.append(step.wake_at)
        assert env.next_due() == step.wake_at
        env.advance_to(step.wake_at)
    return wakes


def assert_backed_off(calls: list[datetime], wakes: list[datetime]) -> None:
    assert calls[1:] == wakes  # each retry ran at the moment its step row said
    for attempt, (before, after) in enumerate(itertools.pairwise(calls), start=1):
        assert nominal(attempt) / 2 <= after - before <= nominal(attempt)


def test_retry__injected_transient_failures_back_off(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.fail_step("charge", "charge", kind="transient", times=3)
    env.send("charge/requested", {"amount": 42})

    wakes = follow_retries(env, "charge", failures=3)

    (run,) = env.runs("charge")
    assert run.status == "completed"
    assert run.output == {"charged": 42}
    assert run.step("charge").attempts == 4
    calls = env.calls("charge", "charge")
    assert [c.attempt for c in calls] == [1, 2, 3, 4]
    assert_backed_off([c.at for c in calls], wakes)


def test_retry__injected_failure_is_recorded_as_the_step_error(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.fail_step("charge", "charge", times=1)
    env.send("charge/requested", {"amount": 1})
    env.run_until_idle()
    (run,) = env.runs("charge")
    error = run.step("charge").error
    assert error is not None
    assert error["type"] == InjectedFailure.__name__
    assert "1 of 1" in error["message"]


def test_retry__a_real_flaky_body_backs_off_the_same(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    flaky_calls.clear()
    env.send("flaky/requested", {"amount": 7})

    wakes = follow_retries(env, "charge-flaky", failures=2)

    (run,) = env.runs("charge-flaky")
    assert run.status == "completed"
    assert run.output == {"charged": 7}
    assert flaky_calls == [7, 7, 7]
    calls = env.calls("charge-flaky", "charge")
    assert len(calls) == 3
    assert_backed_off([c.at for c in calls], wakes)
