"""Run state: `ctx.set_state` publishes keys that `app.run_state` and `runs.state` read, written
with the run's next write (a checkpoint, a suspension, its end), never on its own and never
ahead of the steps before it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from orchestrator import Context
from orchestrator.context import AsyncContext
from orchestrator.db.database import Database
from orchestrator.errors import (
    InvalidStateError,
    PayloadError,
    RunNotFoundError,
    StateTooLargeError,
)
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def h(harness: Harness, db: Database) -> Iterator[Harness]:
    harness.app.bind(db.url)
    yield harness
    harness.app.close()
    harness.store.close()


def stored(h: Harness) -> tuple[dict[str, Any], list[str]]:
    """The run's state and its completed steps, as another connection sees them now."""
    (state,) = sql(h.db, "SELECT state FROM orchestrator.runs")[0]
    done = sql(h.db, "SELECT step_id FROM orchestrator.steps WHERE status = 'completed'")
    return state, sorted(row[0] for row in done)


def test_set_state__written_with_the_checkpoint_and_not_before(h: Harness) -> None:
    seen: dict[str, Any] = {}

    def look(name: str) -> None:
        seen[name] = stored(h)

    @h.app.function("progress")
    def progress(ctx: Context) -> str:
        ctx.set_state("progress", 1)
        ctx.step.run("a", look, "in a")  # nothing written yet: no write since
        ctx.set_state("progress", 2)
        ctx.set_state("phase", "b")
        ctx.step.run("b", look, "in b")  # written with a's checkpoint, before b ran
        ctx.set_state("progress", 3)
        ctx.step.sleep("nap", timedelta(hours=1))  # written with the suspension
        ctx.set_state("done", True)  # after the last step: written with the finish
        return "ok"

    run_id = h.start("progress")
    assert h.step("progress").status == "suspended"
    assert seen["in a"] == ({}, [])
    assert seen["in b"] == ({"progress": 2, "phase": "b"}, ["a"])
    assert stored(h) == ({"progress": 3, "phase": "b"}, ["a", "b"])
    assert h.app.run_state(run_id) == {"progress": 3, "phase": "b"}

    sql(h.db, "UPDATE orchestrator.steps SET wake_at = now() WHERE step_id = 'nap'")
    h.make_due(run_id)
    assert h.step("progress").status == "completed"
    assert stored(h)[0] == {"progress": 3, "phase": "b", "done": True}


def test_set_state__lost_with_the_write_that_carried_it_and_repeated_by_the_replay(
    h: Harness,
) -> None:
    """A write lost with the lease (a rescue took the run) loses the state with it: the
    state never runs ahead of the steps; the next execution repeats the calls."""

    def rescued() -> None:  # as if another daemon took the run over meanwhile
        sql(h.db, "UPDATE orchestrator.runs SET lease_token = gen_random_uuid()")

    @h.app.function("lossy")
    def lossy(ctx: Context) -> str:
        ctx.step.run("a", lambda: None)
        ctx.set_state("after", "a")
        ctx.step.run("b", rescued if ctx.attempt == 1 else lambda: None)
        ctx.set_state("after", "b")
        ctx.step.run("c", lambda: None)
        return "ok"

    run_id = h.start("lossy")
    assert h.step("lossy").status == "lease_lost"
    assert stored(h) == ({"after": "a"}, ["a"])  # b's checkpoint and its state were lost

    sql(h.db, "UPDATE orchestrator.runs SET status = 'queued', due_at = now()")
    assert h.step("lossy").status == "completed"
    assert stored(h) == ({"after": "b"}, ["a", "b", "c"])
    assert h.app.run_state(run_id) == {"after": "b"}


def test_set_state__async_function_and_async_client(h: Harness) -> None:
    @h.app.function("async-progress")
    async def flow(ctx: AsyncContext) -> None:
        ctx.set_state("phase", "waiting")
        await ctx.step.wait_for_signal("go", "go", timeout=None)
        ctx.set_state("phase", "done")

    run_id = h.start("async-progress")
    assert h.step("async-progress").status == "suspended"

    async def client() -> dict[str, Any]:
        try:
            state = await h.app.run_state_async(run_id)
            await h.app.signal_async(run_id, "go", {"k": 1})
            return state
        finally:
            await h.app.aclose()

    assert asyncio.run(client()) == {"phase": "waiting"}  # written with the wait
    assert h.step("async-progress").status == "completed"
    assert h.app.run_state(run_id) == {"phase": "done"}


def test_set_state__bad_key_value_or_size_gets_a_typed_error_naming_the_key(h: Harness) -> None:
    errors: dict[str, tuple[str, str]] = {}

    @h.app.function("bad-state")
    def bad(ctx: Context) -> None:
        ctx.set_state("small", 1)
        cases: list[tuple[Any, Any]] = [
            ("big", "x" * 70_000),
            ("odd", {1, 2}),
            ("", 1),
        ]
        for key, value in cases:
            try:
                ctx.set_state(key, value)
            except (StateTooLargeError, PayloadError, InvalidStateError) as exc:
                errors[key] = (exc.code, str(exc))
        ctx.step.run("s", lambda: None)

    h.start("bad-state")
    assert h.step("bad-state").status == "completed"
    assert errors["big"][0] == "state_too_large" and "'big'" in errors["big"][1]
    assert errors["odd"][0] == "payload_not_json" and "'odd'" in errors["odd"][1]
    assert errors[""][0] == "invalid_state"
    assert stored(h)[0] == {"small": 1}  # the refused keys left nothing behind


def test_run_state__unknown_run(h: Harness) -> None:
    with pytest.raises(RunNotFoundError):
        h.app.run_state("00000000-0000-0000-0000-000000000000")
