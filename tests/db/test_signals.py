"""Signals to one run: `app.signal` (and a plain INSERT), `ctx.step.wait_for_signal`, the
take that consumes a signal and records its step in one fenced transaction, and the lock
protocol with the sender's trigger that makes it race-free."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import errors as pg_errors

from orchestrator import Context
from orchestrator.context import AsyncContext
from orchestrator.db import signals
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.errors import (
    InvalidSignalError,
    PayloadError,
    PayloadTooLargeError,
    RunFinishedError,
    RunNotFoundError,
)
from tests.db.executing import Harness
from tests.db.helpers import claim, wait_until_blocked
from tests.db.helpers import execute as sql
from tests.db.plans import generic_plan

pytestmark = pytest.mark.timeout(60)

FOREVER = datetime(9999, 12, 31, tzinfo=UTC)


@pytest.fixture
def app_harness(harness: Harness, db: Database) -> Iterator[Harness]:
    harness.app.bind(db.url)
    yield harness
    harness.app.close()
    harness.store.close()


def consumed(db: Database, run_id: str) -> list[tuple[Any, ...]]:
    return sql(
        db,
        "SELECT data, consumed_by FROM orchestrator.signals WHERE run_id = CAST(:r AS uuid) "
        "ORDER BY id",
        r=run_id,
    )


def test_wait_for_signal__a_signal_sent_before_the_wait_is_taken_by_it(
    app_harness: Harness,
) -> None:
    h = app_harness

    @h.app.function("approve")
    def approve(ctx: Context) -> Any:
        return ctx.step.wait_for_signal("approval", "approved", timeout=None)

    run_id = h.start("approve")
    signal_id = h.app.signal(run_id, "approved", {"by": "ann"})
    assert isinstance(signal_id, int)
    assert h.step("approve").status == "completed"
    (output,) = sql(h.db, "SELECT output FROM orchestrator.runs")[0]
    assert output == {"by": "ann"}
    assert consumed(h.db, run_id) == [({"by": "ann"}, "approval")]
    assert h.steps(run_id)["approval"].kind == "signal"


def test_wait_for_signal__takes_signals_in_order_of_sending_each_once(
    app_harness: Harness,
) -> None:
    h = app_harness

    @h.app.function("collect")
    def collect(ctx: Context) -> Any:
        return [ctx.step.wait_for_signal("next", "item", timeout=0)["n"] for _ in range(3)]

    run_id = h.start("collect")
    for n in range(4):
        h.app.signal(run_id, "item", {"n": n})
    h.app.signal(run_id, "other", {"n": 99})  # another name: not taken
    assert h.step("collect").status == "completed"
    (output,) = sql(h.db, "SELECT output FROM orchestrator.runs")[0]
    assert output == [0, 1, 2]
    assert consumed(h.db, run_id) == [
        ({"n": 0}, "next"),
        ({"n": 1}, "next#1"),
        ({"n": 2}, "next#2"),
        ({"n": 3}, None),
        ({"n": 99}, None),
    ]


def test_wait_for_signal__an_insert_wakes_the_waiting_run(app_harness: Harness) -> None:
    h = app_harness

    @h.app.function("waiter")
    async def waiter(ctx: AsyncContext) -> Any:
        got = await ctx.step.wait_for_signal("go", "go", timeout=timedelta(hours=1))
        return {"got": got}

    run_id = h.start("waiter")
    assert h.step("waiter").status == "suspended"
    [(status, due)] = sql(h.db, "SELECT status, due_at FROM orchestrator.runs")
    assert status == "waiting" and due > datetime.now(UTC) + timedelta(minutes=59)
    step = h.steps(run_id)["go"]
    assert (step.status, step.kind) == ("waiting", "signal")

    sql(
        h.db,
        "INSERT INTO orchestrator.signals (run_id, name) VALUES (CAST(:r AS uuid), 'other')",
        r=run_id,
    )
    assert sql(h.db, "SELECT status FROM orchestrator.runs")[0][0] == "waiting"  # not its name
    sql(
        h.db,
        "INSERT INTO orchestrator.signals (run_id, name, data) "
        "VALUES (CAST(:r AS uuid), 'go', '{\"k\": 1}')",
        r=run_id,
    )
    [(status, woken)] = sql(h.db, "SELECT status, due_at <= now() FROM orchestrator.runs")
    assert (status, woken) == ("queued", True)
    assert h.step("waiter").status == "completed"
    (output,) = sql(h.db, "SELECT output FROM orchestrator.runs")[0]
    assert output == {"got": {"k": 1}}


def test_wait_for_signal__times_out_with_none(app_harness: Harness) -> None:
    h = app_harness

    @h.app.function("patient")
    def patient(ctx: Context) -> Any:
        return {"got": ctx.step.wait_for_signal("go", "go", timeout=3600)}

    run_id = h.start("patient")
    assert h.step("patient").status == "suspended"
    sql(h.db, "UPDATE orchestrator.steps SET wake_at = now() - interval '1 second'")
    h.make_due(run_id)
    assert h.step("patient").status == "completed"
    (output,) = sql(h.db, "SELECT output FROM orchestrator.runs")[0]
    assert output == {"got": None}
    with pytest.raises(RunFinishedError) as refused:
        h.app.signal(run_id, "go")
    assert refused.value.code == "run_finished"


def test_signal__bad_input_gets_a_typed_error_and_writes_nothing(app_harness: Harness) -> None:
    h = app_harness
    h.app.function("f")(lambda ctx: None)
    run_id = h.start("f")
    cases: list[tuple[Any, ...]] = [
        (str(uuid.uuid4()), "go", None, RunNotFoundError, "run_not_found"),
        ("not-a-run", "go", None, RunNotFoundError, "run_not_found"),
        (run_id, "", None, InvalidSignalError, "invalid_signal"),
        (run_id, "x" * 201, None, InvalidSignalError, "invalid_signal"),
        (run_id, "go", [1, 2], InvalidSignalError, "invalid_signal"),
        (run_id, "go", {"s": {1, 2}}, PayloadError, "payload_not_json"),
        (run_id, "go", {"big": "x" * 2_000_000}, PayloadTooLargeError, "payload_too_large"),
    ]
    for target, name, data, error, code in cases:
        with pytest.raises(error) as raised:
            h.app.signal(target, name, data)
        assert raised.value.code == code, (name, data)
    assert sql(h.db, "SELECT count(*) FROM orchestrator.signals")[0][0] == 0


def test_signal__in_the_callers_transaction_with_conn(app_harness: Harness) -> None:
    h = app_harness
    h.app.function("f")(lambda ctx: None)
    run_id = h.start("f")
    with psycopg.connect(libpq_url(h.db.url)) as conn:
        h.app.signal(run_id, "kept", conn=conn)
        conn.commit()
        h.app.signal(run_id, "dropped", conn=conn)
        conn.rollback()
    names = sql(h.db, "SELECT name FROM orchestrator.signals")
    assert [row[0] for row in names] == ["kept"]


def test_signal__refused_by_sql_for_a_finished_run_or_a_bad_row(db: Database) -> None:
    [run_id] = [str(uuid.uuid4())]
    sql(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status) "
        "VALUES (CAST(:r AS uuid), 'f', 'completed')",
        r=run_id,
    )
    insert = "INSERT INTO orchestrator.signals (run_id, name, data) VALUES (%s, %s, %s)"
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        with pytest.raises(pg_errors.CheckViolation) as finished:
            conn.execute(insert, (run_id, "go", "{}"))
        assert finished.value.diag.constraint_name == "signals_run_unfinished"
        sql(db, "UPDATE orchestrator.runs SET status = 'queued'")
        for name, data, constraint in [
            ("", "{}", "signals_name_length"),
            ("go", "[1]", "signals_data_is_object"),
        ]:
            with pytest.raises(pg_errors.CheckViolation) as bad:
                conn.execute(insert, (run_id, name, data))
            assert bad.value.diag.constraint_name == constraint
        with pytest.raises(pg_errors.ForeignKeyViolation):
            conn.execute(insert, (str(uuid.uuid4()), "go", "{}"))
        conn.execute(insert, (run_id, "go", "{}"))
    sql(db, "DELETE FROM orchestrator.runs")  # retention deletes runs: signals go with them
    assert sql(db, "SELECT count(*) FROM orchestrator.signals")[0][0] == 0


# -- the take, on the database ------------------------------------------------------------


def running_run(db: Database) -> tuple[str, str]:
    """A run claimed by a worker: (run id, lease token)."""
    sql(db, "INSERT INTO orchestrator.runs (function_id) VALUES ('f')")
    (claimed,) = claim(db, str(uuid.uuid4()), limit=1)
    return claimed.id, claimed.lease_token


def taking(run_id: str, token: str, step_id: str, **kwargs: Any) -> signals.Taking:
    options: dict[str, Any] = {"expired": False, "due": FOREVER, "wake_at": None} | kwargs
    return signals.Taking(run_id, token, step_id, 0, "go", **options)


def send(db: Database, run_id: str, n: int) -> None:
    sql(
        db,
        "INSERT INTO orchestrator.signals (run_id, name, data) "
        "SELECT CAST(:r AS uuid), 'go', jsonb_build_object('n', i) FROM generate_series(0, :n) i",
        r=run_id,
        n=n - 1,
    )


def test_take__two_concurrent_consumers_take_each_signal_once(db: Database) -> None:
    run_id, token = running_run(db)
    send(db, run_id, 40)
    start = threading.Barrier(2)

    def consumer(prefix: str) -> list[tuple[str, int]]:
        start.wait(10)
        got: list[tuple[str, int]] = []
        for i in range(100):
            step = f"{prefix}{i}"
            taken = db.run(lambda conn, step=step: signals.take(conn, taking(run_id, token, step)))
            if taken.outcome != "signal":
                return got
            assert taken.data is not None
            got.append((step, taken.data["n"]))
        return got

    with ThreadPoolExecutor(2) as pool:
        a, b = pool.map(consumer, ["a", "b"])
    assert a and b  # both took some
    assert sorted(n for _, n in a + b) == list(range(40))  # each exactly once
    assert [n for _, n in a] == sorted(n for _, n in a)  # each in order of sending
    recorded = {step: data["n"] for data, step in consumed(db, run_id)}
    assert recorded == dict(a + b)


def test_take__fenced_on_the_lease_and_safe_to_repeat(db: Database) -> None:
    run_id, token = running_run(db)
    send(db, run_id, 2)
    stale = str(uuid.uuid4())
    lost = db.run(lambda conn: signals.take(conn, taking(run_id, stale, "s")))
    assert lost.outcome == "lost"
    assert [c for _, c in consumed(db, run_id)] == [None, None]
    first = db.run(lambda conn: signals.take(conn, taking(run_id, token, "s")))
    again = db.run(lambda conn: signals.take(conn, taking(run_id, token, "s")))  # a retry
    assert first == again == signals.Taken("signal", {"n": 0})
    assert [c for _, c in consumed(db, run_id)] == ["s", None]


def test_take__a_signal_inserted_while_the_wait_is_stored_wakes_the_run(db: Database) -> None:
    """The worker holds the run row while it looks for signals and suspends; the sender's
    trigger waits for that lock, then sees the run waiting and wakes it."""
    run_id, token = running_run(db)
    with psycopg.connect(libpq_url(db.url)) as worker:
        assert signals.take(worker, taking(run_id, token, "s")).outcome == "waiting"
        pid = worker.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            sent = pool.submit(send, db, run_id, 1)
            wait_until_blocked(db, pid, "the sender waiting for the run row")
            worker.commit()
            sent.result(10)
    [(status, woken)] = sql(db, "SELECT status, due_at <= now() FROM orchestrator.runs")
    assert (status, woken) == ("queued", True)


def test_take__a_wait_stored_while_a_signal_is_inserted_finds_it(db: Database) -> None:
    """The sender's trigger holds the run row until it commits; the worker's look for
    signals waits for it, then finds the signal instead of suspending."""
    run_id, token = running_run(db)
    with psycopg.connect(libpq_url(db.url)) as sender:
        sender.execute(
            "INSERT INTO orchestrator.signals (run_id, name, data) VALUES (%s, 'go', '{}')",
            (run_id,),
        )
        pid = sender.info.backend_pid
        with ThreadPoolExecutor(1) as pool:
            took = pool.submit(
                lambda: db.run(lambda conn: signals.take(conn, taking(run_id, token, "s")))
            )
            wait_until_blocked(db, pid, "the worker waiting for the run row")
            sender.commit()
            assert took.result(10) == signals.Taken("signal", {})
    assert sql(db, "SELECT status FROM orchestrator.runs")[0][0] == "running"


def test_take__finds_the_oldest_pending_signal_through_its_index(db: Database) -> None:
    """Many runs with many signals, most of them consumed: the take reads one index entry."""
    run_id, _ = running_run(db)
    sql(
        db,
        "INSERT INTO orchestrator.runs (function_id, status) "
        "SELECT 'f', 'queued' FROM generate_series(1, 2000)",
    )
    sql(
        db,
        "INSERT INTO orchestrator.signals (run_id, name, consumed_at) "
        "SELECT r.id, 'go', CASE WHEN i % 10 > 0 THEN now() END "
        "FROM orchestrator.runs r CROSS JOIN generate_series(1, 10) i",
    )
    sql(db, "ANALYZE orchestrator.signals")
    args = {"run": run_id, "name": "go", "step": "s", "now": None}
    types = {"run": "uuid", "name": "text", "step": "text", "now": "timestamptz"}
    with psycopg.connect(libpq_url(db.url)) as conn:
        plan = generic_plan(conn, signals._TAKE, args, types)
    assert "Index Scan using signals_pending on signals" in plan, plan
    assert "Seq Scan on signals" not in plan, plan
