"""`ctx.step.wait_for_event` end to end: the real daemon, events sent by plain SQL, and the
outcome read back from `orchestrator.runs`, `orchestrator.steps` and `orchestrator.waits`.

The functions under test are in tests/e2e/apps/coordination.py: "await-payment" (waits for
`payment/received` matching `data.order_id`), "big-payment" (waits for `invoice/paid` with an
`if_` expression) and "race" (sends its own reply before it waits for it).

Every query of a test goes through one connection (`pg`), opened before the daemon starts:
the Postgres these tests run on may be shared, and polling must not need a new connection
each time.

Most tests share one daemon (tests/e2e/shared.py), each looking only at its own runs (the
hundreds test tags its events with a batch); the tests that stop or kill their daemon start
their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import psycopg
import pytest
from psycopg.types.json import Jsonb

from tests.conftest import eventually
from tests.e2e.shared import Served, shared_daemons

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
T = TypeVar("T")
module_daemons, served = shared_daemons(APP, concurrency=8)
BATCH = "hundreds"


class Pg:
    """One autocommit connection to the test database."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    def rows(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        cur = self.conn.execute(query, params)
        return cur.fetchall() if cur.description else []

    def one(self, query: str, params: Any = None) -> Any:
        rows = self.rows(query, params)
        return rows[0][0] if rows else None

    def send(self, name: str, data: dict[str, Any]) -> str:
        """Insert an event, as any producer would; returns its id."""
        return str(
            self.one(
                "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s) RETURNING id",
                (name, Jsonb(data)),
            )
        )


@pytest.fixture
def pg(e2e_url: str) -> Iterator[Pg]:
    """On a database of the test's own."""
    with psycopg.connect(e2e_url, autocommit=True) as conn:
        yield Pg(conn)


@pytest.fixture
def shared_pg(served: Served) -> Iterator[Pg]:
    """On the database of the module's shared daemon."""
    with psycopg.connect(served.url, autocommit=True) as conn:
        yield Pg(conn)


class _Probe(Generic[T]):
    """A polled value that is truthy once `done`; its repr shows the last value seen, so a
    timed-out `eventually` says where things stood."""

    def __init__(self, value: T, done: bool) -> None:
        self.value = value
        self.done = done

    def __bool__(self) -> bool:
        return self.done

    def __repr__(self) -> str:
        return repr(self.value)


def until(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    *,
    what: str,
    timeout: float = 30.0,
    interval: float = 0.1,
) -> T:
    """Poll `probe` until `done(value)`; returns that value."""

    def check() -> _Probe[T]:
        value = probe()
        return _Probe(value, done(value))

    return eventually(check, timeout=timeout, interval=interval, what=what).value


# the runs of a function (every run without one), of events tagged with a batch if one is given
OF_BATCH = (
    "(%(fid)s::text IS NULL OR r.function_id = %(fid)s) "
    "AND (%(batch)s::text IS NULL OR r.events -> 0 -> 'data' ->> 'batch' = %(batch)s)"
)


def statuses(pg: Pg, function_id: str, batch: str | None = None) -> dict[str, int]:
    rows = pg.rows(
        f"SELECT status, count(*) FROM orchestrator.runs r WHERE {OF_BATCH} GROUP BY status",
        {"fid": function_id, "batch": batch},
    )
    return {status: int(n) for status, n in rows}


def wait_rows(pg: Pg, function_id: str | None = None, batch: str | None = None) -> dict[str, int]:
    """Rows of `orchestrator.waits` (of the function's runs), by kind."""
    rows = pg.rows(
        "SELECT w.kind, count(*) FROM orchestrator.waits w "
        f"JOIN orchestrator.runs r ON r.id = w.run_id WHERE {OF_BATCH} GROUP BY w.kind",
        {"fid": function_id, "batch": batch},
    )
    return {kind: int(n) for kind, n in rows}


