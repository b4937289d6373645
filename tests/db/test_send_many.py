"""`send_many`: one statement per batch, ids in input order, duplicates skipped, every event
checked before anything is written."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from orchestrator import Orchestrator
from orchestrator.client import BATCH_CHARS, BATCH_ROWS, batches, new_event
from orchestrator.db.database import Database
from orchestrator.errors import InvalidEventError
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def app(db_url: str) -> Any:
    app = Orchestrator(db_url)
    yield app
    app.close()


def _events(db: Database) -> list[tuple[str, str, Any]]:
    """(id, name, data) of every event, in the order they will be ingested."""
    rows = execute(db, "SELECT id, name, data FROM orchestrator.events ORDER BY seq")
    return [(str(r[0]), str(r[1]), r[2]) for r in rows]


def test_send_many__returns_ids_in_input_order_and_records_in_that_order(
    app: Orchestrator, db: Database
) -> None:
    ids = app.send_many(
        [
            {"name": "a", "data": {"i": 0}},
            {"name": "b", "data": {"i": 1}, "id": "chosen"},
            {"name": "c"},
        ]
    )
    assert ids[1] == "chosen" and len(set(ids)) == 3
    assert _events(db) == [(ids[0], "a", {"i": 0}), ("chosen", "b", {"i": 1}), (ids[2], "c", {})]


def test_send_many__a_duplicate_id_is_returned_and_creates_nothing(
    app: Orchestrator, db: Database
) -> None:
    app.send("a", {"v": "old"}, id="known")
    ids = app.send_many(
        [
            {"name": "a", "data": {"v": "new"}, "id": "known"},  # in the table already
            {"name": "a", "data": {"v": 1}, "id": "twice"},
            {"name": "a", "data": {"v": 2}, "id": "twice"},  # repeated within the call
        ]
    )
    assert ids == ["known", "twice", "twice"]
    assert _events(db) == [("known", "a", {"v": "old"}), ("twice", "a", {"v": 1})]


def test_send_many__ten_thousand_events_in_one_call(app: Orchestrator, db: Database) -> None:
    events = [{"name": "bulk", "data": {"i": i}} for i in range(10_000)]
    ids = app.send_many(events)
    assert len(ids) == len(set(ids)) == 10_000
    rows = execute(db, "SELECT id, (data->>'i')::int FROM orchestrator.events ORDER BY seq")
    assert rows == [(event_id, i) for i, event_id in enumerate(ids)]


def test_send_many__one_bad_event_names_its_index_and_nothing_is_written(
    app: Orchestrator, db: Database
) -> None:
    good = [{"name": "a", "data": {"i": i}} for i in range(1500)]  # two batches' worth
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": "a", "data": {"s": {1, 2}}}, r"^events\[1500\]: event 'a' data contains a set"),
        ({"name": "", "data": {}}, r"^events\[1500\]: event name must be"),
        ({"name": "a", "data": [1]}, r"^events\[1500\]: event data must be a JSON object"),
        ({"name": "a", "id": 7}, r"^events\[1500\]: event id must be"),
        ({"name": "a", "ts": "2024-01-01"}, r"^events\[1500\]: event ts must be a datetime"),
        ({"data": {}}, r"^events\[1500\] has no 'name'"),
        ({"name": "a", "dat": {}}, r"^events\[1500\] has unknown keys \['dat'\]"),
    ]
    for bad, message in cases:
        with pytest.raises(InvalidEventError, match=message):
            app.send_many([*good, bad, *good])
    assert _events(db) == []


def test_send_many__an_event_over_max_event_bytes_is_refused(db_url: str, db: Database) -> None:
    from orchestrator.config import Config

    app = Orchestrator(db_url, config=Config(max_event_bytes=100))
    with pytest.raises(InvalidEventError, match=r"^events\[1\]: .*100"):
        app.send_many([{"name": "a"}, {"name": "a", "data": {"x": "y" * 200}}])
    assert _events(db) == []
    app.close()


def test_send_many__only_dicts(app: Orchestrator, db: Database) -> None:
    with pytest.raises(TypeError, match=r"^events\[1\] is a tuple; each event is a dict"):
        app.send_many([{"name": "a"}, ("a", {})])  # type: ignore[list-item]
    for not_a_list in ({"name": "a"}, "a", 3):
        with pytest.raises(TypeError, match=r"^events must be a list of dicts"):
            app.send_many(not_a_list)  # type: ignore[arg-type]
    assert _events(db) == []


def test_send_many__an_empty_list_writes_nothing(app: Orchestrator, db: Database) -> None:
    assert app.send_many([]) == []
    assert app.send_many(iter([{"name": "a", "id": "from-an-iterator"}])) == ["from-an-iterator"]
    assert [e[0] for e in _events(db)] == ["from-an-iterator"]


def test_send_many__keeps_each_events_ts(app: Orchestrator, db: Database) -> None:
    when = datetime(2024, 5, 1, 12, 30, tzinfo=UTC)
    [given, now] = app.send_many([{"name": "a", "ts": when}, {"name": "a"}])
    rows = dict(execute(db, "SELECT id, ts FROM orchestrator.events"))
    assert rows[given] == when
    assert rows[now] > when


def test_send_many__in_the_callers_transaction_all_or_nothing(
    app: Orchestrator, db: Database, db_url: str
) -> None:
    with psycopg.connect(db_url) as conn:
        app.send_many([{"name": "a", "data": {"i": i}} for i in range(2500)], conn=conn)
        conn.rollback()
        assert _events(db) == []
        ids = app.send_many([{"name": "a", "data": {"i": i}} for i in range(2500)], conn=conn)
        conn.commit()
    assert [e[0] for e in _events(db)] == ids


# -- how events are cut into statements (plain code) ---------------------------------------------


def _sized(n: int, chars: int) -> list[Any]:
    return [new_event("a", {"s": "x" * chars}, f"e{i}", None, 2**31) for i in range(n)]


def test_batches__at_most_batch_rows_events_in_order() -> None:
    items = _sized(2 * BATCH_ROWS + 1, 1)
    cut = list(batches(items))
    assert [len(b) for b in cut] == [BATCH_ROWS, BATCH_ROWS, 1]
    assert [e for b in cut for e in b] == items


def test_batches__bounded_by_size_and_a_big_event_alone() -> None:
    big = _sized(1, BATCH_CHARS)[0]
    small = _sized(3, BATCH_CHARS // 3)
    cut = list(batches([*small, big, small[0]]))
    assert [len(b) for b in cut] == [2, 1, 1, 1]
    assert cut[2] == [big]
