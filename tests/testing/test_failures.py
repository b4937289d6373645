"""`fail_step`: a non-retriable failure fails the run; a crash after the body makes it run
again once, the run recovered once, its result recorded once."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import Context, Orchestrator, event
from orchestrator.testing import TestEnv

app = Orchestrator()
body_runs: list[int] = []


def reserve(item: int) -> dict[str, Any]:
    body_runs.append(item)
    return {"reserved": item}


def confirm(item: int) -> str:
    return f"confirmed {item}"


@app.function("reserve", trigger=event("item/ordered"), retries=3)
def reserve_fn(ctx: Context) -> dict[str, Any]:
    got = ctx.step.run("reserve", reserve, ctx.event.data["item"])
    note = ctx.step.run("confirm", confirm, ctx.event.data["item"])
    return {"got": got, "note": note}


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


@pytest.fixture(autouse=True)
def _count_from_zero() -> None:
    body_runs.clear()


def test_fail_step__non_retriable_fails_the_run(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.fail_step("reserve", "reserve", kind="non_retriable")
    env.send("item/ordered", {"item": 5})
    env.run_until_idle()

    (run,) = env.runs("reserve")
    assert run.status == "failed"
    step = run.step("reserve")
    assert step.status == "failed" and step.attempts == 1
    assert step.error is not None and step.error["type"] == "NonRetriableError"
    assert run.error is not None and "reserve" in str(run.error)
    assert body_runs == []  # the injected failure stands in for the body
    assert env.calls("reserve", "confirm") == []
    assert env.next_due() is None  # nothing left to retry


def test_fail_step__crash_runs_the_body_again(orchestrator_env: TestEnv) -> None:
    env = orchestrator_env
    env.fail_step("reserve", "reserve", kind="crash")
    env.send("item/ordered", {"item": 9})
    env.run_until_idle()

    (run,) = env.runs("reserve")
    assert run.status == "completed"
    assert body_runs == [9, 9]  # at least once: the crash lost the first result
    assert run.recoveries == 1
    assert [s.id for s in run.steps] == ["reserve", "confirm"]
    assert run.step("reserve").output == {"reserved": 9}
    assert run.output == {"got": {"reserved": 9}, "note": "confirmed 9"}
    assert [c.attempt for c in env.calls("reserve", "reserve")] == [1, 2]
    assert len(env.calls("reserve", "confirm")) == 1
