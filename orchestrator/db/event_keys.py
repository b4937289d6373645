"""Statements on `orchestrator.event_keys`: the keys of the Inngest event API (`POST /e/{key}`).

A key is 32 random bytes, url-safe base64, shown once when created; the table holds only its
SHA-256 digest, so a key is found by the digest of what a sender presents (a high-entropy
secret hashed: comparing digests leaks nothing useful about the key). A revoked key keeps its
row, so its name stays taken and `list` shows when it went. The read-only role cannot read
the table (db/roles.py SECRET_TABLES).

Every time a statement records or compares is `coalesce(:p_now, now())` (db/clock.py).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.errors import EventKeyError, NameTakenError, UsageError

T = TypeVar("T")

_NOW = clock.SQL_TEXT
KEY_NAME = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
KEY_BYTES = 32
TOUCH_EVERY = "interval '1 minute'"  # last_used_at moves at most this often
_COLUMNS = "id::text, name, created_at, last_used_at, revoked_at"


@dataclass(frozen=True)
class EventKey:
    id: str
    name: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def new_key() -> tuple[str, bytes]:
    """A fresh key and its digest: (the key, shown once; the digest, stored)."""
    key = secrets.token_urlsafe(KEY_BYTES)
    return key, digest(key)


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def check_name(name: str) -> None:
    if not KEY_NAME.fullmatch(name):
        raise UsageError(
            f"event key name {name!r} is not allowed; use 1-64 lowercase letters, digits and "
            "._@-, starting with a letter or digit"
        )


def create(conn: Connection, name: str) -> str:
    """Record a new key named `name` and return it (the only time it is visible);
    `NameTakenError` if the name is taken, revoked keys included."""
    check_name(name)
    key, key_hash = new_key()
    made = conn.execute(
        text(
            "INSERT INTO orchestrator.event_keys (name, key_hash, created_at) "
            f"VALUES (:p_name, :p_hash, {_NOW}) ON CONFLICT (name) DO NOTHING RETURNING id"
        ),
        {"p_name": name, "p_hash": key_hash, "p_now": clock.current()},
    ).scalar()
    if made is None:
        raise NameTakenError(
            f"an event key named {name!r} exists already (revoked keys keep their name); "
            "pick another name"
        )
    return key


_LOOKUP = text(
    f"""
    WITH found AS (
        SELECT id, name, key_hash, created_at, last_used_at, revoked_at
        FROM orchestrator.event_keys
        WHERE key_hash = :p_hash AND revoked_at IS NULL
    ), touched AS (
        UPDATE orchestrator.event_keys k SET last_used_at = {_NOW}
        FROM found
        WHERE k.id = found.id
          AND (found.last_used_at IS NULL OR found.last_used_at < {_NOW} - {TOUCH_EVERY})
    )
    SELECT id::text, name, key_hash, created_at, last_used_at, revoked_at FROM found
    """
)


def lookup(conn: Connection, key: str) -> EventKey | None:
    """The unrevoked key `key`, or None; records its use (at most once a minute)."""
    wanted = digest(key)
    row = conn.execute(_LOOKUP, {"p_hash": wanted, "p_now": clock.current()}).first()
    if row is None or not hmac.compare_digest(bytes(row[2]), wanted):
        return None
    return EventKey(row[0], row[1], row[3], row[4], row[5])


def run_with(conn: Connection, key: str | None, work: Callable[[Connection], T]) -> T:
    """`work(conn)` if `key` is an unrevoked key (None: no key is checked, dev mode), in the
    caller's transaction; else EventKeyError before anything is written."""
    if key is not None and lookup(conn, key) is None:
        raise EventKeyError(
            "the event key is unknown or revoked; create one with "
            "`orchestrator event-keys create NAME` and give it to the app as INNGEST_EVENT_KEY"
        )
    return work(conn)


def revoke(conn: Connection, name: str) -> bool:
    """Revoke the key; False if there is no unrevoked key of that name."""
    revoked = conn.execute(
        text(
            f"UPDATE orchestrator.event_keys SET revoked_at = {_NOW} "
            "WHERE name = :p_name AND revoked_at IS NULL"
        ),
        {"p_name": name, "p_now": clock.current()},
    )
    return revoked.rowcount > 0


def list_all(conn: Connection) -> list[EventKey]:
    """Every key, revoked ones too, by name (never the key itself, which is not stored)."""
    rows = conn.execute(text(f"SELECT {_COLUMNS} FROM orchestrator.event_keys ORDER BY name"))
    return [EventKey(*row) for row in rows]
