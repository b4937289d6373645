"""The decisions of `RunHandle.result()`, without a database: `awaiting` is a generator of
commands, driven here by hand with a clock the test moves."""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import (
    CancelledRunError,
    InvalidRunIdError,
    Orchestrator,
    RunCancelledError,
    RunFailedError,
    RunNotFoundError,
    RunSkippedError,
    RunTimeoutError,
)
from orchestrator.db.handles import RunState
from orchestrator.db.ops import Pause, Query
from orchestrator.handles import awaiting, outcome, plan_start

RUN = "00000000-0000-0000-0000-000000000001"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def running() -> list[Any]:
    return [("running", None, None)]


def test_awaiting__listens_marks_reads_then_waits() -> None:
    op = awaiting(RUN, None, clock=Clock())
    assert op.send(None).sql.startswith("LISTEN")  # type: ignore[union-attr]
    assert op.send([]).sql.startswith("UPDATE")  # type: ignore[union-attr]
    assert op.send([]).sql.startswith("SELECT status")  # type: ignore[union-attr]
    assert op.send(running()) == Pause(5.0)


def test_awaiting__rereads_on_its_own_notification_only() -> None:
    clock = Clock()
    op = awaiting(RUN, None, poll_every=5, clock=clock)
    for reply in (None, [], []):
        op.send(reply)
    assert op.send(running()) == Pause(5.0)
    clock.now += 1
    assert op.send(["another-run"]) == Pause(4.0)  # not ours: wait out the rest
    assert isinstance(op.send([RUN]), Query)  # ours: read again
    with pytest.raises(StopIteration) as done:
        op.send([("completed", {"ok": True}, None)])
    assert done.value.value == {"ok": True}


def test_awaiting__polls_when_nothing_is_heard() -> None:
    clock = Clock()
    op = awaiting(RUN, None, poll_every=5, clock=clock)
    for reply in (None, [], []):
        op.send(reply)
    op.send(running())
    clock.now += 5
    assert isinstance(op.send([]), Query)  # the poll is due: read
    assert op.send(running()) == Pause(5.0)


def test_awaiting__timeout_raises_with_the_last_status() -> None:
    clock = Clock()
    op = awaiting(RUN, 2.0, poll_every=5, clock=clock)
    for reply in (None, [], []):
        op.send(reply)
    assert op.send([("sleeping", None, None)]) == Pause(2.0)  # the deadline comes first
    clock.now += 2
    with pytest.raises(RunTimeoutError, match="did not end within 2s") as caught:
        op.send([])
    assert (caught.value.status, caught.value.timeout) == ("sleeping", 2.0)


def test_awaiting__zero_timeout_answers_an_ended_run() -> None:
    op = awaiting(RUN, 0, clock=Clock())
    for reply in (None, [], []):
        op.send(reply)
    with pytest.raises(StopIteration) as done:
        op.send([("completed", 7, None)])
    assert done.value.value == 7


@pytest.mark.parametrize(
    ("status", "error_class", "code"),
    [
        ("failed", RunFailedError, "run_failed"),
        ("cancelled", CancelledRunError, "run_cancelled"),
        ("skipped", RunSkippedError, "run_skipped"),
    ],
)
def test_outcome__typed_errors(status: str, error_class: type[Exception], code: str) -> None:
    error = {"type": "X", "message": "why"}
    with pytest.raises(error_class, match=f"run {RUN} {status}: X: why") as caught:
        outcome(RUN, RunState(status, None, error))
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert isinstance(caught.value, RunCancelledError) == (status == "cancelled")


def test_outcome__missing_run_and_run_without_error() -> None:
    with pytest.raises(RunNotFoundError):
        outcome(RUN, None)
    with pytest.raises(RunFailedError, match="no error recorded"):
        outcome(RUN, RunState("failed", None, None))


def test_plan_start__checks_without_io() -> None:
    app = Orchestrator("postgresql://unused/none")
    plan = plan_start(app, "f", {"a": (1, 2)}, 2.5, None)
    assert (plan.function_id, plan.data, plan.delay, plan.options) == (
        "f",
        {"a": [1, 2]},
        2.5,
        None,
    )
    with pytest.raises(InvalidRunIdError):
        plan_start(app, "f", None, None, "not-a-uuid")
    with pytest.raises(ValueError, match="delay"):
        plan_start(app, "f", None, float("nan"), None)
