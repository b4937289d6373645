"""`wait_for_any`: one step that ends once, with the first of several events or an invoked
run's end; replayed from its record; losing children cancelled."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from orchestrator import AsyncContext, Context, NonRetriableError, OnEvent, OnInvoke, StepError
from orchestrator.db import runs, waits
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.runtime.ingest import Ingester
from tests.conftest import eventually
from tests.db.executing import Harness
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)

ENTRIES = [OnEvent("pay/a", lookback="run"), OnEvent("pay/b", lookback="run", key="bee")]


@pytest.fixture
def ingester(db: Database) -> Iterator[Ingester]:
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    yield Ingester(db, direct, batch_size=100, max_event_bytes=4096, log=structlog.get_logger())
    direct.close()


def send(db: Database, event_id: str, name: str, data: str = "{}") -> None:
    sql(
        db,
        "INSERT INTO orchestrator.events (id, name, data) VALUES (:id, :name, CAST(:d AS jsonb))",
        id=event_id,
        name=name,
        d=data,
    )


def output(db: Database, run_id: str) -> Any:
    return sql(db, "SELECT output FROM orchestrator.runs WHERE id = CAST(:r AS uuid)", r=run_id)[0][
        0
    ]


def step_rows(db: Database, run_id: str) -> list[tuple[Any, ...]]:
    return sql(
        db,
        "SELECT step_id, kind, status, output, event_id FROM orchestrator.steps "
        "WHERE run_id = CAST(:r AS uuid) ORDER BY position",
        r=run_id,
    )


def racing(harness: Harness, entries: list[Any], timeout: float = 60) -> None:
    @harness.app.function("race")
    def race(ctx: Context) -> Any:
        won = ctx.step.wait_for_any("first", events=entries, timeout=timeout)
        ctx.step.sleep("nap", 0.001)  # the run is picked up again: the wait is replayed
        if won is None:
            return None
        value = won.value.id if isinstance(won.value, type(ctx.event)) else won.value
        return [won.index, won.key, value]


def test_wait_for_any__the_event_received_first_wins_and_is_replayed(harness: Harness) -> None:
    racing(harness, ENTRIES)
    run_id = harness.start("race")
    send(harness.db, "b1", "pay/b")
    send(harness.db, "a1", "pay/a")

    assert harness.step("race").status == "suspended"  # asleep after the race
    harness.make_due(run_id)
    assert harness.step("race").status == "completed"
    assert output(harness.db, run_id) == [1, "bee", "b1"]
    (first, _) = step_rows(harness.db, run_id)
    assert first[:3] == ("first", "wait_any", "completed")
    assert first[3]["index"] == 1 and first[3]["event"]["id"] == "b1" and first[4] == "b1"


def test_wait_for_any__resolved_by_the_ingest_once_when_both_arrive_in_one_batch(
    harness: Harness, ingester: Ingester
) -> None:
    racing(harness, [OnEvent("pay/a"), OnEvent("pay/b")])
    run_id = harness.start("race")
    assert harness.step("race").status == "suspended"
    assert len(sql(harness.db, "SELECT 1 FROM orchestrator.waits")) == 2  # one per entry
    send(harness.db, "b1", "pay/b")
    send(harness.db, "a1", "pay/a")
    assert ingester.tick() == 2

    assert sql(harness.db, "SELECT count(*) FROM orchestrator.waits") == [(0,)]
    assert harness.step("race").status == "suspended"
    harness.make_due(run_id)
    assert harness.step("race").status == "completed"
    assert output(harness.db, run_id) == [1, "pay/b", "b1"]


def test_wait_for_any__two_concurrent_resolutions_resolve_it_once(harness: Harness) -> None:
    """Two ingests, each with an event for another entry, resolve the step at once: the
    second waits for the run's lock, then finds the step resolved and writes nothing."""
    racing(harness, [OnEvent("pay/a"), OnEvent("pay/b")])
    run_id = harness.start("race")
    assert harness.step("race").status == "suspended"
    event_b = {"id": "b1", "name": "pay/b", "data": {}, "ts": ""}
    event_a = {"id": "a1", "name": "pay/a", "data": {}, "ts": ""}
    second: list[waits.Resolved] = []
    with harness.db.transaction() as first:
        assert waits.resolve(first, [waits.Resolution(run_id, "first", event_b, 1)]).woken

        def other() -> None:
            with harness.db.transaction() as conn:
                second.append(waits.resolve(conn, [waits.Resolution(run_id, "first", event_a)]))

        thread = threading.Thread(target=other)
        thread.start()
        eventually(lambda: lock_waiters(harness.db) > 0, what="the second resolution blocks")
    thread.join(10)

    assert second == [waits.Resolved([], [])]
    (row, *_) = step_rows(harness.db, run_id)
    assert row[3]["index"] == 1 and row[4] == "b1"


def lock_waiters(db: Database) -> int:
    """How many sessions of this database wait for a row lock."""
    (row,) = sql(
        db,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'",
    )
    return int(row[0])


