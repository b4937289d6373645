"""Function-level retries, in process on a real database: a function that raises outside any
step is retried under its policy; its completed steps replay from their records.

Each test claims a run with the daemon's claim statement and drives it with the worker's
`execute()` (sync and async faces); what the run recorded is read back with SQL, and a
pending retry is made due with an UPDATE.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import Context, NonRetriableError, RetryAfterError
from orchestrator.db import runs
from orchestrator.functions import Backoff
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)

FAST = Backoff.of(base=0.01, max=0.01)
HOUR = Backoff.of(base=3600, max=3600)


def run_row(harness: Harness, run_id: str) -> dict[str, Any]:
    (row,) = sql(
        harness.db,
        "SELECT status, retries, error, extract(epoch FROM due_at - now()), attempts "
        "FROM orchestrator.runs WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    return {
        "status": row[0],
        "retries": row[1],
        "error": row[2],
        "due_in": float(row[3]),
        "attempts": row[4],
    }


def register_flaky(harness: Harness, *, is_async: bool, failures: int, **options: Any) -> None:
    """A function whose step runs once and whose code after it raises `failures` times."""

    def fetch() -> int:
        harness.count("fetch")
        return 41

    def after(value: int) -> int:
        harness.count("after")
        if harness.calls["after"] <= failures:
            raise ConnectionError(f"the code after the step failed ({harness.calls['after']})")
        return value + 1

    if is_async:

        @harness.app.function("flaky", **options)
        async def flaky_async(ctx: Any) -> int:
            return after(await ctx.step.run("fetch", fetch))

    else:

        @harness.app.function("flaky", **options)
        def flaky(ctx: Context) -> int:
            return after(ctx.step.run("fetch", fetch))


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
def test_raise_after_a_step__run_queued_for_its_backoff_then_completes_without_rerunning_it(
    harness: Harness, is_async: bool
) -> None:
    register_flaky(harness, is_async=is_async, failures=1, retries=2, backoff=HOUR)
    run_id = harness.start("flaky")

    outcome = harness.step("flaky")

    assert outcome.status == "suspended"
    pending = run_row(harness, run_id)
    assert (pending["status"], pending["retries"]) == ("queued", 1)
    assert pending["error"]["type"] == "ConnectionError"
    assert "failed (1)" in pending["error"]["message"]
    assert 1800 - 5 <= pending["due_in"] <= 3600  # the function's back-off, with jitter
    # the step's deferred record was committed before the run was suspended
    assert harness.steps(run_id)["fetch"].status == "completed"

    harness.make_due(run_id)
    assert harness.step("flaky").status == "completed"
    done = run_row(harness, run_id)
    assert (done["status"], done["retries"], done["error"]) == ("completed", 1, None)
    assert harness.calls == {"fetch": 1, "after": 2}  # the completed step replayed
    assert sql(harness.db, "SELECT output FROM orchestrator.runs") == [(42,)]


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
def test_retries_used_up__the_run_fails_with_the_last_error(
    harness: Harness, is_async: bool
) -> None:
    register_flaky(harness, is_async=is_async, failures=5, retries=1, backoff=FAST)
    run_id = harness.start("flaky")

    assert harness.step("flaky").status == "suspended"
    harness.make_due(run_id)
    assert harness.step("flaky").status == "failed"

    run = run_row(harness, run_id)
    assert (run["status"], run["retries"], run["attempts"]) == ("failed", 1, 2)
    assert "failed (2)" in run["error"]["message"]
    assert harness.calls == {"fetch": 1, "after": 2}


def test_retry_after_error_outside_steps__its_delay_is_honoured(harness: Harness) -> None:
    @harness.app.function("rate-limited", retries=3, backoff=FAST)
    def rate_limited(ctx: Context) -> None:
        harness.count("function")
        raise RetryAfterError(7200, "come back in two hours")

    run_id = harness.start("rate-limited")

    assert harness.step("rate-limited").status == "suspended"
    run = run_row(harness, run_id)
    assert (run["status"], run["retries"]) == ("queued", 1)
    assert 7200 - 30 <= run["due_in"] <= 7200  # not the function's 10 ms back-off
    assert run["error"]["type"] == "RetryAfterError"


def test_retry_after_error_outside_steps__with_no_retries_left_fails(harness: Harness) -> None:
    @harness.app.function("rate-limited", retries=0)
    def rate_limited(ctx: Context) -> None:
        raise RetryAfterError(10)

    run_id = harness.start("rate-limited")

    assert harness.step("rate-limited").status == "failed"
    assert run_row(harness, run_id)["retries"] == 0


@pytest.mark.parametrize("is_async", [False, True], ids=["def", "async def"])
def test_non_retriable_error_outside_steps__fails_the_run_at_once(
    harness: Harness, is_async: bool
) -> None:
    def refuse() -> None:
        harness.count("function")
        raise NonRetriableError("the order is invalid")

    if is_async:

        @harness.app.function("strict", retries=3, backoff=FAST)
        async def strict_async(ctx: Any) -> None:
            refuse()

    else:

        @harness.app.function("strict", retries=3, backoff=FAST)
        def strict(ctx: Context) -> None:
            refuse()

    run_id = harness.start("strict")

    assert harness.step("strict").status == "failed"
    run = run_row(harness, run_id)
    assert (run["status"], run["retries"], run["error"]["type"]) == (
        "failed",
        0,
        "NonRetriableError",
    )
    assert harness.calls["function"] == 1


def test_step_error_raised_out_of_the_function__not_retried(harness: Harness) -> None:
    def declined() -> None:
        harness.count("charge")
        raise NonRetriableError("card declined")

    @harness.app.function("checkout", retries=3, backoff=FAST)
    def checkout(ctx: Context) -> None:
        harness.count("function")
        ctx.step.run("charge", declined)  # its StepError leaves the function

    run_id = harness.start("checkout")

    assert harness.step("checkout").status == "failed"
    run = run_row(harness, run_id)
    assert (run["status"], run["retries"]) == ("failed", 0)
    assert (run["error"]["type"], run["error"]["step"]) == ("NonRetriableError", "charge")
    assert harness.calls == {"function": 1, "charge": 1}


def test_return_value_not_json__not_retried(harness: Harness) -> None:
    @harness.app.function("odd-output", retries=3, backoff=FAST)
    def odd_output(ctx: Context) -> Any:
        return {1, 2, 3}

    run_id = harness.start("odd-output")

    assert harness.step("odd-output").status == "failed"
    run = run_row(harness, run_id)
    assert (run["retries"], run["error"]["code"]) == (0, "payload_not_json")


def test_non_determinism__not_retried(harness: Harness) -> None:
    order = ["a", "b"]

    @harness.app.function("shifting", retries=3, backoff=FAST)
    def shifting(ctx: Context) -> None:
        ctx.step.run(order[0], lambda: 1)
        raise ConnectionError("then it breaks")

    run_id = harness.start("shifting")
    assert harness.step("shifting").status == "suspended"
    order.reverse()  # the code changed while the run was in flight
    harness.make_due(run_id)

    assert harness.step("shifting").status == "failed"
    run = run_row(harness, run_id)
    assert (run["retries"], run["error"]["code"]) == (1, "non_determinism")


def test_cancelled_while_running__the_retry_is_refused_and_the_run_stays_cancelled(
    harness: Harness,
) -> None:
    @harness.app.function("doomed", retries=3, backoff=FAST)
    def doomed(ctx: Context) -> None:
        ctx.step.run("first", lambda: 1)  # its record is deferred: the retry would commit it
        with harness.db.transaction() as conn:
            runs.cancel(conn, [ctx.run_id], reason="no longer wanted")
        raise ConnectionError("fails after its run was cancelled")

    run_id = harness.start("doomed")

    assert harness.step("doomed").status == "stopped"
    run = run_row(harness, run_id)
    assert (run["status"], run["retries"], run["error"]["code"]) == ("cancelled", 0, "cancelled")
    assert run["error"]["message"] == "no longer wanted"
    assert "first" not in harness.steps(run_id)  # refused with the retry: the run had ended
