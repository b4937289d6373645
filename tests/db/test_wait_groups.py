"""Waits stored in groups (db/waits.py `store_many`, engine/waiter.py): one transaction for the
waits many runs reach at once, each run still fenced on its own lease, each still seeing the
events received before its wait was stored, and still race-free with the ingest."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from orchestrator.db import runs, waits
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.db.steps import StepRecord
from orchestrator.engine.waiter import Waiter
from tests.conftest import eventually
from tests.db.helpers import advisory_waiters, claim, execute, queue_runs
from tests.db.plans import generic_plan, most_removed_by_join

pytestmark = pytest.mark.timeout(60)

OWNER = "00000000-0000-0000-0000-00000000000c"
NAME = "payment/received"


def running(db: Database, n: int) -> list[runs.ClaimedRun]:
    queue_runs(db, n)
    return sorted(claim(db, OWNER, limit=n), key=lambda c: c.id)


def storing(
    run: runs.ClaimedRun,
    order: int,
    *,
    token: str | None = None,
    accept: Callable[[dict[str, Any]], bool] = lambda event: True,
    since: datetime | None = None,
) -> waits.Storing:
    wait = waits.Wait(
        run.id,
        "paid",
        NAME,
        "data.order_id",
        str(order),
        None,
        since=since or datetime.now(UTC) - timedelta(minutes=1),
        expires_at=None,
    )
    record = StepRecord("paid", 0, "wait", "waiting", 1)
    due = datetime(9999, 12, 31, tzinfo=UTC)
    return waits.Storing((waits.Branch(wait, accept),), record, token or run.lease_token, due)


def store(db: Database, batch: list[waits.Storing]) -> list[waits.Stored]:
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        return waits.store_many(conn, batch)


def send(db: Database, order: int) -> str:
    event_id = str(uuid.uuid4())
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data) "
        "VALUES (:id, :name, jsonb_build_object('order_id', :o))",
        id=event_id,
        name=NAME,
        o=order,
    )
    return event_id


def state(db: Database) -> dict[str, tuple[str, bool, str | None]]:
    """Each run: its status, whether its wait is stored, its wait step's status."""
    rows = execute(
        db,
        "SELECT r.id::text, r.status, w.run_id IS NOT NULL, s.status FROM orchestrator.runs r "
        "LEFT JOIN orchestrator.waits w ON w.run_id = r.id "
        "LEFT JOIN orchestrator.steps s ON s.run_id = r.id AND s.step_id = 'paid'",
    )
    return {row[0]: (row[1], row[2], row[3]) for row in rows}


def test_store_many__each_run_is_fenced_on_its_own_lease(db: Database) -> None:
    a, b, c = running(db, 3)
    stale = str(uuid.uuid4())
    stored = store(db, [storing(a, 1), storing(b, 2, token=stale), storing(c, 3)])

    assert stored == [
        waits.Stored(None, suspended=True),
        waits.Stored(None, suspended=False),
        waits.Stored(None, suspended=True),
    ]
    assert state(db) == {
        a.id: ("waiting", True, "waiting"),
        b.id: ("running", False, None),  # its lease was lost: nothing written for it
        c.id: ("waiting", True, "waiting"),
    }
    [(due, leased)] = execute(
        db,
        "SELECT DISTINCT due_at, lease_token IS NOT NULL FROM orchestrator.runs "
        "WHERE status = 'waiting'",
    )
    assert (due.year, leased) == (9999, False)


def test_store_many__an_event_already_received_ends_its_wait_and_writes_nothing(
    db: Database,
) -> None:
    a, b = running(db, 2)
    event_id = send(db, 1)
    stored = store(db, [storing(a, 1), storing(b, 2)])

    assert stored[0].found is not None and stored[0].found["id"] == event_id
    assert stored[0].found["data"] == {"order_id": 1}
    assert stored[1] == waits.Stored(None, suspended=True)
    assert state(db) == {a.id: ("running", False, None), b.id: ("waiting", True, "waiting")}


def test_store_many__each_wait_sees_only_events_since_its_start_that_it_accepts(
    db: Database,
) -> None:
    a, b, c = running(db, 3)
    send(db, 1)
    send(db, 2)
    later = datetime.now(UTC) + timedelta(minutes=1)
    rejected: list[str] = []

    def refuse(event: dict[str, Any]) -> bool:
        rejected.append(event["id"])
        return False

    stored = store(db, [storing(a, 1, since=later), storing(b, 2, accept=refuse), storing(c, 1)])

    assert [s.suspended for s in stored[:2]] == [True, True]
    assert len(rejected) == 1  # b saw its event and refused it; a saw none
    assert stored[2].found is not None and stored[2].found["data"] == {"order_id": 1}


def test_store_many__an_ingest_waits_for_the_group_and_then_sees_its_waits(
    db: Database,
) -> None:
    """An event whose ingest starts while a group of waits is being stored: the ingest's
    exclusive name lock waits for the group's commit, so its lookup finds the waits."""
    a, b = running(db, 2)
    send(db, 99)  # a matching event for `b`'s condition to look at, and refuse
    in_group = threading.Event()
    release = threading.Event()

    def hold(event: dict[str, Any]) -> bool:
        in_group.set()  # inside the group's transaction, its name locks held
        assert release.wait(20)
        return False

    group = threading.Thread(target=store, args=(db, [storing(a, 7), storing(b, 99, accept=hold)]))
    group.start()
    assert in_group.wait(10)
    found: list[list[waits.Candidate]] = []

    def ingest() -> None:
        with db.transaction() as conn:
            waits.lock_names(conn, [NAME], shared=False)
            now = datetime.now(UTC)
            found.append(waits.candidates(conn, [NAME], [{"order_id": 7}], [now])())

    ingesting = threading.Thread(target=ingest)
    ingesting.start()
    eventually(
        lambda: advisory_waiters(db) == 1,
        what="the ingest blocked on the name lock",
    )
    assert not found
    release.set()
    group.join(10)
    ingesting.join(10)
    assert [c.run_id for c in found[0]] == [a.id]


