"""`ctx.step.wait_for_event` end to end: the real daemon, events sent by plain SQL, and the
outcome read back from `orchestrator.runs`, `orchestrator.steps` and `orchestrator.waits`.

The functions under test are in tests/e2e/apps/coordination.py: "await-payment" (waits for
`payment/received` matching `data.order_id`), "big-payment" (waits for `invoice/paid` with an
`if_` expression) and "race" (sends its own reply before it waits for it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pytest

from tests.conftest import eventually
from tests.e2e.harness import finished_run, scalar, send, sql

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
T = TypeVar("T")


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


def statuses(url: str, function_id: str) -> dict[str, int]:
    rows = sql(
        url,
        "SELECT status, count(*) FROM orchestrator.runs WHERE function_id = %s GROUP BY status",
        (function_id,),
    )
    return {status: int(n) for status, n in rows}


def wait_rows(url: str) -> dict[str, int]:
    """Rows of `orchestrator.waits` by kind."""
    rows = sql(url, "SELECT kind, count(*) FROM orchestrator.waits GROUP BY kind")
    return {kind: int(n) for kind, n in rows}


def run_of(url: str, event_id: str) -> str:
    return eventually(
        lambda: scalar(
            url, "SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (event_id,)
        ),
        what=f"run of event {event_id} created",
    )


def run_status(url: str, run_id: str) -> str:
    return str(scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def wait_waiting(url: str, run_id: str, timeout: float = 30.0) -> None:
    until(
        lambda: (
            run_status(url, run_id),
            scalar(
                url,
                "SELECT status FROM orchestrator.steps WHERE run_id = %s AND step_id = 'paid'",
                (run_id,),
            ),
            scalar(url, "SELECT count(*) FROM orchestrator.waits WHERE run_id = %s", (run_id,)),
        ),
        lambda v: v == ("waiting", "waiting", 1),
        timeout=timeout,
        what=f"run {run_id} waiting at step 'paid' with its wait stored",
    )


def ingested(url: str, event_id: str) -> bool:
    return bool(
        scalar(
            url,
            "SELECT ingested_at IS NOT NULL FROM orchestrator.events WHERE id = %s",
            (event_id,),
        )
    )


def wait_ingested(url: str, *event_ids: str) -> None:
    for event_id in event_ids:
        eventually(lambda e=event_id: ingested(url, e), what=f"event {event_id} ingested")


@pytest.mark.timeout(300)
def test_wait__ten_thousand_waiting_runs__one_event_resolves_exactly_its_run(
    e2e_url, daemon_factory
):
    n, lucky = 10_000, 4242
    daemon_factory(APP, concurrency=32, workers=2)
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'order/created', jsonb_build_object('order_id', i, 'timeout', 3600) "
        "FROM generate_series(0, %s) AS i",
        (n - 1,),
    )
    until(
        lambda: (statuses(e2e_url, "await-payment"), wait_rows(e2e_url)),
        lambda v: v == ({"waiting": n}, {"event": n}),
        timeout=150,
        interval=0.5,
        what=f"{n} runs waiting, with {n} waits stored",
    )
    waiting_steps = scalar(
        e2e_url,
        "SELECT count(*) FROM orchestrator.steps "
        "WHERE step_id = 'paid' AND kind = 'wait' AND status = 'waiting'",
    )
    assert waiting_steps == n

    # one payment: exactly its own run wakes
    paid_id = send(e2e_url, "payment/received", {"order_id": lucky})
    [(lucky_run, lucky_order)] = sql(
        e2e_url,
        "SELECT id::text, event_id FROM orchestrator.runs "
        "WHERE function_id = 'await-payment' AND events -> 0 -> 'data' -> 'order_id' = %s::jsonb",
        (str(lucky),),
    )
    row = finished_run(e2e_url, lucky_order)
    assert row["status"] == "completed"
    assert row["output"] == {"paid": {"order_id": lucky}, "event_id": paid_id}
    # the ingest resolves every wait an event matches in the transaction that marks it
    # ingested, and the run completed after that: nothing else can still be woken by it
    assert ingested(e2e_url, paid_id)
    assert statuses(e2e_url, "await-payment") == {"completed": 1, "waiting": n - 1}
    assert wait_rows(e2e_url) == {"event": n - 1}
    single = scalar(
        e2e_url,
        "SELECT extract(epoch FROM r.finished_at - e.received_at)::float "
        "FROM orchestrator.runs r, orchestrator.events e WHERE r.id = %s AND e.id = %s",
        (lucky_run, paid_id),
    )

    # the other 9,999 payments in one statement
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'payment/received', jsonb_build_object('order_id', i) "
        "FROM generate_series(0, %s) AS i WHERE i <> %s",
        (n - 1, lucky),
    )
    until(
        lambda: (statuses(e2e_url, "await-payment"), wait_rows(e2e_url)),
        lambda v: v == ({"completed": n}, {}),
        timeout=120,
        interval=0.5,
        what=f"all {n} runs completed and no wait left",
    )
    own = scalar(
        e2e_url,
        "SELECT count(*) FROM orchestrator.runs r "
        "JOIN orchestrator.events p ON p.id = r.output ->> 'event_id' "
        "WHERE r.function_id = 'await-payment' "
        "AND r.events -> 0 -> 'data' -> 'order_id' = r.output -> 'paid' -> 'order_id' "
        "AND p.name = 'payment/received' "
        "AND p.data -> 'order_id' = r.output -> 'paid' -> 'order_id'",
    )
    assert own == n, f"only {own} of {n} runs were resolved by their own order's payment"
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs") == n

    bulk = scalar(
        e2e_url,
        "SELECT extract(epoch FROM "
        "  (SELECT max(finished_at) FROM orchestrator.runs WHERE id <> %s) - "
        "  (SELECT min(received_at) FROM orchestrator.events "
        "   WHERE name = 'payment/received' AND id <> %s))::float",
        (lucky_run, paid_id),
    )
    print(
        f"\none payment among {n} waits: event received -> run finished in {single * 1000:.0f} ms"
        f"\n{n - 1} payments in one INSERT: first received -> last run finished in {bulk:.2f} s"
        f" ({(n - 1) / bulk:.0f} resolutions/s)"
    )


@pytest.mark.timeout(120)
def test_wait__race__reply_sent_before_wait_stored_resolves_all(e2e_url, daemon_factory):
    n = 100
    daemon_factory(APP, concurrency=8)
    # even keys: the reply is committed before the wait is stored; odd: sent concurrently
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'race/start', CASE WHEN i %% 2 = 0 "
        "  THEN jsonb_build_object('key', 'k' || i, 'join', true) "
        "  ELSE jsonb_build_object('key', 'k' || i) END "
        "FROM generate_series(0, %s) AS i",
        (n - 1,),
    )
    # a lost race would show as a run that waits out its 30 s timeout and returns false
    until(
        lambda: statuses(e2e_url, "race"),
        lambda v: v == {"completed": n},
        timeout=90,
        interval=0.2,
        what=f"{n} race runs completed",
    )
    outputs = sql(
        e2e_url,
        "SELECT output, count(*) FROM orchestrator.runs WHERE function_id = 'race' GROUP BY 1",
    )
    assert outputs == [({"replied": True}, n)]

    replies = sql(
        e2e_url,
        "SELECT s.status, s.kind, s.output -> 'data' ->> 'key' = r.events -> 0 -> 'data' ->> 'key' "
        "FROM orchestrator.runs r "
        "LEFT JOIN orchestrator.steps s ON s.run_id = r.id AND s.step_id = 'reply' "
        "WHERE r.function_id = 'race'",
    )
    assert len(replies) == n
    assert set(replies) == {("completed", "wait", True)}, replies

    requests = sql(
        e2e_url,
        "SELECT r.id::text, count(e.run_id) FROM orchestrator.runs r "
        "LEFT JOIN effects e ON e.run_id = r.id::text AND e.step = 'request' "
        "WHERE r.function_id = 'race' GROUP BY r.id",
    )
    assert len(requests) == n
    assert {count for _, count in requests} == {1}, requests
    assert scalar(e2e_url, "SELECT count(*) FROM effects WHERE step = 'request'") == n
    assert wait_rows(e2e_url) == {}


@pytest.mark.timeout(60)
def test_wait__timeout_returns_none(e2e_url, daemon_factory):
    daemon_factory(APP)
    order_id = send(e2e_url, "order/created", {"order_id": "t-1", "timeout": 1})
    run_id = run_of(e2e_url, order_id)

    row = finished_run(e2e_url, order_id, timeout=30)

    assert row["status"] == "completed", row
    assert row["output"] == {"paid": None, "event_id": None}
    assert (
        scalar(e2e_url, "SELECT count(*) FROM orchestrator.waits WHERE run_id = %s", (run_id,)) == 0
    )
    step = sql(
        e2e_url,
        "SELECT kind, status, output FROM orchestrator.steps "
        "WHERE run_id = %s AND step_id = 'paid'",
        (run_id,),
    )
    assert step == [("wait", "completed", None)]
    waited = scalar(
        e2e_url,
        "SELECT extract(epoch FROM finished_at - started_at)::float "
        "FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    assert waited >= 1.0, f"the 1 s wait ended after only {waited:.3f} s"


@pytest.mark.timeout(60)
def test_wait__if_expression_filters_events(e2e_url, daemon_factory):
    daemon_factory(APP)
    invoice = send(e2e_url, "invoice/created", {"customer": "c", "due": 10})
    run_id = run_of(e2e_url, invoice)
    wait_waiting(e2e_url, run_id)

    too_little = send(e2e_url, "invoice/paid", {"customer": "c", "amount": 5})
    wrong_customer = send(e2e_url, "invoice/paid", {"customer": "d", "amount": 50})
    wait_ingested(e2e_url, too_little, wrong_customer)
    # both were looked at by the ingest (which resolves in the transaction that marks an event
    # ingested) and neither satisfied the expression
    assert run_status(e2e_url, run_id) == "waiting"
    assert (
        scalar(e2e_url, "SELECT count(*) FROM orchestrator.waits WHERE run_id = %s", (run_id,)) == 1
    )

    right = send(e2e_url, "invoice/paid", {"customer": "c", "amount": 11})
    row = finished_run(e2e_url, invoice)

    assert row["status"] == "completed", row
    assert row["output"] == {"paid": {"customer": "c", "amount": 11}}
    resolved_by = scalar(
        e2e_url,
        "SELECT output ->> 'id' FROM orchestrator.steps WHERE run_id = %s AND step_id = 'paid'",
        (run_id,),
    )
    assert resolved_by == right
    assert wait_rows(e2e_url) == {}


@pytest.mark.timeout(60)
def test_wait__one_event_resolves_many_waits_each_once(e2e_url, daemon_factory):
    n = 5
    daemon_factory(APP)
    orders = [send(e2e_url, "order/created", {"order_id": 1}) for _ in range(n)]
    runs = [run_of(e2e_url, order) for order in orders]
    for run_id in runs:
        wait_waiting(e2e_url, run_id)
    assert wait_rows(e2e_url) == {"event": n}

    payment = send(e2e_url, "payment/received", {"order_id": 1})
    for order in orders:
        row = finished_run(e2e_url, order)
        assert row["status"] == "completed", row
        assert row["output"] == {"paid": {"order_id": 1}, "event_id": payment}
    assert wait_rows(e2e_url) == {}

    def snapshot() -> list[tuple[Any, ...]]:
        return sql(
            e2e_url,
            "SELECT r.id::text, r.status, r.output, r.attempts, r.updated_at, "
            "       s.status, s.output, s.updated_at "
            "FROM orchestrator.runs r "
            "JOIN orchestrator.steps s ON s.run_id = r.id AND s.step_id = 'paid' "
            "WHERE r.function_id = 'await-payment' ORDER BY r.id",
        )

    before = snapshot()
    assert len(before) == n
    assert {row[6]["id"] for row in before} == {payment}

    second = send(e2e_url, "payment/received", {"order_id": 1})
    wait_ingested(e2e_url, second)
    # a second payment for the same order finds no wait: nothing is woken, nothing re-runs
    assert snapshot() == before
    assert statuses(e2e_url, "await-payment") == {"completed": n}
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs") == n
    assert wait_rows(e2e_url) == {}


@pytest.mark.timeout(90)
def test_wait__survives_daemon_restart(e2e_url, daemon_factory):
    daemon = daemon_factory(APP)
    order = send(e2e_url, "order/created", {"order_id": "r-1"})
    run_id = run_of(e2e_url, order)
    wait_waiting(e2e_url, run_id)

    daemon.kill9()
    payment = send(e2e_url, "payment/received", {"order_id": "r-1"})
    # nobody is there to ingest it
    assert not ingested(e2e_url, payment)
    assert run_status(e2e_url, run_id) == "waiting"

    daemon_factory(APP)
    row = finished_run(e2e_url, order)

    assert row["status"] == "completed", row
    assert row["output"] == {"paid": {"order_id": "r-1"}, "event_id": payment}
    assert ingested(e2e_url, payment)
    assert wait_rows(e2e_url) == {}
    # a waiting run holds no lease: the restart had nothing to recover
    assert scalar(e2e_url, "SELECT recoveries FROM orchestrator.runs WHERE id = %s", (run_id,)) == 0
