"""The Inngest event API's keys: created once, stored as digests, looked up, revoked."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from orchestrator.db import clock, event_keys
from orchestrator.db.database import Database
from orchestrator.errors import NameTakenError, UsageError
from tests.e2e.harness import cli

T0 = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.fixture
def pinned() -> Iterator[datetime]:
    clock.set(T0)
    yield T0
    clock.reset()


def test_create__returns_a_long_urlsafe_key_and_stores_only_its_digest(db: Database) -> None:
    key = db.run(lambda conn: event_keys.create(conn, "billing"))
    assert len(key) >= 43 and key.replace("-", "").replace("_", "").isalnum()
    stored = db.run(
        lambda conn: conn.execute(text("SELECT key_hash FROM orchestrator.event_keys")).all()
    )
    assert [bytes(row[0]) for row in stored] == [hashlib.sha256(key.encode()).digest()]
    assert key.encode() not in bytes(stored[0][0])


def test_create__two_keys_differ_and_a_taken_name_is_refused(db: Database) -> None:
    first = db.run(lambda conn: event_keys.create(conn, "a"))
    second = db.run(lambda conn: event_keys.create(conn, "b"))
    assert first != second
    with pytest.raises(NameTakenError, match="exists already") as info:
        db.run(lambda conn: event_keys.create(conn, "a"))
    assert info.value.code == "name_taken"
    assert [k.name for k in db.run(event_keys.list_all)] == ["a", "b"]


@pytest.mark.parametrize("name", ["", "Upper", "-x", "a b", "x" * 65, "é", "a\x00"])
def test_create__refuses_a_bad_name(db: Database, name: str) -> None:
    with pytest.raises(UsageError, match="not allowed"):
        db.run(lambda conn: event_keys.create(conn, name))
    assert db.run(event_keys.list_all) == []


def test_lookup__finds_the_key_and_records_its_use_at_most_once_a_minute(
    db: Database, pinned: datetime
) -> None:
    key = db.run(lambda conn: event_keys.create(conn, "app"))
    found = db.run(lambda conn: event_keys.lookup(conn, key))
    assert found is not None and found.name == "app"
    assert db.run(event_keys.list_all)[0].last_used_at == pinned
    clock.set(pinned + timedelta(seconds=30))
    db.run(lambda conn: event_keys.lookup(conn, key))
    assert db.run(event_keys.list_all)[0].last_used_at == pinned
    clock.set(pinned + timedelta(minutes=2))
    db.run(lambda conn: event_keys.lookup(conn, key))
    assert db.run(event_keys.list_all)[0].last_used_at == pinned + timedelta(minutes=2)


@pytest.mark.parametrize("presented", ["", "nope", "\ud800", "x" * 10_000])
def test_lookup__an_unknown_key_is_none(db: Database, presented: str) -> None:
    key = db.run(lambda conn: event_keys.create(conn, "app"))
    assert db.run(lambda conn: event_keys.lookup(conn, presented)) is None
    assert db.run(lambda conn: event_keys.lookup(conn, key[:-1])) is None


def test_revoke__the_key_stops_working_and_keeps_its_name(db: Database) -> None:
    key = db.run(lambda conn: event_keys.create(conn, "app"))
    assert db.run(lambda conn: event_keys.revoke(conn, "app")) is True
    assert db.run(lambda conn: event_keys.revoke(conn, "app")) is False  # already revoked
    assert db.run(lambda conn: event_keys.revoke(conn, "other")) is False
    assert db.run(lambda conn: event_keys.lookup(conn, key)) is None
    [row] = db.run(event_keys.list_all)
    assert row.revoked_at is not None
    with pytest.raises(NameTakenError):
        db.run(lambda conn: event_keys.create(conn, "app"))


def test_cli__create_prints_the_key_once_list_never_shows_it_revoke(
    db: Database, db_url: str
) -> None:
    made = cli(db_url, "event-keys", "create", "shop", "--json")
    key = json.loads(made.stdout)["key"]
    assert db.run(lambda conn: event_keys.lookup(conn, key)) is not None
    listed = cli(db_url, "event-keys", "list")
    assert listed.returncode == 0 and "shop" in listed.stdout and key not in listed.stdout
    again = cli(db_url, "event-keys", "create", "shop", check=False)
    assert again.returncode != 0 and "exists already" in again.stderr
    cli(db_url, "event-keys", "revoke", "shop")
    assert db.run(lambda conn: event_keys.lookup(conn, key)) is None
    missing = cli(db_url, "event-keys", "revoke", "shop", check=False)
    assert missing.returncode != 0 and "no unrevoked event key" in missing.stderr
