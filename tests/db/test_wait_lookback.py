"""`wait_for_event(..., lookback=)`: a wait that also sees the events received before its step
began, skips those an earlier step of the run consumed, and replays what it recorded."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import structlog

from orchestrator import AsyncContext, Context
from orchestrator.db import runs, waits
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.runtime.ingest import Ingester
from tests.db.executing import Harness
from tests.db.helpers import execute as sql
from tests.db.plans import generic_plan

pytestmark = pytest.mark.timeout(60)

NAME = "test/approved"


@pytest.fixture
def ingester(db: Database) -> Iterator[Ingester]:
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    yield Ingester(db, direct, batch_size=100, max_event_bytes=4096, log=structlog.get_logger())
    direct.close()


def send(db: Database, event_id: str, *, name: str = NAME, ago: float = 0.0) -> None:
    """An event received `ago` seconds ago."""
    sql(
        db,
        "INSERT INTO orchestrator.events (id, name, data, received_at) "
        "VALUES (:id, :name, '{}', now() - make_interval(secs => :ago))",
        id=event_id,
        name=name,
        ago=ago,
    )


def output(db: Database, run_id: str) -> Any:
    return sql(db, "SELECT output FROM orchestrator.runs WHERE id = CAST(:r AS uuid)", r=run_id)[0][
        0
    ]


def consumed(db: Database, run_id: str) -> dict[str, str | None]:
    rows = sql(
        db,
        "SELECT step_id, event_id FROM orchestrator.steps WHERE run_id = CAST(:r AS uuid)",
        r=run_id,
    )
    return dict(rows)


def two_waits(harness: Harness, lookback: Any) -> None:
    @harness.app.function("twice")
    def twice(ctx: Context) -> list[str | None]:
        seen = []
        for step in ("first", "second"):
            got = ctx.step.wait_for_event(step, event=NAME, timeout=60, lookback=lookback)
            seen.append(got.id if got else None)
        return seen


def test_lookback__two_events_already_received_end_two_waits_in_order(harness: Harness) -> None:
    two_waits(harness, "run")
    run_id = harness.start("twice")
    send(harness.db, "e1")
    send(harness.db, "e2")

    assert harness.step("twice").status == "completed"
    assert output(harness.db, run_id) == ["e1", "e2"]  # e1 ended the first, never the second
    assert consumed(harness.db, run_id) == {"first": "e1", "second": "e2"}


def test_lookback__an_event_consumed_by_the_ingest_is_skipped_by_the_next_wait(
    harness: Harness, ingester: Ingester
) -> None:
    """The second event arrives before the first wait is resolved: the ingest resolves the
    first wait with e1, and the second wait, looking back, finds e2 (not e1)."""
    two_waits(harness, timedelta(minutes=5))
    run_id = harness.start("twice")
    assert harness.step("twice").status == "suspended"
    send(harness.db, "e1")
    send(harness.db, "e2")
    assert ingester.tick() == 2

    assert harness.step("twice").status == "completed"
    assert output(harness.db, run_id) == ["e1", "e2"]
    assert consumed(harness.db, run_id) == {"first": "e1", "second": "e2"}


def test_lookback__without_it_the_second_wait_waits_for_a_new_event(
    harness: Harness, ingester: Ingester
) -> None:
    two_waits(harness, None)
    run_id = harness.start("twice")
    assert harness.step("twice").status == "suspended"
    send(harness.db, "e1")
    send(harness.db, "e2")
    ingester.tick()

    assert harness.step("twice").status == "suspended"  # e2 came before the second wait began
    send(harness.db, "e3")
    ingester.tick()
    assert harness.step("twice").status == "completed"
    assert output(harness.db, run_id) == ["e1", "e3"]


@pytest.mark.parametrize(("lookback", "seen"), [(10, False), (60.0, True), ("run", False)])
def test_lookback__sees_events_received_within_its_window(
    harness: Harness, lookback: Any, seen: bool
) -> None:
    """An event received 30 s before the run was created: inside a 60 s window, outside a
    10 s one, and before the run (which is what `"run"` looks back to)."""

    @harness.app.function("once")
    def once(ctx: Context) -> str | None:
        got = ctx.step.wait_for_event("w", event=NAME, timeout=60, lookback=lookback)
        return got.id if got else None

    send(harness.db, "old", ago=30)
    run_id = harness.start("once")

    status = harness.step("once").status
    assert (status, output(harness.db, run_id)) == (
        ("completed", "old") if seen else ("suspended", None)
    )


def test_lookback_run__sees_an_event_received_after_the_run_began_before_the_step(
    harness: Harness,
) -> None:
    @harness.app.function("later")
    def later(ctx: Context) -> list[str | None]:
        ctx.step.run("before", lambda: None)  # began after `during` was received
        plain = ctx.step.wait_for_event("plain", event=NAME, timeout=0)
        back = ctx.step.wait_for_event("back", event=NAME, timeout=60, lookback="run")
        return [plain.id if plain else None, back.id if back else None]

    send(harness.db, "before-run", ago=30)
    run_id = harness.start("later")
    send(harness.db, "during")
    assert harness.step("later").status == "suspended"  # `plain` times out at once, when due
    harness.make_due(run_id)

    assert harness.step("later").status == "completed"
    assert output(harness.db, run_id) == [None, "during"]


def test_lookback__replay_returns_the_recorded_event(harness: Harness) -> None:
    @harness.app.function("replayed")
    def replayed(ctx: Context) -> str | None:
        got = ctx.step.wait_for_event("w", event=NAME, timeout=60, lookback="run")
        ctx.step.sleep("nap", timedelta(milliseconds=1))
        return got.id if got else None

    run_id = harness.start("replayed")
    send(harness.db, "e1")
    assert harness.step("replayed").status == "suspended"  # asleep
    sql(harness.db, "DELETE FROM orchestrator.events")
    send(harness.db, "e0")  # a matching event the first execution never saw
    harness.make_due(run_id)

    assert harness.step("replayed").status == "completed"
    assert output(harness.db, run_id) == "e1"


@pytest.mark.parametrize(
    ("lookback", "said"),
    [(-1, "zero or more"), ("yesterday", "str 'yesterday'"), (float("nan"), "finite")],
)
def test_lookback__a_bad_value_fails_the_run_naming_the_step(
    harness: Harness, lookback: Any, said: str
) -> None:
    @harness.app.function("bad")
    def bad(ctx: Context) -> None:
        ctx.step.wait_for_event("w", event=NAME, timeout=60, lookback=lookback)

    run_id = harness.start("bad")
    assert harness.step("bad").status == "failed"
    error = harness.run(run_id)["error"]
    assert error["code"] == "invalid_step_option", error
    assert "wait_for_event 'w'" in error["message"] and said in error["message"], error


def test_look_back__its_generic_plan_probes_the_name_and_consumed_indexes(db: Database) -> None:
    """A wait looking back over the whole run reads the events of its name by
    `events_name_received` and skips the consumed ones by `steps_event`, not by reading the
    run's steps or every event."""
    sql(
        db,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'other/name', '{}' FROM generate_series(1, 5000)",
    )
    sql(db, "INSERT INTO orchestrator.events (id, name) SELECT 'e' || n, :name "
        "FROM generate_series(1, 20) AS n", name=NAME)  # fmt: skip
    run_ids = runs_with_consumed_steps(db, 200, consumed=10)
    sql(db, "ANALYZE orchestrator.events")
    sql(db, "ANALYZE orchestrator.steps")
    n = len(run_ids)
    args = {
        "runs": run_ids,
        "names": [NAME] * n,
        "since": [datetime(2000, 1, 1, tzinfo=UTC)] * n,
        "paths": [None] * n,
        "values": ["null"] * n,
        "limit": 1000,
    }
    types = {"runs": "uuid[]", "names": "text[]", "since": "timestamptz[]", "paths": "text[]"}
    types |= {"values": "jsonb[]", "limit": "int"}
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        plan = generic_plan(conn, waits._LOOK_BACK, args, types)
        rows = conn.execute(waits._LOOK_BACK.replace("%(", "%(").replace(")b", ")s"), args)
        per_run = len(rows.fetchall()) // n
    assert "events_name_received" in plan and "steps_event" in plan, plan
    assert "Seq Scan" not in plan, plan
    assert per_run == 10  # 20 events of the name, 10 of them consumed by each run's steps