@pytest.fixture
def waiter(db: Database) -> Iterator[Waiter]:
    made = Waiter(Direct(db.url, application_name="test-waiter"), retry_for=0.0)
    yield made
    made.close()


def held_first_batch(waiter: Waiter) -> tuple[list[int], threading.Event, threading.Event]:
    """Count the batches the waiter serves; hold the first until the returned event is set."""
    sizes: list[int] = []
    held, released = threading.Event(), threading.Event()
    serve = waiter.batcher.serve

    def counted(conn: Any, batch: list[waits.Storing]) -> list[waits.Stored]:
        sizes.append(len(batch))
        if len(sizes) == 1:
            held.set()
            assert released.wait(20)
        return serve(conn, batch)

    waiter.batcher.serve = counted
    return sizes, held, released


def test_waiter__waits_reached_together_share_one_transaction(db: Database, waiter: Waiter) -> None:
    first, *others = running(db, 6)
    sizes, held, released = held_first_batch(waiter)
    pending = waiter.store(storing(first, 0))
    assert held.wait(10)
    stored = [waiter.store(storing(run, n)) for n, run in enumerate(others, start=1)]
    released.set()

    assert pending.result(10).suspended
    assert all(s.result(10).suspended for s in stored)
    assert sizes == [1, len(others)]
    xids = execute(db, "SELECT count(DISTINCT xmin::text) FROM orchestrator.waits")[0][0]
    assert xids == 2  # two transactions stored the six waits
    assert set(state(db).values()) == {("waiting", True, "waiting")}


def test_waiter__a_bad_wait_fails_alone(db: Database, waiter: Waiter) -> None:
    first, good, other = running(db, 3)
    sizes, held, released = held_first_batch(waiter)
    pending = waiter.store(storing(first, 0))
    assert held.wait(10)
    bad = waiter.store(storing(good, 1, token="not-a-token"))
    fine: Future[waits.Stored] = waiter.store(storing(other, 2))
    released.set()

    assert pending.result(10).suspended and fine.result(10).suspended
    with pytest.raises(psycopg.errors.InvalidTextRepresentation):
        bad.result(10)
    assert sizes == [1, 2, 1, 1]  # the failed batch, then each of its waits on its own
    assert state(db)[good.id] == ("running", False, None)


def test_waiter__a_run_is_never_twice_in_one_transaction(db: Database, waiter: Waiter) -> None:
    first, run = running(db, 2)
    sizes, held, released = held_first_batch(waiter)
    pending = waiter.store(storing(first, 0))
    assert held.wait(10)
    twice = [waiter.store(storing(run, 1)), waiter.store(storing(run, 1))]
    released.set()

    assert pending.result(10).suspended
    assert [s.result(10).suspended for s in twice] == [True, False]  # the second: lease lost
    assert sizes == [1, 1, 1]


def test_look_back__its_generic_plan_reads_the_name_index_not_every_event(db: Database) -> None:
    """The look back is prepared: its generic plan walked `events_seq` from the start for its
    ORDER BY, reading every event ever received once per wait."""
    execute(
        db,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'other/name', '{}' FROM generate_series(1, 2000)",
    )
    execute(db, "ANALYZE orchestrator.events")
    n = 50
    args = {
        "runs": [str(uuid.uuid4()) for _ in range(n)],
        "names": [NAME] * n,
        "since": [datetime.now(UTC) - timedelta(minutes=1)] * n,
        "paths": ["data.order_id"] * n,
        "values": [str(i) for i in range(n)],
        "limit": 1000,
    }
    types = {"names": "text[]", "since": "timestamptz[]", "paths": "text[]", "values": "jsonb[]"}
    types["runs"] = "uuid[]"
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        plan = generic_plan(conn, waits._LOOK_BACK, args, types | {"limit": "int"})
    assert "events_name_received" in plan, plan
    removed = [int(line.split(":")[1]) for line in plan.splitlines() if "Removed by Filter" in line]
    assert max(removed, default=0) < 100, plan


def test_store_many__its_suspension_generic_plan_compares_no_pairs(db: Database) -> None:
    claimed = running(db, 200)
    now = datetime.now(UTC)
    n = len(claimed)
    args = {
        "runs": [c.id for c in claimed],
        "tokens": [c.lease_token for c in claimed],
        "dues": [now] * n,
        "steps": ["paid"] * n,
        "positions": [0] * n,
        "kinds": ["wait"] * n,
        "names": [NAME] * n,
        "paths": ["data.order_id"] * n,
        "values": [str(i) for i in range(n)],
        "exprs": [None] * n,
        "since": [now] * n,
        "expires": [None] * n,
        "states": ['{"progress": 1}'] * n,
        "more": [None] * n,
    }
    now_arg = {"now": None}
    arrays = {"runs": "uuid", "tokens": "uuid", "dues": "timestamptz", "positions": "int"}
    arrays["more"] = "jsonb"
    arrays |= {"values": "jsonb", "since": "timestamptz", "expires": "timestamptz"}
    arrays |= {"states": "jsonb"}
    types = {name: f"{arrays.get(name, 'text')}[]" for name in args} | {"now": "timestamptz"}
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        plan = generic_plan(conn, waits._SUSPEND, args | now_arg, types)
    assert "CTE Scan on held" in plan and f"rows={n}" in plan, plan
    assert most_removed_by_join(plan) < n, plan
