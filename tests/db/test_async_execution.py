"""`async def` functions, executed in process on a real database with the worker's own
`execute()` and the async face, one claimed run at a time (see test_execution_faults.Harness):
the step kinds awaited, plain bodies off the loop, parallel branches at once, cancellation that
interrupts an await, and sync/async mix-ups refused with a message that says what to write."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import Context
from orchestrator.context import AsyncContext
from orchestrator.db import runs
from orchestrator.functions import Backoff
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)

FAST = Backoff.of(base=0.01, max=0.01)


def test_async_function__async_and_plain_bodies__each_run_once_across_a_sleep(
    harness: Harness,
) -> None:
    where: dict[str, str] = {}

    async def fetch(n: int) -> int:
        harness.count("fetch")
        await asyncio.sleep(0)
        return n * 2

    def compute(n: int) -> int:
        harness.count("compute")
        where["compute"] = threading.current_thread().name
        return n + 1

    @harness.app.function("flow")
    async def flow(ctx: AsyncContext) -> dict[str, Any]:
        where["context"] = type(ctx).__name__
        a = await ctx.step.run("fetch", fetch, 20)
        b = await ctx.step.run("compute", compute, a)
        await ctx.step.sleep("nap", timedelta(milliseconds=1))
        c = await ctx.step.run("again", fetch, b)
        return {"a": a, "b": b, "c": c}

    run_id = harness.start("flow")
    assert harness.step("flow").status == "suspended"  # at the sleep
    harness.make_due(run_id)
    assert harness.step("flow").status == "completed"

    assert harness.calls == {"fetch": 2, "compute": 1}  # 'fetch' twice: two steps use it
    assert where["compute"] != threading.current_thread().name  # not on the loop's thread
    assert where["context"] == "AsyncContext"
    (output,) = sql(harness.db, "SELECT output FROM orchestrator.runs")[0]
    assert output == {"a": 40, "b": 41, "c": 82}
    recorded = harness.steps(run_id)
    assert [recorded[s].status for s in ("fetch", "compute", "nap", "again")] == ["completed"] * 4


def test_async_wait_for_event__an_event_received_before_the_wait__returned(
    harness: Harness,
) -> None:
    @harness.app.function("waiter")
    async def waiter(ctx: AsyncContext) -> Any:
        found = await ctx.step.wait_for_event("approval", event="test/approved", timeout=60)
        return found.data if found else None

    harness.start("waiter")
    sql(
        harness.db,
        "INSERT INTO orchestrator.events (name, data) "
        "VALUES ('test/approved', '{\"by\": \"ann\"}')",
    )
    assert harness.step("waiter").status == "completed"
    assert sql(harness.db, "SELECT output FROM orchestrator.runs")[0][0] == {"by": "ann"}


def test_async_parallel__branches_run_at_once__and_replay_in_list_order(harness: Harness) -> None:
    loop_ready = asyncio.Event
    plain_may_go = threading.Event()

    @harness.app.function("fan")
    async def fan(ctx: AsyncContext) -> list[Any]:
        ready = loop_ready()

        async def waits_for_b() -> str:
            harness.count("a")
            await asyncio.wait_for(ready.wait(), 10)  # only if 'b' runs meanwhile
            return "a"

        async def sets() -> str:
            harness.count("b")
            ready.set()
            plain_may_go.set()
            return "b"

        def plain() -> str:  # a thread: finishes only if 'b' runs on the loop meanwhile
            harness.count("c")
            if not plain_may_go.wait(10):
                raise TimeoutError("branch 'b' never ran")
            return "c"

        results = await ctx.step.parallel("fan", [waits_for_b, sets, ("plain", plain)])
        await ctx.step.sleep("nap", timedelta(milliseconds=1))
        return results

    run_id = harness.start("fan")
    assert harness.step("fan").status == "suspended"
    harness.make_due(run_id)
    assert harness.step("fan").status == "completed"  # the replay runs no branch again

    assert harness.calls == {"a": 1, "b": 1, "c": 1}
    assert sql(harness.db, "SELECT output FROM orchestrator.runs")[0][0] == ["a", "b", "c"]
    positions = {s.step_id: s.position for s in harness.steps(run_id).values()}
    assert positions == {"fan[0]": 0, "fan[1]": 1, "fan[plain]": 2, "nap": 3}


def test_async_step_failure__retried__then_step_error_fails_the_run(harness: Harness) -> None:
    async def flaky() -> None:
        harness.count("flaky")
        raise ConnectionError("upstream refused")

    @harness.app.function("flaky", retries=1, backoff=FAST)
    async def flaky_fn(ctx: AsyncContext) -> None:
        await ctx.step.run("call", flaky)

    run_id = harness.start("flaky")
    assert harness.step("flaky").status == "suspended"
    harness.make_due(run_id)
    assert harness.step("flaky").status == "failed"
    assert harness.calls == {"flaky": 2}
    run = harness.run(run_id)
    assert (run["error"]["type"], run["error"]["step"]) == ("ConnectionError", "call")


def cancel_while_in_body(harness: Harness, function_id: str, started: Any) -> Any:
    """Execute the run on a loop; once its body has started, cancel it (as `app.cancel`
    does) and tell its execution (as the worker is told)."""

    async def main() -> Any:
        task = harness.task(function_id)
        face = harness.async_face()
        face_ready = asyncio.Event()

        async def run() -> Any:
            face_ready.set()
            return await harness.execute(task, face)

        running = asyncio.create_task(run())
        await face_ready.wait()
        await asyncio.get_running_loop().run_in_executor(None, started.wait, 10)
        with harness.db.transaction() as conn:
            runs.cancel(conn, [task.run_id], reason="by the test")
        harness.cancelled.mark([task.lease_token])
        face.cancel()
        return await running

    return asyncio.run(main())


def test_async_cancel__interrupts_the_await_of_an_async_body_at_once(harness: Harness) -> None:
    started = threading.Event()
    seen: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    @harness.app.function("long")
    async def long(ctx: AsyncContext) -> None:
        await ctx.step.run("wait", forever)
        harness.count("after")

    run_id = harness.start("long")
    assert cancel_while_in_body(harness, "long", started).status == "stopped"
    assert seen == ["cancelled"]
    assert "after" not in harness.calls
    run = harness.run(run_id)
    assert (run["status"], run["error"]["code"]) == ("cancelled", "cancelled")
    assert run["error"]["message"] == "by the test"
    assert "wait" not in harness.steps(run_id)  # nothing recorded for the interrupted step


def test_async_cancel__a_plain_body_blocked_in_its_thread__the_run_stops_at_once(
    harness: Harness,
) -> None:
    started, release, returned = threading.Event(), threading.Event(), threading.Event()

    def blocked() -> None:
        started.set()
        release.wait(30)
        returned.set()

    @harness.app.function("blocked")
    async def blocked_fn(ctx: AsyncContext) -> None:
        await ctx.step.run("block", blocked)

    run_id = harness.start("blocked")
    try:
        assert cancel_while_in_body(harness, "blocked", started).status == "stopped"
        assert not returned.is_set()  # the body's thread is still blocked: the run did not wait
    finally:
        release.set()
    assert harness.run(run_id)["status"] == "cancelled"


def test_async_nested_step__fails_the_run(harness: Harness) -> None:
    @harness.app.function("nested", retries=0)
    async def nested(ctx: AsyncContext) -> None:
        async def outer() -> int:
            return await ctx.step.run("inner", lambda: 1)

        await ctx.step.run("outer", outer)

    run_id = harness.start("nested")
    assert harness.step("nested").status == "failed"
    error = harness.run(run_id)["error"]
    assert (error["code"], error["step"]) == ("nested_step", "outer")


def test_async_lambda_returning_a_coroutine__awaited_in_an_async_function(
    harness: Harness,
) -> None:
    async def double(n: int) -> int:
        return n * 2

    @harness.app.function("lambdas")
    async def lambdas(ctx: AsyncContext) -> int:
        return await ctx.step.run("double", lambda: double(21))

    harness.start("lambdas")
    assert harness.step("lambdas").status == "completed"
    assert sql(harness.db, "SELECT output FROM orchestrator.runs")[0][0] == 42


# -- sync and async mixed up, found when the step runs ------------------------------------


async def fetch_async() -> int:
    return 1


def test_plain_function__async_body_chosen_at_run_time__fails_with_what_to_write(
    harness: Harness,
) -> None:
    bodies = {"fetch": fetch_async}

    @harness.app.function("picks", retries=3)
    def picks(ctx: Context) -> None:
        ctx.step.run("fetch", bodies["fetch"])

    run_id = harness.start("picks")
    assert harness.step("picks").status == "failed"  # at once: retrying cannot help
    error = harness.run(run_id)["error"]
    assert error["code"] == "async_misuse"
    assert error["message"] == (
        "step 'fetch': its body fetch_async is an async function, but function 'picks' is a "
        "plain def, which cannot await it. Make 'picks' an async def function and write "
        "`await ctx.step.run(...)`, or give the step a plain function as its body"
    )
    assert harness.steps(run_id) == {}


def test_plain_function__lambda_returning_a_coroutine__fails_with_what_to_write(
    harness: Harness,
) -> None:
    @harness.app.function("wraps")
    def wraps(ctx: Context) -> None:
        ctx.step.run("fetch", lambda: fetch_async())  # noqa: PLW0108 -- the mistake tested

    run_id = harness.start("wraps")
    assert harness.step("wraps").status == "failed"
    error = harness.run(run_id)["error"]
    assert error["code"] == "async_misuse"
    assert error["message"].startswith(
        "step 'fetch': its body returned a coroutine (a lambda or a wrapper around an async "
        "function?), but function 'wraps' is a plain def"
    )


def test_plain_callable_returning_a_coroutine__fails_the_run_with_what_to_write(
    harness: Harness,
) -> None:
    async def real(ctx: AsyncContext) -> int:
        return 1

    harness.app.function("wrapper")(lambda ctx: real(ctx))  # noqa: PLW0108 -- as tested
    run_id = harness.start("wrapper")
    assert harness.step("wrapper").status == "failed"
    error = harness.run(run_id)["error"]
    assert error["code"] == "async_misuse"
    assert error["message"] == (
        "function 'wrapper' returned a coroutine: it is a plain callable around an async "
        "function (a lambda, a partial or a wrapper?), which nothing awaits. Register the "
        "async def function itself, or make the wrapper async def"
    )


# -- a CancelledError the engine did not cause is the body's failure ------------------------


@pytest.mark.parametrize("kind", ["plain", "async"])
def test_cancelled_error_raised_by_a_body__a_failed_attempt_retried(
    harness: Harness, kind: str
) -> None:
    def plain_body() -> None:
        harness.count("body")
        raise asyncio.CancelledError()  # e.g. asyncio.run() over a task someone cancelled

    async def async_body() -> None:
        harness.count("body")
        raise asyncio.CancelledError()  # e.g. awaiting a task someone cancelled

    if kind == "plain":

        @harness.app.function("cancelling", retries=1, backoff=FAST)
        def plain_fn(ctx: Context) -> None:
            ctx.step.run("call", plain_body)

    else:

        @harness.app.function("cancelling", retries=1, backoff=FAST)
        async def async_fn(ctx: AsyncContext) -> None:
            await ctx.step.run("call", async_body)

    run_id = harness.start("cancelling")
    assert harness.step("cancelling").status == "suspended"  # a retry, not a give-back
    harness.make_due(run_id)
    assert harness.step("cancelling").status == "failed"
    assert harness.calls == {"body": 2}
    run = harness.run(run_id)
    assert (run["status"], run["error"]["type"], run["error"]["step"]) == (
        "failed",
        "CancelledError",
        "call",
    )


def test_steps_from_gathered_tasks__refused_with_what_to_write(harness: Harness) -> None:
    async def slow(i: int) -> int:
        await asyncio.sleep(0.05)
        return i

    @harness.app.function("gathered", retries=0)
    async def gathered(ctx: AsyncContext) -> list[Any]:
        async def one(i: int) -> int:
            return await ctx.step.run(f"s{i}", slow, i)

        return list(await asyncio.gather(one(0), one(1)))

    run_id = harness.start("gathered")
    assert harness.step("gathered").status == "failed"
    error = harness.run(run_id)["error"]
    assert (error["code"], error["step"]) == ("concurrent_step", "s0")
    assert error["message"] == (
        "ctx.step.run('s1') was called while step 's0' was running, from another task "
        "(asyncio.gather or create_task?); the steps of a run follow one another, or their "
        "order would depend on timing and change on replay. Await them one after another, or "
        "run bodies at once with ctx.step.parallel"
    )