def runs_with_consumed_steps(db: Database, n: int, *, consumed: int) -> list[str]:
    """`n` runs, each with 50 steps of which `consumed` ended with events e1, e2, ..."""
    with db.transaction() as conn:
        ids = runs.create_many(conn, [runs.NewRun("f", [{}]) for _ in range(n)])
    sql(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, event_id) "
        "SELECT r, 's' || k, k, 'wait', 'completed', CASE WHEN k <= :c THEN 'e' || k END "
        "FROM unnest(CAST(:ids AS uuid[])) AS r, generate_series(1, 50) AS k",
        ids=ids,
        c=consumed,
    )
    return ids


def test_lookback__an_event_a_step_consumed_before_its_ingest_does_not_end_the_next_wait(
    harness: Harness, ingester: Ingester
) -> None:
    """The first wait finds e1 by looking back before the ingest has seen it; the second wait,
    stored looking back past e1, is not resolved by e1's ingest, only by a new event."""
    two_waits(harness, "run")
    run_id = harness.start("twice")
    send(harness.db, "e1")
    assert harness.step("twice").status == "suspended"  # e1 ended 'first'; 'second' waits
    assert consumed(harness.db, run_id) == {"first": "e1", "second": None}
    assert ingester.tick() == 1  # e1 reaches the ingest only now

    assert harness.run(run_id)["status"] == "waiting"
    send(harness.db, "e2")
    assert ingester.tick() == 1
    assert harness.step("twice").status == "completed"
    assert output(harness.db, run_id) == ["e1", "e2"]