def test_wait_for_any__an_event_beats_the_child_which_is_cancelled(
    harness: Harness, ingester: Ingester
) -> None:
    @harness.app.function("slow")
    def slow(ctx: Context) -> str:
        return "late"

    racing(harness, [OnInvoke("slow", data={"x": 1}), OnEvent("pay/a", key="paid")])
    run_id = harness.start("race")
    assert harness.step("race").status == "suspended"
    [(child, status)] = sql(
        harness.db,
        "SELECT id::text, status FROM orchestrator.runs WHERE parent_run_id = CAST(:r AS uuid)",
        r=run_id,
    )
    assert status == "queued"
    send(harness.db, "a1", "pay/a")
    ingester.tick()

    assert harness.run(child)["status"] == "cancelled"
    harness.make_due(run_id)
    harness.step("race")
    assert harness.step("race").status == "completed"
    assert output(harness.db, run_id) == [1, "paid", "a1"]


def test_wait_for_any__the_child_that_ends_first_wins_with_its_output(
    harness: Harness, ingester: Ingester
) -> None:
    @harness.app.function("quick")
    def quick(ctx: Context) -> dict[str, Any]:
        return {"got": ctx.event.data["x"]}

    racing(harness, [OnEvent("pay/a"), OnInvoke("quick", data={"x": 7})])
    run_id = harness.start("race")
    assert harness.step("race").status == "suspended"
    assert harness.step("quick").status == "completed"
    eventually(lambda: ingester.tick() >= 0 and harness.run(run_id)["status"] == "queued")

    harness.make_due(run_id)
    harness.step("race")
    assert harness.step("race").status == "completed"
    assert output(harness.db, run_id) == [1, "quick", {"got": 7}]


def test_wait_for_any__times_out_with_none_and_cancels_the_child(harness: Harness) -> None:
    @harness.app.function("never")
    def never(ctx: Context) -> None:
        return None

    racing(harness, [OnInvoke("never"), OnEvent("pay/a")], timeout=0)
    run_id = harness.start("race")
    assert harness.step("race").status == "suspended"
    harness.make_due(run_id)
    harness.step("race")  # the wait times out, then the nap
    harness.make_due(run_id)
    assert harness.step("race").status == "completed"

    assert output(harness.db, run_id) is None
    [(status,)] = sql(
        harness.db, "SELECT status FROM orchestrator.runs WHERE function_id = 'never'"
    )
    assert status == "cancelled"
    assert step_rows(harness.db, run_id)[0][3:] == (None, None)


def test_wait_for_any__in_an_async_function(harness: Harness) -> None:
    @harness.app.function("async-race")
    async def race(ctx: AsyncContext) -> Any:
        won = await ctx.step.wait_for_any("first", events=ENTRIES, timeout=60)
        return None if won is None else [won.index, won.key, won.value.id]

    run_id = harness.start("async-race")
    send(harness.db, "a1", "pay/a")
    assert harness.step("async-race").status == "completed"
    assert output(harness.db, run_id) == [0, "pay/a", "a1"]


@pytest.mark.parametrize(
    ("entries", "said"),
    [
        ([], "between 1 and 32 entries"),
        ("pay/a", "must be a list"),
        (["pay/a"], "entry 0 is str"),
        ([OnEvent("pay/a", lookback=-5)], "entry 0: lookback must be a finite duration"),
    ],
)
def test_wait_for_any__bad_entries_fail_the_run_naming_the_step(
    harness: Harness, entries: Any, said: str
) -> None:
    racing(harness, entries)
    run_id = harness.start("race")
    assert harness.step("race").status == "failed"
    error = harness.run(run_id)["error"]
    assert error["code"] == "invalid_step_option", error
    assert "wait_for_any 'first'" in error["message"] and said in error["message"], error


def test_wait_for_any__found_by_looking_back__cancels_a_child_an_earlier_attempt_started(
    harness: Harness,
) -> None:
    """An attempt started the child and lost its lease as it suspended (arranged in SQL: the
    child is there, the run's wait is not); the next attempt finds an event already received,
    and the child, which nothing awaits, is cancelled."""

    @harness.app.function("slow")
    def slow(ctx: Context) -> str:
        return "late"

    racing(harness, [OnInvoke("slow"), OnEvent("pay/a", lookback="run")])
    run_id = harness.start("race")
    assert harness.step("race").status == "suspended"
    sql(harness.db, "DELETE FROM orchestrator.waits")
    sql(harness.db, "DELETE FROM orchestrator.steps")
    sql(
        harness.db,
        "UPDATE orchestrator.runs SET status = 'queued', due_at = now() "
        "WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    send(harness.db, "a1", "pay/a")

    assert harness.step("race").status == "suspended"  # the race is over, the nap begins
    [(status,)] = sql(harness.db, "SELECT status FROM orchestrator.runs WHERE function_id = 'slow'")
    assert status == "cancelled"
    harness.make_due(run_id)
    assert harness.step("race").status == "completed"
    assert output(harness.db, run_id) == [1, "pay/a", "a1"]


def test_wait_for_any__a_failed_child_that_ends_first_raises_step_error(
    harness: Harness, ingester: Ingester
) -> None:
    @harness.app.function("broken")
    def broken(ctx: Context) -> None:
        raise NonRetriableError("no card")

    @harness.app.function("catches")
    def catches(ctx: Context) -> Any:
        try:
            ctx.step.wait_for_any("first", events=[OnInvoke("broken")], timeout=60)
        except StepError as error:
            return {"failed": error.step_id}
        return "no error"

    run_id = harness.start("catches")
    assert harness.step("catches").status == "suspended"
    assert harness.step("broken").status == "failed"
    eventually(lambda: ingester.tick() >= 0 and harness.run(run_id)["status"] == "queued")

    assert harness.step("catches").status == "completed"
    assert output(harness.db, run_id) == {"failed": "first"}
