"""The executor, in process, on a real database: user code that raises hostile exceptions,
and steps called inside another step's body.

Each test claims a run with the daemon's claim statement and drives it with the worker's
`execute()`, as a worker thread would; what the run and its steps recorded is read back
with SQL. A further attempt is made due with an UPDATE and claimed again.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog.testing

from orchestrator import Context, OnEvent, RetryAfterError, StepError
from orchestrator.functions import Backoff
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)

FAST = Backoff.of(base=0.01, max=0.01)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for you")

    def __repr__(self) -> str:
        raise RuntimeError("no repr either")


class CodeIsAMethod(Exception):
    def code(self) -> int:  # an RPC library's error: `code` is a method, not a value
        return 14


class RaisingProperty(Exception):
    @property
    def non_retriable(self) -> bool:
        raise RuntimeError("property exploded")


def cycle() -> BaseException:
    first, second = ValueError("first"), ValueError("second")
    first.__cause__, second.__cause__ = second, first
    return first


def local_class() -> BaseException:
    class Unimportable(Exception):  # defined in a function: nothing can import it by name
        pass

    return Unimportable("made where no importer can find it")


HOSTILE: dict[str, tuple[Callable[[], BaseException], str]] = {
    "broken __str__ and __repr__": (BrokenStr, "BrokenStr"),
    "10 MB message": (lambda: ValueError("x" * 10_000_000), "ValueError"),
    "NUL characters": (lambda: ValueError("a\x00b"), "ValueError"),
    "lone surrogate": (lambda: ValueError("half \ud800 a pair"), "ValueError"),
    "cycle of causes": (cycle, "ValueError"),
    "class nobody can import": (local_class, "Unimportable"),
    "code is a method": (lambda: CodeIsAMethod("unavailable"), "CodeIsAMethod"),
    "property that raises": (lambda: RaisingProperty("boom"), "RaisingProperty"),
    "SystemExit": (lambda: SystemExit(3), "SystemExit"),
}


# -- hostile exceptions -------------------------------------------------------------------


def test_broken_str_in_a_step__recorded_with_its_type_and_retried(harness: Harness) -> None:
    @harness.app.function("broken", retries=1, backoff=FAST)
    def broken(ctx: Context) -> None:
        def body() -> None:
            harness.count("body")
            raise BrokenStr()

        ctx.step.run("explode", body)

    run_id = harness.start("broken")

    assert harness.step("broken").status == "suspended"  # a retry, not a crash
    first = harness.steps(run_id)["explode"]
    assert (first.status, first.attempt, first.error["type"]) == ("retrying", 1, "BrokenStr")
    assert "could not be rendered" in first.error["message"]

    harness.make_due(run_id)
    assert harness.step("broken").status == "failed"
    assert harness.calls["body"] == 2  # retries=1: two attempts, each run once
    last = harness.steps(run_id)["explode"]
    assert (last.status, last.attempt, last.error["type"]) == ("failed", 2, "BrokenStr")
    run = harness.run(run_id)
    assert (run["status"], run["error"]["type"], run["error"]["step"]) == (
        "failed",
        "BrokenStr",
        "explode",
    )


def test_broken_str_outside_steps__retried_then_fails_the_run(harness: Harness) -> None:
    @harness.app.function("broken-body", retries=1, backoff=FAST)
    def broken_body(ctx: Context) -> None:
        harness.count("function")
        raise BrokenStr()

    run_id = harness.start("broken-body")

    assert harness.step("broken-body").status == "suspended"
    run = harness.run(run_id)  # the retry is pending, with the attempt's error recorded
    assert (run["status"], run["error"]["type"]) == ("queued", "BrokenStr")
    harness.make_due(run_id)
    assert harness.step("broken-body").status == "failed"
    assert harness.calls["function"] == 2
    run = harness.run(run_id)
    assert (run["status"], run["error"]["type"]) == ("failed", "BrokenStr")
    assert "could not be rendered" in run["error"]["message"]
    assert "BrokenStr" in run["error"]["traceback"]


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_exception_in_a_step__recorded_and_the_run_fails_cleanly(
    harness: Harness, case: str
) -> None:
    make, type_name = HOSTILE[case]

    @harness.app.function("hostile", retries=0)
    def hostile(ctx: Context) -> str:
        def body() -> None:
            harness.count("body")
            raise make()

        try:
            ctx.step.run("explode", body)
        except StepError as exc:  # the function sees it as any failed step, and may go on
            return f"caught {exc.error_type}"
        return "not reached"

    run_id = harness.start("hostile")

    assert harness.step("hostile").status == "completed"
    assert harness.calls["body"] == 1
    row = harness.steps(run_id)["explode"]
    assert (row.status, row.error["type"]) == ("failed", type_name)
    assert len(row.error["message"]) < 70_000  # cut, with how long it was
    assert row.error["code"] is None or isinstance(row.error["code"], str | int)
    (output,) = sql(
        harness.db, "SELECT output FROM orchestrator.runs WHERE id = CAST(:r AS uuid)", r=run_id
    )
    assert output[0] == f"caught {type_name}"


def test_huge_message__cut_with_its_length(harness: Harness) -> None:
    @harness.app.function("huge", retries=0)
    def huge(ctx: Context) -> None:
        ctx.step.run("explode", lambda: (_ for _ in ()).throw(ValueError("y" * 10_000_000)))

    run_id = harness.start("huge")

    assert harness.step("huge").status == "failed"
    message = harness.steps(run_id)["explode"].error["message"]
    assert message.startswith("yyyy") and message.endswith("[cut: 10000000 characters in all]")


# -- steps inside step bodies ----------------------------------------------------------------


NESTED: dict[str, Callable[[Context], Any]] = {
    "run": lambda ctx: ctx.step.run("inner", lambda: 1),
    "sleep": lambda ctx: ctx.step.sleep("inner", timedelta(seconds=1)),
    "wait_for_event": lambda ctx: ctx.step.wait_for_event("inner", event="x/y", timeout=1),
    "invoke": lambda ctx: ctx.step.invoke("inner", function="other"),
    "wait_for_any": lambda ctx: ctx.step.wait_for_any("inner", events=[OnEvent("x/y")], timeout=1),
    "send_event": lambda ctx: ctx.step.send_event("inner", {"name": "x/y", "data": {}}),
    "parallel": lambda ctx: ctx.step.parallel("inner", [lambda: 1]),
}


@pytest.mark.parametrize("kind", list(NESTED))
def test_step_inside_a_step_body__fails_the_run_at_once(harness: Harness, kind: str) -> None:
    @harness.app.function("nested", retries=3)
    def nested(ctx: Context) -> None:
        def outer() -> int:
            harness.count("outer")
            NESTED[kind](ctx)
            return 2

        ctx.step.run("outer", outer)
        ctx.step.sleep("later", timedelta(seconds=1))

    run_id = harness.start("nested")

    assert harness.step("nested").status == "failed"
    assert harness.calls["outer"] == 1  # not retried: the code is wrong, not the step
    run = harness.run(run_id)
    assert (run["error"]["type"], run["error"]["code"]) == ("NestedStepError", "nested_step")
    assert f"ctx.step.{kind}('inner')" in run["error"]["message"]
    assert run["error"]["step"] == "outer"
    assert harness.steps(run_id) == {}  # neither step was recorded


def test_step_inside_a_step_body__fails_even_when_the_body_swallows_it(harness: Harness) -> None:
    @harness.app.function("swallowing", retries=0)
    def swallowing(ctx: Context) -> str:
        def outer() -> int:
            with contextlib.suppress(Exception):
                ctx.step.run("inner", lambda: 1)
            return 2

        ctx.step.run("outer", outer)
        return "done"

    run_id = harness.start("swallowing")

    assert harness.step("swallowing").status == "failed"
    assert harness.run(run_id)["error"]["code"] == "nested_step"
    assert harness.steps(run_id) == {}


def test_step_from_a_thread_a_body_started__refused(harness: Harness) -> None:
    seen: list[Exception] = []

    @harness.app.function("threaded", retries=0)
    def threaded(ctx: Context) -> None:
        def outer() -> None:
            def call_a_step() -> None:
                try:
                    ctx.step.run("inner", lambda: 1)
                except Exception as exc:  # the helper thread's error stays in the thread
                    seen.append(exc)

            helper = threading.Thread(target=call_a_step)
            helper.start()
            helper.join()

        ctx.step.run("outer", outer)

    run_id = harness.start("threaded")

    assert harness.step("threaded").status == "failed"
    assert harness.run(run_id)["error"]["code"] == "nested_step"
    assert [type(exc).__name__ for exc in seen] == ["NestedStepError"]


def test_step_inside_a_parallel_branch__fails_the_run(harness: Harness) -> None:
    @harness.app.function("branchy", retries=2)
    def branchy(ctx: Context) -> list[Any]:
        return ctx.step.parallel("fan", [lambda: 1, lambda: ctx.step.run("inner", lambda: 2)])

    run_id = harness.start("branchy")

    assert harness.step("branchy").status == "failed"
    run = harness.run(run_id)
    assert (run["error"]["code"], run["error"]["step"]) == ("nested_step", "fan[1]")


def test_nested_step_then_sleep__never_reported_as_a_code_change(harness: Harness) -> None:
    """Before the refusal, the inner step took a position on the first execution and was
    skipped on replay (the outer step memoized), so the sleep's resumption reported that the
    function had changed. Now the first execution fails, naming the real mistake."""

    @harness.app.function("shifting", retries=0)
    def shifting(ctx: Context) -> None:
        ctx.step.run("outer", lambda: ctx.step.run("inner", lambda: 1))
        ctx.step.sleep("nap", timedelta(milliseconds=1))
        ctx.step.run("after", lambda: 3)

    run_id = harness.start("shifting")
    outcome = harness.step("shifting")
    if outcome.status == "suspended":  # the old behaviour: go on to the replay
        harness.make_due(run_id)
        outcome = harness.step("shifting")

    error = harness.run(run_id)["error"]
    assert error["code"] != "non_determinism", error["message"]
    assert (outcome.status, error["code"]) == ("failed", "nested_step")


# -- what the log says about a failing step ---------------------------------------------------


def test_retry__logged_at_warning_with_the_type_and_first_line(harness: Harness) -> None:
    @harness.app.function("flaky", retries=2, backoff=FAST)
    def flaky(ctx: Context) -> None:
        def body() -> None:
            raise ConnectionError("upstream refused the connection\nrequest id r-42, token t-9")

        ctx.step.run("call", body)

    harness.start("flaky")
    with structlog.testing.capture_logs() as lines:
        assert harness.step("flaky").status == "suspended"

    (retry,) = [line for line in lines if line["event"] == "step will retry"]
    assert (retry["log_level"], retry["error_type"], retry["step"]) == (
        "warning",
        "ConnectionError",
        "call",
    )
    assert retry["error"] == "upstream refused the connection"
    assert "t-9" not in json.dumps(lines, default=str)  # the rest of the message is a payload


class LostDelay(RetryAfterError):
    def __init__(self) -> None:  # forgets super().__init__: no `delay`
        Exception.__init__(self, "rate limited")


def test_retry_after_without_a_delay__retried_with_the_back_off(harness: Harness) -> None:
    @harness.app.function("limited", retries=1, backoff=FAST)
    def limited(ctx: Context) -> None:
        ctx.step.run("call", lambda: (_ for _ in ()).throw(LostDelay()))

    run_id = harness.start("limited")

    assert harness.step("limited").status == "suspended"
    row = harness.steps(run_id)["call"]
    assert (row.status, row.error["type"]) == ("retrying", "LostDelay")


def test_step_error_raised_with_non_json_contents__recorded(harness: Harness) -> None:
    @harness.app.function("odd-saga", retries=0)
    def odd_saga(ctx: Context) -> None:
        raise StepError("charge", {"type": "Declined", "at": datetime.now(UTC)})

    run_id = harness.start("odd-saga")

    assert harness.step("odd-saga").status == "failed"
    assert harness.run(run_id)["error"]["type"] == "StepError"


def test_nested_step_in_a_parallel_branch__names_that_branch(harness: Harness) -> None:
    slow_started = threading.Event()

    def slow() -> int:
        slow_started.set()
        time.sleep(0.3)  # keeps branch 0 running while branch 1 makes its mistake
        return 1

    @harness.app.function("fan-out", retries=0)
    def fan_out(ctx: Context) -> list[Any]:
        def nests() -> int:
            slow_started.wait(10)
            return ctx.step.run("inner", lambda: 2)

        return ctx.step.parallel("fan", [slow, nests])

    run_id = harness.start("fan-out")

    assert harness.step("fan-out").status == "failed"
    assert harness.run(run_id)["error"]["step"] == "fan[1]"