def test_lookback__in_an_async_function(harness: Harness) -> None:
    @harness.app.function("async-twice")
    async def twice(ctx: AsyncContext) -> list[str | None]:
        seen = []
        for step in ("first", "second"):
            got = await ctx.step.wait_for_event(step, event=NAME, timeout=60, lookback="run")
            seen.append(got.id if got else None)
        return seen

    run_id = harness.start("async-twice")
    send(harness.db, "e1")
    send(harness.db, "e2")
    assert harness.step("async-twice").status == "completed"
    assert output(harness.db, run_id) == ["e1", "e2"]


def test_replay__a_wait_looks_back_to_when_the_step_before_it_began__as_it_did_first(
    harness: Harness,
) -> None:
    """A run interrupted between a step's checkpoint and its next wait replays the step and
    stores the wait again: the wait looks back to the step's recorded start, not to an
    estimate from when its checkpoint committed, so an event received in between (while the
    checkpoint was in flight) ends it as it would have the first time."""

    @harness.app.function("gap")
    def gap(ctx: Context) -> str | None:
        ctx.step.run("before", lambda: None)
        got = ctx.step.wait_for_event("w", event=NAME, timeout=60)
        return got.id if got else None

    run_id = harness.start("gap")
    # what the interrupted execution left: the step began 0.5 s ago, ran for 1 ms, and its
    # checkpoint committed 0.3 s ago; an event came 0.4 s ago, when the run had no wait
    sql(
        harness.db,
        "UPDATE orchestrator.runs SET created_at = now() - interval '1 second', attempts = 1, "
        "recoveries = 1 WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    sql(
        harness.db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt, "
        "output, duration_ms, started_at, created_at, updated_at) VALUES (CAST(:r AS uuid), "
        "'before', 0, 'run', 'completed', 1, 'null', 1, now() - interval '500 ms', "
        "now() - interval '300 ms', now() - interval '300 ms')",
        r=run_id,
    )
    send(harness.db, "meanwhile", ago=0.4)

    assert harness.step("gap").status == "completed"
    assert output(harness.db, run_id) == "meanwhile"


def test_steps_record_when_their_attempt_began(harness: Harness) -> None:
    """A step with a body records its start (at most its end less its duration); the
    branches of a parallel group record the group's; a failed attempt records its own."""
    tries: list[int] = []

    def flaky() -> str:
        tries.append(1)
        if len(tries) == 1:
            raise ValueError("once")
        return "ok"

    @harness.app.function("timed", retries=1)
    def timed(ctx: Context) -> Any:
        one = ctx.step.run("one", lambda: 1)
        pair = ctx.step.parallel("pair", [lambda: 2, lambda: 3])
        sent = ctx.step.send_event("tell", {"name": "test/told", "data": {}})
        return [one, pair, len(sent), ctx.step.run("flaky", flaky)]

    run_id = harness.start("timed")
    assert harness.step("timed").status == "suspended"  # flaky's retry is due later
    retrying = harness.steps(run_id)["flaky"]
    assert (retrying.status, retrying.started_at is not None) == ("retrying", True)
    harness.make_due(run_id)
    assert harness.step("timed").status == "completed"

    recorded = harness.steps(run_id)
    for row in recorded.values():
        assert row.started_at is not None, row
        assert row.started_at <= row.updated_at - timedelta(milliseconds=row.duration_ms or 0)
    branches = [row for sid, row in recorded.items() if sid.startswith("pair[")]
    assert len(branches) == 2 and branches[0].started_at == branches[1].started_at
    assert recorded["flaky"].started_at > retrying.started_at  # the attempt that completed