def run_of(pg: Pg, event_id: str) -> str:
    return eventually(
        lambda: pg.one("SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (event_id,)),
        what=f"run of event {event_id} created",
    )


def run_status(pg: Pg, run_id: str) -> str:
    return str(pg.one("SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def finished(pg: Pg, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for the run to end; returns its status and output."""
    status, output = until(
        lambda: pg.rows("SELECT status, output FROM orchestrator.runs WHERE id = %s", (run_id,))[0],
        lambda row: row[0] in ("completed", "failed", "cancelled"),
        timeout=timeout,
        what=f"run {run_id} finished",
    )
    return {"status": status, "output": output}


def wait_waiting(pg: Pg, run_id: str, timeout: float = 30.0) -> None:
    until(
        lambda: (
            run_status(pg, run_id),
            pg.one(
                "SELECT status FROM orchestrator.steps WHERE run_id = %s AND step_id = 'paid'",
                (run_id,),
            ),
            pg.one("SELECT count(*) FROM orchestrator.waits WHERE run_id = %s", (run_id,)),
        ),
        lambda v: v == ("waiting", "waiting", 1),
        timeout=timeout,
        what=f"run {run_id} waiting at step 'paid' with its wait stored",
    )


def ingested(pg: Pg, event_id: str) -> bool:
    return bool(
        pg.one("SELECT ingested_at IS NOT NULL FROM orchestrator.events WHERE id = %s", (event_id,))
    )


def wait_ingested(pg: Pg, *event_ids: str) -> None:
    for event_id in event_ids:
        eventually(lambda e=event_id: ingested(pg, e), what=f"event {event_id} ingested")


@pytest.mark.timeout(120)
def test_wait__hundreds_of_waiting_runs__one_event_resolves_exactly_its_run(shared_pg):
    pg = shared_pg
    # the mechanism, with a daemon; that one event's lookup does not grow with the number of
    # waits is tests/db/test_waits.py (10,000 waits: the match index, EXPLAIN), and the
    # figures for 10,000 waiting runs are bench/waits.py's
    n, lucky = 300, 142  # the only numeric order ids on the shared database
    pg.rows(
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'order/created', "
        "       jsonb_build_object('order_id', i, 'timeout', 3600, 'batch', %s::text) "
        "FROM generate_series(0, %s) AS i",
        (BATCH, n - 1),
    )
    until(
        lambda: (statuses(pg, "await-payment", BATCH), wait_rows(pg, "await-payment", BATCH)),
        lambda v: v == ({"waiting": n}, {"event": n}),
        timeout=90,
        interval=0.2,
        what=f"{n} runs waiting, with {n} waits stored",
    )
    waiting_steps = pg.one(
        "SELECT count(*) FROM orchestrator.steps s JOIN orchestrator.runs r ON r.id = s.run_id "
        "WHERE s.step_id = 'paid' AND s.kind = 'wait' AND s.status = 'waiting' "
        "AND r.events -> 0 -> 'data' ->> 'batch' = %s",
        (BATCH,),
    )
    assert waiting_steps == n

    # one payment: exactly its own run wakes
    paid_id = pg.send("payment/received", {"order_id": lucky})
    lucky_run = pg.one(
        "SELECT id::text FROM orchestrator.runs WHERE function_id = 'await-payment' "
        "AND events -> 0 -> 'data' -> 'order_id' = %s::jsonb "
        "AND events -> 0 -> 'data' ->> 'batch' = %s",
        (str(lucky), BATCH),
    )
    row = finished(pg, lucky_run)
    assert row["status"] == "completed"
    assert row["output"] == {"paid": {"order_id": lucky}, "event_id": paid_id}
    # the ingest resolves every wait an event matches in the transaction that marks it
    # ingested, and the run completed after that: nothing else can still be woken by it
    assert ingested(pg, paid_id)
    assert statuses(pg, "await-payment", BATCH) == {"completed": 1, "waiting": n - 1}
    assert wait_rows(pg, "await-payment", BATCH) == {"event": n - 1}

    # the other payments in one statement
    pg.rows(
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'payment/received', jsonb_build_object('order_id', i) "
        "FROM generate_series(0, %s) AS i WHERE i <> %s",
        (n - 1, lucky),
    )
    until(
        lambda: (statuses(pg, "await-payment", BATCH), wait_rows(pg, "await-payment", BATCH)),
        lambda v: v == ({"completed": n}, {}),
        timeout=90,
        interval=0.2,
        what=f"all {n} runs completed and no wait left",
    )
    own = pg.one(
        "SELECT count(*) FROM orchestrator.runs r "
        "JOIN orchestrator.events p ON p.id = r.output ->> 'event_id' "
        "WHERE r.function_id = 'await-payment' AND r.events -> 0 -> 'data' ->> 'batch' = %s "
        "AND r.events -> 0 -> 'data' -> 'order_id' = r.output -> 'paid' -> 'order_id' "
        "AND p.name = 'payment/received' "
        "AND p.data -> 'order_id' = r.output -> 'paid' -> 'order_id'",
        (BATCH,),
    )
    assert own == n, f"only {own} of {n} runs were resolved by their own order's payment"
    assert statuses(pg, "await-payment", BATCH) == {"completed": n}
    started_by_payments = pg.one(
        "SELECT count(*) FROM orchestrator.runs r JOIN orchestrator.events e "
        "ON e.id = r.event_id WHERE e.name = 'payment/received'"
    )
    assert started_by_payments == 0


@pytest.mark.timeout(120)
def test_wait__race__reply_sent_before_wait_stored_resolves_all(shared_pg):
    pg = shared_pg
    n = 100
    # even keys: the reply is committed before the wait is stored; odd: sent concurrently
    pg.rows(
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'race/start', CASE WHEN i %% 2 = 0 "
        "  THEN jsonb_build_object('key', 'k' || i, 'join', true) "
        "  ELSE jsonb_build_object('key', 'k' || i) END "
        "FROM generate_series(0, %s) AS i",
        (n - 1,),
    )
    # a lost race would show as a run that waits out its 30 s timeout and returns false
    until(
        lambda: statuses(pg, "race"),
        lambda v: v == {"completed": n},
        timeout=90,
        interval=0.2,
        what=f"{n} race runs completed",
    )
    outputs = pg.rows(
        "SELECT output, count(*) FROM orchestrator.runs WHERE function_id = 'race' GROUP BY 1"
    )
    assert outputs == [({"replied": True}, n)]

    replies = pg.rows(
        "SELECT s.status, s.kind, s.output -> 'data' ->> 'key' = r.events -> 0 -> 'data' ->> 'key' "
        "FROM orchestrator.runs r "
        "LEFT JOIN orchestrator.steps s ON s.run_id = r.id AND s.step_id = 'reply' "
        "WHERE r.function_id = 'race'"
    )
    assert len(replies) == n
    assert set(replies) == {("completed", "wait", True)}, replies

    requests = pg.rows(
        "SELECT r.id::text, count(e.run_id) FROM orchestrator.runs r "
        "LEFT JOIN effects e ON e.run_id = r.id::text AND e.step = 'request' "
        "WHERE r.function_id = 'race' GROUP BY r.id"
    )
    assert len(requests) == n
    assert {count for _, count in requests} == {1}, requests
    assert pg.one("SELECT count(*) FROM effects WHERE step = 'request'") == n
    assert wait_rows(pg, "race") == {}
    # how each was resolved: in one claim (the wait's look-back found the reply) or after a
    # suspension (the ingest found the stored wait); timing decides for the concurrent ones
    paths = pg.rows(
        "SELECT coalesce((events -> 0 -> 'data' ->> 'join')::bool, false), "
        "       count(*) FILTER (WHERE attempts = 1), count(*) FILTER (WHERE attempts > 1) "
        "FROM orchestrator.runs WHERE function_id = 'race' GROUP BY 1 ORDER BY 1"
    )
    print("\n(join, resolved by look-back, resolved after suspending):", paths)


@pytest.mark.timeout(60)
def test_wait__timeout_returns_none(shared_pg):
    pg = shared_pg
    run_id = run_of(pg, pg.send("order/created", {"order_id": "t-1", "timeout": 1}))

    row = finished(pg, run_id)

    assert row["status"] == "completed", row
    assert row["output"] == {"paid": None, "event_id": None}
    assert pg.one("SELECT count(*) FROM orchestrator.waits WHERE run_id = %s", (run_id,)) == 0
    step = pg.rows(
        "SELECT kind, status, output FROM orchestrator.steps "
        "WHERE run_id = %s AND step_id = 'paid'",
        (run_id,),
    )
    assert step == [("wait", "completed", None)]
    waited = pg.one(
        "SELECT extract(epoch FROM finished_at - started_at)::float "
        "FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    assert waited >= 1.0, f"the 1 s wait ended after only {waited:.3f} s"


@pytest.mark.timeout(60)
def test_wait__if_expression_filters_events(shared_pg):
    pg = shared_pg
    run_id = run_of(pg, pg.send("invoice/created", {"customer": "c", "due": 10}))
    wait_waiting(pg, run_id)

    too_little = pg.send("invoice/paid", {"customer": "c", "amount": 5})
    wrong_customer = pg.send("invoice/paid", {"customer": "d", "amount": 50})
    wait_ingested(pg, too_little, wrong_customer)
    # both were looked at by the ingest (which resolves in the transaction that marks an event
    # ingested) and neither satisfied the expression
    assert run_status(pg, run_id) == "waiting"
    assert pg.one("SELECT count(*) FROM orchestrator.waits WHERE run_id = %s", (run_id,)) == 1

    right = pg.send("invoice/paid", {"customer": "c", "amount": 11})
    row = finished(pg, run_id)

    assert row["status"] == "completed", row
    assert row["output"] == {"paid": {"customer": "c", "amount": 11}}
    resolved_by = pg.one(
        "SELECT output ->> 'id' FROM orchestrator.steps WHERE run_id = %s AND step_id = 'paid'",
        (run_id,),
    )
    assert resolved_by == right
    assert wait_rows(pg, "big-payment") == {}


@pytest.mark.timeout(60)
def test_wait__one_event_resolves_many_waits_each_once(pg, daemon_factory):
    n = 5
    daemon = daemon_factory(APP)
    runs = [run_of(pg, pg.send("order/created", {"order_id": 1})) for _ in range(n)]
    for run_id in runs:
        wait_waiting(pg, run_id)
    assert wait_rows(pg) == {"event": n}

    payment = pg.send("payment/received", {"order_id": 1})
    for run_id in runs:
        row = finished(pg, run_id)
        assert row["status"] == "completed", row
        assert row["output"] == {"paid": {"order_id": 1}, "event_id": payment}
    assert wait_rows(pg) == {}

    def snapshot() -> list[tuple[Any, ...]]:
        return pg.rows(
            "SELECT r.id::text, r.status, r.output, r.attempts, r.updated_at, "
            "       s.status, s.output, s.updated_at "
            "FROM orchestrator.runs r "
            "JOIN orchestrator.steps s ON s.run_id = r.id AND s.step_id = 'paid' "
            "WHERE r.function_id = 'await-payment' ORDER BY r.id"
        )

    before = snapshot()
    assert len(before) == n
    assert {row[6]["id"] for row in before} == {payment}

    second = pg.send("payment/received", {"order_id": 1})
    wait_ingested(pg, second)
    # a second payment for the same order finds no wait: nothing is woken, nothing re-runs
    assert snapshot() == before
    assert statuses(pg, "await-payment") == {"completed": n}
    assert pg.one("SELECT count(*) FROM orchestrator.runs") == n
    assert wait_rows(pg) == {}

    # each run suspended once, cleanly: no run was abandoned on the way
    assert daemon.terminate() == 0
    logged = [e["event"] for e in daemon.log_events()]
    assert logged.count("run waiting") == n, daemon.logs()
    assert "lease lost; abandoning run" not in logged, daemon.logs()


@pytest.mark.timeout(90)
def test_wait__survives_daemon_restart(pg, daemon_factory):
    daemon = daemon_factory(APP)
    run_id = run_of(pg, pg.send("order/created", {"order_id": "r-1"}))
    wait_waiting(pg, run_id)

    daemon.kill9()
    payment = pg.send("payment/received", {"order_id": "r-1"})
    # nobody is there to ingest it
    assert not ingested(pg, payment)
    assert run_status(pg, run_id) == "waiting"

    daemon_factory(APP)
    row = finished(pg, run_id)

    assert row["status"] == "completed", row
    assert row["output"] == {"paid": {"order_id": "r-1"}, "event_id": payment}
    assert ingested(pg, payment)
    assert wait_rows(pg) == {}
    # a waiting run holds no lease: the restart had nothing to recover
    assert pg.one("SELECT recoveries FROM orchestrator.runs WHERE id = %s", (run_id,)) == 0
