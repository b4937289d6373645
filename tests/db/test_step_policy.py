"""A step's own retry policy and timeout (`ctx.step.run(..., retries=, backoff=, retry_on=,
timeout=)`), in process on a real database.

Each test claims a run with the daemon's claim statement and drives it with the worker's
`execute()`; what the run and its steps recorded is read back with SQL. A pending retry is
made due with an UPDATE.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from orchestrator import Context, StepTimeoutError
from orchestrator.db.steps import StepRecord
from orchestrator.engine import threads
from orchestrator.engine.faces import SyncFace, run_sync
from orchestrator.engine.store import Lease
from orchestrator.errors import LeaseLost, NestedStepError
from orchestrator.functions import Backoff
from orchestrator.runtime.metrics import StepTally
from tests.conftest import eventually
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)

FAST = Backoff.of(base=0.01, max=0.01)
HOUR = Backoff.of(base=3600, max=3600)


class Flaky(Exception):
    pass


class Fatal(Exception):
    pass


def due_in(harness: Harness, run_id: str) -> float:
    (row,) = sql(
        harness.db,
        "SELECT extract(epoch FROM due_at - now()) FROM orchestrator.runs "
        "WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    return float(row[0])


def failing(harness: Harness, error: type[BaseException], times: int = 100) -> Any:
    def body() -> str:
        harness.count("body")
        if harness.calls["body"] <= times:
            raise error(f"attempt {harness.calls['body']}")
        return "ok"

    return body


def test_step_retries__override_the_functions(harness: Harness) -> None:
    @harness.app.function("generous-step", retries=0, backoff=FAST)
    def generous(ctx: Context) -> str:
        return str(ctx.step.run("flaky", failing(harness, Flaky, times=2), retries=2))

    run_id = harness.start("generous-step")
    for _ in range(2):
        assert harness.step("generous-step").status == "suspended"
        harness.make_due(run_id)
    assert harness.step("generous-step").status == "completed"
    assert harness.calls["body"] == 3
    assert harness.steps(run_id)["flaky"].attempt == 3


def test_step_retries_zero__fails_the_step_at_once(harness: Harness) -> None:
    @harness.app.function("strict-step", retries=3, backoff=FAST)
    def strict(ctx: Context) -> None:
        ctx.step.run("flaky", failing(harness, Flaky), retries=0)

    run_id = harness.start("strict-step")

    assert harness.step("strict-step").status == "failed"  # StepError: not retried either
    row = harness.steps(run_id)["flaky"]
    assert (row.status, row.attempt, harness.calls["body"]) == ("failed", 1, 1)


def test_step_backoff__overrides_the_functions(harness: Harness) -> None:
    @harness.app.function("slow-backoff", retries=3, backoff=FAST)
    def slow(ctx: Context) -> None:
        ctx.step.run("flaky", failing(harness, Flaky), backoff=HOUR)

    run_id = harness.start("slow-backoff")

    assert harness.step("slow-backoff").status == "suspended"
    assert 1800 - 5 <= due_in(harness, run_id) <= 3600  # not the function's 10 ms


@pytest.mark.parametrize(
    "retry_on",
    [Flaky, (KeyError, Flaky), lambda exc: "attempt" in str(exc)],
    ids=["type", "tuple", "predicate"],
)
def test_retry_on__an_accepted_error_is_retried(harness: Harness, retry_on: Any) -> None:
    @harness.app.function("choosy", retries=3, backoff=FAST)
    def choosy(ctx: Context) -> None:
        ctx.step.run("flaky", failing(harness, Flaky), retry_on=retry_on)

    run_id = harness.start("choosy")

    assert harness.step("choosy").status == "suspended"
    assert harness.steps(run_id)["flaky"].status == "retrying"


@pytest.mark.parametrize(
    "retry_on",
    [Flaky, (KeyError, Flaky), lambda exc: isinstance(exc, Flaky), lambda exc: 1 / 0],
    ids=["type", "tuple", "predicate", "raising predicate"],
)
def test_retry_on__an_error_it_does_not_accept_fails_the_step_at_once(
    harness: Harness, retry_on: Any
) -> None:
    @harness.app.function("choosy", retries=3, backoff=FAST)
    def choosy(ctx: Context) -> str:
        try:
            ctx.step.run("fatal", failing(harness, Fatal), retry_on=retry_on)
        except Exception as exc:
            return type(exc).__name__
        return "no error"

    run_id = harness.start("choosy")

    assert harness.step("choosy").status == "completed"
    assert sql(harness.db, "SELECT output FROM orchestrator.runs") == [("StepError",)]
    row = harness.steps(run_id)["fatal"]
    assert (row.status, row.attempt, row.error["type"]) == ("failed", 1, "Fatal")


@pytest.mark.parametrize(
    ("options", "error", "says"),
    [
        ({"retries": -1}, ValueError, "retries"),
        ({"retries": True}, ValueError, "retries"),
        ({"retries": "3"}, ValueError, "retries"),
        ({"backoff": 5}, TypeError, "backoff"),
        ({"retry_on": "Flaky"}, TypeError, "retry_on"),
        ({"retry_on": ()}, TypeError, "retry_on"),
        ({"retry_on": (Flaky, int)}, TypeError, "retry_on"),
        ({"retry_on": int}, TypeError, "retry_on"),
        ({"timeout": 0}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"timeout": "5s"}, TypeError, "timeout"),
    ],
)
@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
def test_bad_policy_values__a_clear_error_naming_the_step_at_the_call(
    harness: Harness, options: dict[str, Any], error: type[Exception], says: str, is_async: bool
) -> None:
    caught: list[BaseException] = []

    def call(ctx: Any) -> Any:
        try:
            return ctx.step.run("charge", failing(harness, Flaky), **options)
        except (TypeError, ValueError) as exc:
            caught.append(exc)
            return None

    if is_async:

        @harness.app.function("picky", retries=0)
        async def picky_async(ctx: Any) -> None:
            call(ctx)  # raises at the call, before anything is awaited

    else:

        @harness.app.function("picky", retries=0)
        def picky(ctx: Context) -> None:
            call(ctx)

    run_id = harness.start("picky")

    assert harness.step("picky").status == "completed"
    (exc,) = caught
    assert isinstance(exc, error)
    assert "'charge'" in str(exc) and says in str(exc)
    assert harness.steps(run_id) == {}  # nothing recorded, the body never ran
    assert "body" not in harness.calls


def test_policy_keywords__reserved_not_passed_to_the_body(harness: Harness) -> None:
    seen: list[dict[str, Any]] = []

    def body(*args: Any, **kwargs: Any) -> str:
        seen.append({"args": args, "kwargs": kwargs})
        return "ok"

    @harness.app.function("reserved", retries=0)
    def reserved(ctx: Context) -> None:
        ctx.step.run("s", body, 1, retries=1, backoff=FAST, retry_on=Flaky, timeout=5, x=2)

    harness.start("reserved")

    assert harness.step("reserved").status == "completed"
    assert seen == [{"args": (1,), "kwargs": {"x": 2}}]


def test_async_body__cancelled_at_its_timeout_and_retried(harness: Harness) -> None:
    cancelled = threading.Event()

    async def slow() -> str:
        harness.count("body")
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "too late"

    @harness.app.function("slow-async", retries=3, backoff=HOUR)
    async def slow_async(ctx: Any) -> None:
        await ctx.step.run("slow", slow, timeout=0.2)

    run_id = harness.start("slow-async")
    started = time.monotonic()

    assert harness.step("slow-async").status == "suspended"
    assert time.monotonic() - started < 10
    assert cancelled.is_set()  # the body itself was cancelled, not left running
    row = harness.steps(run_id)["slow"]
    assert (row.status, row.error["type"], row.error["code"]) == (
        "retrying",
        "StepTimeoutError",
        "step_timeout",
    )
    assert "0.2s" in row.error["message"]


def test_async_body__its_own_timeout_error_is_its_failure_not_a_timeout(
    harness: Harness,
) -> None:
    async def impatient() -> None:
        raise TimeoutError("the provider timed out")

    @harness.app.function("impatient", retries=0)
    async def impatient_fn(ctx: Any) -> None:
        await ctx.step.run("call", impatient, timeout=30)

    run_id = harness.start("impatient")

    assert harness.step("impatient").status == "failed"
    assert harness.steps(run_id)["call"].error["type"] == "TimeoutError"


def test_sync_body_past_its_timeout__abandoned_counted_and_its_late_writes_refused(
    harness: Harness,
) -> None:
    """The first attempt blocks past its timeout: the run is suspended for the retry and
    its thread left running. The retry completes the step under a new lease. Then the
    abandoned thread wakes: a step it calls is refused, a write under the old lease is
    refused by the fence, and its return value is dropped."""
    gate = threading.Event()
    late: dict[str, Any] = {}
    tally = StepTally()
    harness.observer = tally
    leases: list[Lease] = []
    eventually(lambda: threads.ABANDONED.count == 0, what="no abandoned thread left running")

    def body(ctx: Context) -> str:
        harness.count("body")
        if harness.calls["body"] > 1:
            return "second attempt"
        gate.wait(30)  # the first outlives its timeout
        try:
            ctx.step.run("inside", lambda: "never")
        except NestedStepError as exc:
            late["step"] = exc
        try:
            harness.store.checkpoint(
                leases[0], StepRecord("slow", 0, "run", "completed", 1, output_json='"late"')
            ).result(timeout=10)
        except LeaseLost as exc:
            late["write"] = exc
        return "first attempt, too late"

    @harness.app.function("stuck", retries=2, backoff=FAST)
    def stuck(ctx: Context) -> str:
        return str(ctx.step.run("slow", body, ctx, timeout=0.3))

    run_id = harness.start("stuck")
    task = harness.task("stuck")
    leases.append(Lease(task.run_id, task.lease_token))

    assert run_sync(harness.execute(task, SyncFace())).status == "suspended"
    row = harness.steps(run_id)["slow"]
    assert (row.status, row.error["code"]) == ("retrying", "step_timeout")
    assert threads.ABANDONED.count == 1

    harness.make_due(run_id)
    assert harness.step("stuck").status == "completed"
    gate.set()
    eventually(lambda: len(late) == 2, timeout=20, what="the abandoned body to finish")
    eventually(lambda: threads.ABANDONED.count == 0, what="the thread to end")

    assert isinstance(late["step"], NestedStepError)
    assert "outlived its timeout" in str(late["step"])
    assert isinstance(late["write"], LeaseLost)
    row = harness.steps(run_id)["slow"]
    assert (row.status, row.attempt, row.output) == ("completed", 2, "second attempt")
    assert set(harness.steps(run_id)) == {"slow"}
    assert sql(harness.db, "SELECT output FROM orchestrator.runs") == [("second attempt",)]
    delta = tally.take()
    assert delta is not None
    assert delta.abandoned == {"stuck": 1}
    assert delta.abandoned_alive == {"stuck": 0}  # +1 when abandoned, -1 when it ended


def test_plain_body_of_an_async_function_past_its_timeout__abandoned(harness: Harness) -> None:
    gate = threading.Event()
    tally = StepTally()
    harness.observer = tally

    def blocking() -> str:
        gate.wait(30)
        return "late"

    @harness.app.function("stuck-async", retries=1, backoff=HOUR)
    async def stuck_async(ctx: Any) -> None:
        await ctx.step.run("slow", blocking, timeout=0.2)

    run_id = harness.start("stuck-async")
    try:
        assert harness.step("stuck-async").status == "suspended"
        assert harness.steps(run_id)["slow"].error["type"] == StepTimeoutError.__name__
        delta = tally.take()
        assert delta is not None
        assert (delta.abandoned, delta.abandoned_alive) == ({"stuck-async": 1}, {"stuck-async": 1})
    finally:
        gate.set()


def test_plain_callable_returning_a_coroutine__its_await_is_bounded_by_the_timeout(
    harness: Harness,
) -> None:
    @harness.app.function("lambda-async", retries=1, backoff=HOUR)
    async def lambda_async(ctx: Any) -> None:
        await ctx.step.run("nap", lambda: asyncio.sleep(30), timeout=0.2)

    run_id = harness.start("lambda-async")
    started = time.monotonic()

    assert harness.step("lambda-async").status == "suspended"
    assert time.monotonic() - started < 10
    assert harness.steps(run_id)["nap"].error["code"] == "step_timeout"
