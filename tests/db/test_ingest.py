"""The ingest transaction: events fan out to runs, and the daemon's claim shares its commit."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import structlog

from orchestrator.db import functions, runs, waits
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.runtime.ingest import Ingester
from tests.conftest import eventually
from tests.db.helpers import advisory_waiters, execute

pytestmark = pytest.mark.timeout(60)

OWNER = "00000000-0000-0000-0000-00000000000a"


@pytest.fixture
def ingester(db: Database) -> Iterator[Ingester]:
    with db.transaction() as conn:
        functions.upsert(
            conn, "f", triggers=[{"type": "event", "name": "a"}], options={}, version="1"
        )
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    yield Ingester(db, direct, batch_size=100, max_event_bytes=1024, log=structlog.get_logger())
    direct.close()


def _events(db: Database, n: int) -> None:
    execute(
        db, "INSERT INTO orchestrator.events (name) SELECT 'a' FROM generate_series(1, :n)", n=n
    )


def _claimer(limit: int) -> Any:
    def claim(conn: Any) -> Callable[[], set[str]]:
        sent = runs.claim_due_sent(
            conn, owner=OWNER, limit=limit, lease_seconds=30, function_ids=["f"]
        )
        return lambda: {c.id for c in sent()}

    return claim


def _statuses(db: Database) -> dict[str, int]:
    rows = execute(db, "SELECT status, count(*) FROM orchestrator.runs GROUP BY status")
    return {str(status): int(count) for status, count in rows}


def test_ingest__claims_in_the_same_transaction(db: Database, ingester: Ingester) -> None:
    _events(db, 3)
    assert ingester.tick(then=_claimer(2)) == 3
    assert _statuses(db) == {"running": 2, "queued": 1}
    owners = execute(
        db, "SELECT DISTINCT lease_owner::text FROM orchestrator.runs WHERE status = 'running'"
    )
    assert owners == [(OWNER,)]
    pending = execute(db, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL")
    assert pending == [(0,)]


def test_ingest__a_failing_claim_rolls_the_ingest_back(db: Database, ingester: Ingester) -> None:
    _events(db, 3)

    def fail(conn: Any) -> Callable[[], set[str]]:
        _claimer(3)(conn)
        raise RuntimeError("claim failed")

    with pytest.raises(RuntimeError, match="claim failed"):
        ingester.tick(then=fail)
    assert _statuses(db) == {}
    pending = execute(db, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL")
    assert pending == [(3,)]
    assert ingester.tick(then=_claimer(3)) == 3  # nothing was lost: a retry ingests them all
    assert _statuses(db) == {"running": 3}


def test_ingest__wakes_other_daemons_only_for_runs_left_unclaimed(
    db: Database, ingester: Ingester
) -> None:
    with psycopg.connect(libpq_url(db.url), autocommit=True) as listener:
        listener.execute("LISTEN orchestrator_runs")
        _events(db, 2)
        assert ingester.tick(then=_claimer(10)) == 2  # both claimed here: nobody to wake
        _events(db, 3)
        assert ingester.tick(then=_claimer(1)) == 3  # two left for other daemons
        _events(db, 1)
        assert ingester.tick(then=None) == 1  # nothing claimed
        # The listener sees notifications in commit order. Exactly the second and third
        # ingests sent one, so the first never did.
        received: list[str] = []

        def two_received() -> bool:
            received.extend(n.channel for n in listener.notifies(timeout=0.1, stop_after=2))
            return len(received) >= 2

        eventually(two_received, timeout=10, what="two NOTIFYs from the ingests")
        assert received == ["orchestrator_runs", "orchestrator_runs"]
        assert list(listener.notifies(timeout=0.3)) == []  # and no third one
    assert _statuses(db) == {"running": 3, "queued": 3}


def test_ingest__a_statement_failing_in_the_committing_round_trip_loses_nothing(
    db: Database, ingester: Ingester
) -> None:
    """An error the server raises in the round trip that carries the COMMIT (here, in the
    claim) rolls the whole batch back, and the next ingest on the same connection works."""
    _events(db, 3)

    def failing(conn: Any) -> Callable[[], set[str]]:
        cursor = conn.execute("SELECT 1 / 0")
        return lambda: set(cursor.fetchall())

    with pytest.raises(psycopg.errors.DivisionByZero):
        ingester.tick(then=failing)
    assert _statuses(db) == {}
    pending = execute(db, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL")
    assert pending == [(3,)]
    assert ingester.tick(then=_claimer(3)) == 3
    assert _statuses(db) == {"running": 3}


def test_ingest__a_wait_the_batch_resolves_takes_the_longer_way_and_resolves_it(
    db: Database, ingester: Ingester
) -> None:
    """An event matching a stored wait resolves it in the same transaction as the runs it
    starts (the ingest reads the resolution's answer before it commits)."""
    execute(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status, due_at) VALUES "
        "('00000000-0000-0000-0000-000000000001', 'g', 'waiting', 'infinity')",
    )
    execute(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) VALUES "
        "('00000000-0000-0000-0000-000000000001', 'w', 0, 'wait', 'waiting')",
    )
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) VALUES ('00000000-0000-0000-0000-000000000001', 'w', 'event', "
        "'a', '', 'null', now() - interval '1 minute')",
    )
    _events(db, 2)
    assert ingester.tick(then=_claimer(5)) == 2
    assert _statuses(db) == {"running": 2, "queued": 1}  # two new runs, and the woken one
    assert execute(db, "SELECT count(*) FROM orchestrator.waits") == [(0,)]


