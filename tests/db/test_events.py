from __future__ import annotations

import psycopg
import pytest

from orchestrator.db import events
from orchestrator.db.database import Database, IntegrityError
from tests.db.helpers import execute
from tests.db.plans import generic_plan

pytestmark = pytest.mark.timeout(60)


def test_insert__duplicate_id_creates_nothing(db: Database) -> None:
    with db.transaction() as conn:
        assert events.insert(conn, "a", '{"x": 1}', event_id="e-1", ts=None) == ("e-1", True)
        assert events.insert(conn, "a", '{"x": 2}', event_id="e-1", ts=None) == ("e-1", False)
        row = events.get(conn, "e-1")
    assert row is not None and row.data == {"x": 1}


def test_insert__generates_an_id_when_none_given(db: Database) -> None:
    with db.transaction() as conn:
        event_id, created = events.insert(conn, "a", "{}", event_id=None, ts=None)
    assert created and len(event_id) == 36


@pytest.mark.parametrize("data", ["[1, 2]", '"text"', "null", "42", "true"])
def test_sql_insert__non_object_data_is_rejected(db: Database, data: str) -> None:
    with pytest.raises(IntegrityError) as refused:
        execute(db, f"INSERT INTO orchestrator.events (name, data) VALUES ('a', '{data}')")
    assert isinstance(refused.value.orig, psycopg.errors.CheckViolation)
    assert refused.value.orig.diag.constraint_name == "events_data_is_object"
    assert execute(db, "SELECT count(*) FROM orchestrator.events") == [(0,)]  # nothing written


def test_sql_insert__empty_name_is_rejected(db: Database) -> None:
    with pytest.raises(IntegrityError, match="events_name_length"):
        execute(db, "INSERT INTO orchestrator.events (name, data) VALUES ('', '{}')")


def test_claim_pending__oldest_first_and_skips_locked(db: Database) -> None:
    for i in range(5):
        execute(db, "INSERT INTO orchestrator.events (id, name) VALUES (:i, 'a')", i=f"e{i}")
    with db.transaction() as a, db.transaction() as b:
        first = events.claim_pending(a, 3)
        second = events.claim_pending(b, 3)
    assert [e.id for e in first] == ["e0", "e1", "e2"]
    assert [e.id for e in second] == ["e3", "e4"]


def test_park_and_mark_ingested__leave_pending_empty(db: Database) -> None:
    for i in range(2):
        execute(db, "INSERT INTO orchestrator.events (id, name) VALUES (:i, 'a')", i=f"e{i}")
    with db.transaction() as conn:
        events.park(conn, "e0", "too big")
        events.mark_ingested(conn, ["e1"])
    with db.transaction() as conn:
        assert events.claim_pending(conn, 10) == []
        parked = events.get(conn, "e0")
    assert parked is not None and parked.error == "too big" and parked.ingested_at is not None


def test_insert__notifies_listeners_once_per_statement(db: Database, db_url: str) -> None:
    import psycopg

    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN orchestrator_events")
        execute(db, "INSERT INTO orchestrator.events (name) SELECT 'a' FROM generate_series(1, 50)")
        got = list(listener.notifies(timeout=2, stop_after=2))
    assert len(got) == 1


def test_mark_ingested__never_prepared(db_url: str) -> None:
    """A plan cached while the table is small (a daemon starting on a quiet table) would stay a
    sequential scan comparing every event with every id as the table grows."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")  # as the ingest plans
        for i in range(8):  # more than psycopg's threshold for preparing a statement
            events.mark_ingested(conn, [f"e{i}"])
        prepared = conn.execute(
            "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE '%events SET%'"
        ).fetchone()
    assert prepared == (0,)


def test_mark_ingested__probes_the_primary_key_of_a_grown_table(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.events (name) SELECT 'a' FROM generate_series(1, 5000)"
        )
        ids = [row[0] for row in conn.execute("SELECT id FROM orchestrator.events LIMIT 500")]
        plan = generic_plan(conn, events._MARK_INGESTED, {"ids": ids, "now": None}, _MARK_TYPES)
        marked = conn.execute(
            "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NOT NULL"
        ).fetchone()
    assert "events_pkey" in plan and "Seq Scan" not in plan, plan
    assert marked == (0,)  # the plan's transaction was rolled back


_MARK_TYPES = {"ids": "text[]", "now": "timestamptz"}


def test_claim_pending_sent__takes_the_names_locks_and_notes_the_events(
    db: Database, db_url: str
) -> None:
    """Oldest first and skipping locked rows (as `claim_pending`); while its transaction is
    open, the exclusive lock of each name taken is held, and `PENDING_SEQS` gives the events'
    seqs in that transaction only."""
    for i, name in enumerate(["a", "b", "a", "c"]):
        execute(db, "INSERT INTO orchestrator.events (id, name) VALUES (:i, :n)", i=f"e{i}", n=name)
    lock = "SELECT pg_try_advisory_xact_lock_shared(%s, hashtext(%s))"
    with (
        psycopg.connect(db_url, autocommit=True) as taker,
        psycopg.connect(db_url, autocommit=True) as other,
    ):
        with taker.transaction():
            taken = events.claim_pending_sent(taker, 3, max_bytes=1000, lock_class=77)()
            noted = taker.execute(f"SELECT {events.PENDING_SEQS}").fetchone()
            with other.transaction():
                held = {n: not other.execute(lock, (77, n)).fetchone()[0] for n in "abc"}  # type: ignore[index]
                rest = events.claim_pending(other, 10)
        assert taker.execute(f"SELECT {events.PENDING_SEQS}").fetchone() == ([],)
    assert [e.id for e in taken] == ["e0", "e1", "e2"]
    assert noted == ([e.seq for e in taken],)
    assert held == {"a": True, "b": True, "c": False}
    assert [e.id for e in rest] == ["e3"]
