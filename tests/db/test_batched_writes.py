"""A run's last step is written with its end: one write for a one-step run. Executed in process
with the worker's own `execute()` (tests/db/executing.py), sync and async alike; what was
written, and when, is read back with SQL (`now()` is the transaction's start, so two rows
written by one transaction carry the same time)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from orchestrator import Context
from orchestrator.context import AsyncContext
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)


def _written_together(harness: Harness, run_id: str) -> list[tuple[str, bool]]:
    """Each step, and whether it was written in the transaction that ended the run."""
    rows = sql(
        harness.db,
        "SELECT s.step_id, s.updated_at = r.finished_at FROM orchestrator.steps s "
        "JOIN orchestrator.runs r ON r.id = s.run_id WHERE r.id = CAST(:r AS uuid) "
        "ORDER BY s.position",
        r=run_id,
    )
    return [(row[0], row[1]) for row in rows]


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_one_step_run__its_step_and_its_end_are_one_write(harness: Harness, kind: str) -> None:
    def body() -> dict[str, int]:
        return {"n": 1}

    if kind == "sync":

        @harness.app.function("one")
        def one(ctx: Context) -> Any:
            return ctx.step.run("only", body)

    else:

        @harness.app.function("one")
        async def one_async(ctx: AsyncContext) -> Any:
            return await ctx.step.run("only", body)

    run_id = harness.start("one")
    assert harness.step("one").status == "completed"

    assert _written_together(harness, run_id) == [("only", True)]
    assert sql(harness.db, "SELECT status, output FROM orchestrator.runs") == [
        ("completed", {"n": 1})
    ]


def test_steps_before_the_last__are_durable_before_the_next_body_runs(harness: Harness) -> None:
    seen: dict[str, list[str]] = {}

    def look(name: str) -> str:
        # another connection: only what has committed is visible
        rows = sql(harness.db, "SELECT step_id FROM orchestrator.steps ORDER BY position")
        seen[name] = [row[0] for row in rows]
        return name

    @harness.app.function("three")
    def three(ctx: Context) -> list[str]:
        return [ctx.step.run(name, look, name) for name in ("a", "b", "c")]

    run_id = harness.start("three")
    assert harness.step("three").status == "completed"

    assert seen == {"a": [], "b": ["a"], "c": ["a", "b"]}
    assert _written_together(harness, run_id) == [("a", False), ("b", False), ("c", True)]


def test_a_failure_after_the_last_step__records_the_step_with_the_failure(
    harness: Harness,
) -> None:
    @harness.app.function("fails", retries=0)
    def fails(ctx: Context) -> None:
        ctx.step.run("only", lambda: 7)
        raise ValueError("after the step")

    run_id = harness.start("fails")
    assert harness.step("fails").status == "failed"

    assert _written_together(harness, run_id) == [("only", True)]
    assert harness.run(run_id)["error"]["message"] == "after the step"


def test_a_lost_lease__drops_the_unwritten_step_with_the_end(harness: Harness) -> None:
    def steal() -> int:
        # another daemon's rescue takes the run over while the body runs
        sql(harness.db, "UPDATE orchestrator.runs SET lease_token = gen_random_uuid()")
        return 1

    @harness.app.function("stolen")
    def stolen(ctx: Context) -> int:
        return ctx.step.run("only", steal) + 1

    run_id = harness.start("stolen")
    assert harness.step("stolen").status == "lease_lost"

    assert sql(harness.db, "SELECT count(*) FROM orchestrator.steps") == [(0,)]
    assert harness.run(run_id)["status"] == "running"  # left for the rescue, untouched


def test_a_sleep_after_a_step__commits_the_step_first(harness: Harness) -> None:
    @harness.app.function("nap")
    def nap(ctx: Context) -> None:
        ctx.step.run("before", lambda: 1)
        ctx.step.sleep("nap", 3600)

    run_id = harness.start("nap")
    assert harness.step("nap").status == "suspended"

    steps = sql(
        harness.db,
        "SELECT step_id, status FROM orchestrator.steps WHERE run_id = CAST(:r AS uuid) "
        "ORDER BY position",
        r=run_id,
    )
    assert steps == [("before", "completed"), ("nap", "sleeping")]


def test_steps_gathered_in_an_async_function__each_record_is_kept(harness: Harness) -> None:
    # 'a' ends first and its record waits; 'b' and 'c' end together while it is committed
    async def body(name: str, seconds: float) -> str:
        harness.count(name)
        await asyncio.sleep(seconds)
        return name

    @harness.app.function("gathered")
    async def gathered(ctx: AsyncContext) -> Any:
        out = await asyncio.gather(
            ctx.step.run("a", body, "a", 0.05),
            ctx.step.run("b", body, "b", 0.15),
            ctx.step.run("c", body, "c", 0.15),
        )
        await ctx.step.sleep("nap", 3600)
        return out

    run_id = harness.start("gathered")
    assert harness.step("gathered").status == "suspended"
    harness.make_due(run_id)
    sql(harness.db, "UPDATE orchestrator.steps SET wake_at = now() WHERE step_id = 'nap'")
    assert harness.step("gathered").status == "completed"

    assert harness.calls == {"a": 1, "b": 1, "c": 1}  # no body ran twice
    steps = sql(
        harness.db,
        "SELECT step_id FROM orchestrator.steps WHERE run_id = CAST(:r AS uuid) ORDER BY position",
        r=run_id,
    )
    assert [row[0] for row in steps] == ["a", "b", "c", "nap"]
