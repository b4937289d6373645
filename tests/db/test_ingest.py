"""The ingest transaction: events fan out to runs, and the daemon's claim shares its commit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import structlog

from orchestrator.db import functions, runs
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.runtime.ingest import Ingester
from tests.conftest import eventually
from tests.db.helpers import execute

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