# cancel_on conditions that an event ingested before them meets


def _cancellable(db: Database, *, expression: str | None = None) -> None:
    spec: dict[str, Any] = {"event": "order/cancelled", "match": "data.id"}
    if expression is not None:
        spec["if"] = expression
    with db.transaction() as conn:
        functions.upsert(
            conn,
            "ship",
            triggers=[{"type": "event", "name": "order/created"}],
            options={"cancel_on": [spec]},
            version="1",
        )


def _send(conn: Any, name: str, data: str) -> None:
    conn.execute(
        "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s::jsonb)", (name, data)
    )


def _ship_statuses(db: Database) -> list[tuple[str, str]]:
    rows = execute(
        db,
        "SELECT events -> 0 -> 'data' ->> 'id', status FROM orchestrator.runs "
        "WHERE function_id = 'ship' ORDER BY 1",
    )
    return [(str(i), str(s)) for i, s in rows]


def test_ingest__a_cancel_event_ingested_before_the_run_was_made_still_cancels_it(
    db: Database, ingester: Ingester
) -> None:
    """The triggering event's INSERT commits after the cancellation's (received later, so
    ingested first, when no condition was stored yet): the run is made and cancelled by the
    same ingest. An event for another order, or one received before the trigger, does not."""
    _cancellable(db)
    url = libpq_url(db.url)
    with psycopg.connect(url, autocommit=True) as other:
        _send(other, "order/cancelled", '{"id": 0}')  # before the trigger: not a cancel
    assert ingester.tick() == 1
    with psycopg.connect(url) as slow:
        _send(slow, "order/created", '{"id": 0}')
        _send(slow, "order/created", '{"id": 1}')
        _send(slow, "order/created", '{"id": 2}')
        with psycopg.connect(url, autocommit=True) as other:
            _send(other, "order/cancelled", '{"id": 1}')
        assert ingester.tick() == 1  # only the cancellation is visible: no run to cancel yet
        slow.commit()
    assert ingester.tick() == 3
    assert _ship_statuses(db) == [("0", "queued"), ("1", "cancelled"), ("2", "queued")]
    (reason,) = execute(
        db, "SELECT error ->> 'message' FROM orchestrator.runs WHERE status = 'cancelled'"
    )
    assert "cancel_on" in str(reason[0])


def test_ingest__a_cancel_event_being_ingested_elsewhere_is_waited_for_then_cancels(
    db: Database, ingester: Ingester
) -> None:
    """Another daemon holds the cancel event's name (its ingest is in flight): the ingest
    that makes the run waits for it to commit, then finds the event it ingested."""
    _cancellable(db)
    url = libpq_url(db.url)
    with psycopg.connect(url, autocommit=True) as sender:
        _send(sender, "order/created", '{"id": 7}')
        _send(sender, "order/cancelled", '{"id": 7}')
    (seq,) = execute(db, "SELECT seq FROM orchestrator.events WHERE name = 'order/cancelled'")
    errors: list[BaseException] = []
    with psycopg.connect(url) as elsewhere:
        # the other daemon's ingest: the cancellation taken, its name locked, not committed
        elsewhere.execute(
            "SELECT seq FROM orchestrator.events WHERE seq = %s FOR UPDATE", (seq[0],)
        )
        elsewhere.execute(
            "SELECT pg_advisory_xact_lock(%s, hashtext('order/cancelled'))",
            (waits.WAIT_LOCK_CLASS,),
        )
        elsewhere.execute(
            "UPDATE orchestrator.events SET ingested_at = now() WHERE seq = %s", (seq[0],)
        )

        def ingest() -> None:
            try:
                ingester.tick()
            except BaseException as exc:  # reported below
                errors.append(exc)

        worker = threading.Thread(target=ingest)
        worker.start()
        eventually(lambda: advisory_waiters(db) == 1, timeout=10, what="the ingest to wait")
        elsewhere.commit()
        worker.join(timeout=20)
    assert not worker.is_alive() and errors == []
    assert _ship_statuses(db) == [("7", "cancelled")]


def test_ingest__a_late_cancel_event_must_satisfy_the_conditions_expression(
    db: Database, ingester: Ingester
) -> None:
    _cancellable(db, expression="async.data.reason == 'fraud'")
    url = libpq_url(db.url)
    with psycopg.connect(url) as slow:
        _send(slow, "order/created", '{"id": 1}')
        _send(slow, "order/created", '{"id": 2}')
        with psycopg.connect(url, autocommit=True) as other:
            _send(other, "order/cancelled", '{"id": 1, "reason": "fraud"}')
            _send(other, "order/cancelled", '{"id": 2, "reason": "changed mind"}')
        assert ingester.tick() == 2
        slow.commit()
    assert ingester.tick() == 2
    assert _ship_statuses(db) == [("1", "cancelled"), ("2", "queued")]
