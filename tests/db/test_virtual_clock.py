"""The virtual clock (db/clock.py): with a time set, every path that judges or records time
by the database follows it, and nothing waits for the real time to pass."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog

from orchestrator import (
    Batch,
    Context,
    Debounce,
    Orchestrator,
    RateLimit,
    Timeouts,
    cron,
    event,
)
from orchestrator.db import clock, events, functions, retention, runs
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.functions import FunctionDef
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.ingest import Ingester
from orchestrator.runtime.upkeep import Upkeep
from tests.db.executing import Harness
from tests.db.helpers import claim, queue_runs
from tests.db.helpers import execute as sql

pytestmark = pytest.mark.timeout(60)

LOG = structlog.get_logger()
OWNER = "00000000-0000-0000-0000-00000000000a"
# Far from the real time, so that nothing here can pass by the real clock.
T0 = datetime(2031, 3, 4, 2, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def virtual_clock() -> Iterator[None]:
    clock.set(T0)
    yield
    clock.reset()


def _run(db: Database, run_id: str, *columns: str) -> tuple[Any, ...]:
    (row,) = sql(
        db,
        f"SELECT {', '.join(columns)} FROM orchestrator.runs WHERE id = CAST(:r AS uuid)",
        r=run_id,
    )
    return tuple(row)


def _register(db: Database, registry: dict[str, FunctionDef]) -> None:
    with db.transaction() as conn:
        for fid, fdef in registry.items():
            desc = fdef.describe()
            functions.upsert(conn, fid, triggers=desc.pop("triggers"), options=desc, version="1")


def _send(db: Database, name: str, data: dict[str, Any]) -> None:
    with db.transaction() as conn:
        events.insert(conn, name, json.dumps(data), event_id=None, ts=None)


# -- claims, leases, rescue ------------------------------------------------------------------


def test_claim__a_run_due_in_the_virtual_future_is_claimed_once_the_clock_passes_it(
    db: Database,
) -> None:
    [run_id] = queue_runs(db, 1)
    assert _run(db, run_id, "created_at", "due_at") == (T0, T0)  # recorded at the virtual time
    sql(db, "UPDATE orchestrator.runs SET due_at = due_at + interval '1 hour'")
    assert claim(db, OWNER) == []
    clock.advance(timedelta(minutes=59))
    assert claim(db, OWNER) == []

    at = clock.advance(timedelta(minutes=2))
    [claimed] = claim(db, OWNER, lease=30.0)
    assert (claimed.id, claimed.claimed_at) == (run_id, at)
    started, expires = _run(db, run_id, "started_at", "lease_expires_at")
    assert (started, expires) == (at, at + timedelta(seconds=30))


def test_lease__expires_and_is_rescued_by_the_virtual_clock(db: Database) -> None:
    [run_id] = queue_runs(db, 1)
    claim(db, OWNER, lease=30.0)
    renewed_at = clock.advance(timedelta(seconds=20))
    with db.transaction() as conn:
        held = runs.renew_leases(conn, owner=OWNER, run_ids=[run_id], lease_seconds=30.0)
    assert held == {run_id}
    assert _run(db, run_id, "lease_expires_at") == (renewed_at + timedelta(seconds=30),)

    clock.advance(timedelta(seconds=29))
    with db.transaction() as conn:
        assert runs.rescue_expired(conn, max_recoveries=5) == []
    at = clock.advance(timedelta(seconds=2))
    with db.transaction() as conn:
        [rescued] = runs.rescue_expired(conn, max_recoveries=5)
    assert (rescued.id, rescued.status) == (run_id, "queued")
    assert _run(db, run_id, "recoveries", "updated_at", "due_at <= updated_at") == (1, at, True)


# -- sleeps and waits, through the executor -----------------------------------------------------


def test_sleep__ends_when_the_virtual_clock_passes_it(harness: Harness) -> None:
    h = harness

    @h.app.function("sleeper")
    def sleeper(ctx: Context) -> str:
        ctx.step.sleep("nap", timedelta(days=1))
        return "rested"

    run_id = h.start("sleeper")
    assert h.step("sleeper").status == "suspended"
    (due,) = _run(h.db, run_id, "due_at")
    assert T0 + timedelta(days=1) <= due < T0 + timedelta(days=1, minutes=1)
    clock.advance(timedelta(hours=23, minutes=59))
    assert claim(h.db, OWNER, fids=("sleeper",)) == []

    clock.advance(timedelta(minutes=2))
    assert h.step("sleeper").status == "completed"
    assert _run(h.db, run_id, "output") == ("rested",)


def test_wait_for_event__times_out_by_the_virtual_clock(harness: Harness) -> None:
    h = harness

    @h.app.function("payer")
    def payer(ctx: Context) -> Any:
        return {"paid": ctx.step.wait_for_event("pay", event="paid", timeout=timedelta(hours=1))}

    run_id = h.start("payer")
    assert h.step("payer").status == "suspended"
    assert _run(h.db, run_id, "status") == ("waiting",)
    (wait_made,) = sql(h.db, "SELECT created_at FROM orchestrator.waits")[0]
    assert T0 <= wait_made < T0 + timedelta(minutes=1)
    assert claim(h.db, OWNER, fids=("payer",)) == []

    clock.advance(timedelta(hours=1, minutes=1))
    assert h.step("payer").status == "completed"
    assert _run(h.db, run_id, "output") == ({"paid": None},)


def test_wait_for_signal__times_out_by_the_virtual_clock(harness: Harness, db: Database) -> None:
    h = harness
    h.app.bind(db.url)

    @h.app.function("patient")
    def patient(ctx: Context) -> Any:
        return {"got": ctx.step.wait_for_signal("go", "go", timeout=timedelta(hours=1))}

    try:
        run_id = h.start("patient")
        assert h.step("patient").status == "suspended"
        assert claim(h.db, OWNER, fids=("patient",)) == []
        clock.advance(timedelta(hours=1, minutes=1))
        assert h.step("patient").status == "completed"
        assert _run(h.db, run_id, "output") == ({"got": None},)
    finally:
        h.app.close()


def test_signal__wakes_its_run_at_the_virtual_time_even_behind_the_real_one(
    harness: Harness, db: Database
) -> None:
    h = harness
    h.app.bind(db.url)
    past = clock.set(datetime(2020, 1, 1, tzinfo=UTC))  # a test pinning a date gone by

    @h.app.function("told")
    def told(ctx: Context) -> Any:
        return {"got": ctx.step.wait_for_signal("go", "go", timeout=timedelta(days=1))}

    try:
        run_id = h.start("told")
        assert h.step("told").status == "suspended"
        h.app.signal(run_id, "go", {"k": 1})
        assert _run(h.db, run_id, "status", "due_at") == ("queued", past)
        assert sql(h.db, "SELECT sent_at FROM orchestrator.signals") == [(past,)]
        assert h.step("told").status == "completed"
        assert _run(h.db, run_id, "output") == ({"got": {"k": 1}},)
    finally:
        h.app.close()


# -- cron, retention, timeouts ------------------------------------------------------------------


def test_cron__a_tick_fires_when_the_virtual_clock_reaches_it(db: Database) -> None:
    app = Orchestrator(database_url="postgresql://unused/x")
    app.function("nightly", trigger=cron("0 3 * * *"))(lambda ctx: None)
    _register(db, app.functions)
    scheduler = CronScheduler(db, app.functions, LOG)
    scheduler.register()  # by the virtual now (02:00): next at 03:00 that day
    assert sql(db, "SELECT next_fire_at FROM orchestrator.schedules") == [(T0.replace(hour=3),)]
    clock.set(T0.replace(hour=2, minute=59, second=59))
    assert scheduler.tick() == 0

    clock.set(T0.replace(hour=3, second=1))
    assert scheduler.tick() == 1
    [(scheduled, created)] = sql(
        db, "SELECT events->0->'data'->>'scheduled_at', created_at FROM orchestrator.runs"
    )
    assert (scheduled, created) == (T0.replace(hour=3).isoformat(), T0.replace(hour=3, second=1))
    assert sql(db, "SELECT next_fire_at, last_fired_at FROM orchestrator.schedules") == [
        (T0.replace(hour=3) + timedelta(days=1), T0.replace(hour=3))
    ]


def test_retention__deletes_by_virtual_age(db: Database) -> None:
    [run_id] = queue_runs(db, 1)
    sql(
        db,
        "UPDATE orchestrator.runs SET status = 'completed', finished_at = :t",
        t=T0,
    )

    def delete() -> int:
        with db.transaction() as conn:
            batch = retention.delete_runs(
                conn, completed_age=7 * 86400.0, failed_age=None, after=None, limit=10
            )
        return batch.runs

    clock.advance(timedelta(days=6, hours=23))
    assert delete() == 0
    clock.advance(timedelta(hours=2))
    assert delete() == 1
    assert sql(db, "SELECT id FROM orchestrator.runs WHERE id = CAST(:r AS uuid)", r=run_id) == []


def test_timeouts__start_timeout_fires_by_the_virtual_clock(db: Database) -> None:
    app = Orchestrator(database_url="postgresql://unused/x")
    app.function("timed", trigger=event("t"), timeouts=Timeouts(start=60))(lambda ctx: None)
    [run_id] = queue_runs(db, 1, "timed")
    upkeep = Upkeep(db, app.functions, LOG)
    clock.advance(timedelta(seconds=59))
    assert upkeep.tick() == []

    at = clock.advance(timedelta(seconds=2))
    [cancelled] = upkeep.tick()
    assert cancelled.id == run_id
    assert _run(db, run_id, "status", "finished_at") == ("cancelled", at)


# -- flow control: a rate limit's window, debounce and batch windows -------------------------------


def _flow_app() -> dict[str, FunctionDef]:
    app = Orchestrator(database_url="postgresql://unused/x")
    noop = lambda ctx: None  # noqa: E731 (bodies never run here)
    app.function("rated", trigger=event("r"), rate_limit=RateLimit(2, timedelta(minutes=1)))(noop)
    app.function("calm", trigger=event("d"), debounce=Debounce(timedelta(minutes=5)))(noop)
    app.function("batched", trigger=event("b"), batch_events=Batch(100, timedelta(hours=1)))(noop)
    return app.functions


@pytest.fixture
def flow_daemon(db: Database) -> Iterator[tuple[Ingester, FlowClaimer]]:
    registry = _flow_app()
    _register(db, registry)
    direct = Direct(db.url, application_name="test-clock", settings=runs.CLAIM_SETTINGS)
    ingester = Ingester(db, direct, batch_size=100, max_event_bytes=1024, log=LOG)
    claimer = FlowClaimer(
        direct, registry, owner=OWNER, lease_seconds=30, poll_interval=0.5, log=LOG
    )
    yield ingester, claimer
    direct.close()


def _statuses(db: Database, fid: str) -> dict[str, int]:
    rows = sql(
        db,
        "SELECT status, count(*) FROM orchestrator.runs WHERE function_id = :f GROUP BY status",
        f=fid,
    )
    return {row[0]: int(row[1]) for row in rows}


def _claim(claimer: FlowClaimer) -> list[runs.ClaimedRun]:
    claimer.poke()
    return claimer.claim({False: 10})


def test_rate_limit__the_window_passes_by_the_virtual_clock(
    db: Database, flow_daemon: tuple[Ingester, FlowClaimer]
) -> None:
    ingester, _ = flow_daemon
    for i in range(3):
        _send(db, "r", {"i": i})
    ingester.tick()
    assert _statuses(db, "rated") == {"queued": 2, "skipped": 1}
    clock.advance(timedelta(seconds=20))
    _send(db, "r", {"i": 3})
    ingester.tick()
    assert _statuses(db, "rated") == {"queued": 2, "skipped": 2}  # still within the minute

    clock.advance(timedelta(minutes=1))
    _send(db, "r", {"i": 4})
    ingester.tick()
    assert _statuses(db, "rated") == {"queued": 3, "skipped": 2}


def test_debounce__the_window_passes_by_the_virtual_clock(
    db: Database, flow_daemon: tuple[Ingester, FlowClaimer]
) -> None:
    ingester, claimer = flow_daemon
    _send(db, "d", {"n": 1})
    ingester.tick()
    clock.advance(timedelta(minutes=4))
    _send(db, "d", {"n": 2})  # the burst goes on: the window starts again
    ingester.tick()
    assert _claim(claimer) == []
    clock.advance(timedelta(minutes=4))
    assert _claim(claimer) == []

    clock.advance(timedelta(minutes=2))
    [claimed] = _claim(claimer)
    assert [e["data"] for e in claimed.events] == [{"n": 2}]  # the burst's last event


def test_batch__the_timeout_passes_by_the_virtual_clock(
    db: Database, flow_daemon: tuple[Ingester, FlowClaimer]
) -> None:
    ingester, claimer = flow_daemon
    for n in range(3):
        _send(db, "b", {"n": n})
    ingester.tick()
    assert _claim(claimer) == []
    clock.advance(timedelta(minutes=59))
    assert _claim(claimer) == []

    clock.advance(timedelta(minutes=2))
    [claimed] = _claim(claimer)
    assert [e["data"]["n"] for e in claimed.events] == [0, 1, 2]


# -- what the engine records --------------------------------------------------------------------


def test_events__sent_and_ingested_at_the_virtual_time(
    db: Database, flow_daemon: tuple[Ingester, FlowClaimer]
) -> None:
    ingester, _ = flow_daemon
    event_id = str(uuid.uuid4())
    with db.transaction() as conn:
        events.insert(conn, "r", "{}", event_id=event_id, ts=None)
    at = clock.advance(timedelta(seconds=5))
    ingester.tick()
    [(ts, received, ingested)] = sql(
        db,
        "SELECT ts, received_at, ingested_at FROM orchestrator.events WHERE id = :e",
        e=event_id,
    )
    assert (ts, received, ingested) == (T0, T0, at)
