"""Statements on the dashboard's accounts: `ui_users`, `ui_sessions`, `ui_tokens`.

Secrets never reach the database in the clear: a password arrives as its argon2id hash, a
session cookie and an API token as the sha256 digest of their random bytes (the web layer,
orchestrator/ui/auth.py, makes them). The read-only role cannot read these tables
(db/roles.py); the dashboard reads and writes them with the runtime role.

Every time a statement records or compares is `coalesce(:p_now, now())` (db/clock.py).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, text

from orchestrator.db import clock
from orchestrator.errors import UsageError, UserExistsError

_NOW = clock.SQL_TEXT
USER_NAME = re.compile(r"[a-z0-9][a-z0-9_.@-]{0,63}")
ROLES = ("viewer", "operator")
TOUCH_EVERY = "interval '1 minute'"  # last_seen_at / last_used_at move at most this often


@dataclass(frozen=True)
class UiUser:
    name: str
    role: str
    password_hash: str
    created_at: datetime


@dataclass(frozen=True)
class UiSession:
    user_name: str
    role: str
    csrf_token: str
    expires_at: datetime


@dataclass(frozen=True)
class UiToken:
    id: str
    name: str
    role: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def _check(name: str, role: str | None = None) -> None:
    if not USER_NAME.fullmatch(name):
        raise UsageError(
            f"user name {name!r} is not allowed; use 1-64 lowercase letters, digits and . _ @ -, "
            "starting with a letter or digit"
        )
    if role is not None and role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")


# -- users --------------------------------------------------------------------------------

_USER_COLUMNS = "name, role, password_hash, created_at"


def add_user(conn: Connection, name: str, password_hash: str, role: str) -> None:
    """Add a user; `UserExistsError` if the name is taken (the transaction stays usable)."""
    _check(name, role)
    added = conn.execute(
        text(
            "INSERT INTO orchestrator.ui_users (name, password_hash, role, created_at, "
            f"updated_at) VALUES (:p_name, :p_hash, :p_role, {_NOW}, {_NOW}) "
            "ON CONFLICT (name) DO NOTHING RETURNING name"
        ),
        {"p_name": name, "p_hash": password_hash, "p_role": role, "p_now": clock.current()},
    ).first()
    if added is None:
        raise UserExistsError(
            f"dashboard user {name!r} exists already; change its password with "
            f"`orchestrator ui-user passwd {name}` or pick another name"
        )


def _update_user(conn: Connection, name: str, assignment: str, value: str) -> bool:
    changed = conn.execute(
        text(
            f"UPDATE orchestrator.ui_users SET {assignment} = :p_value, updated_at = {_NOW} "
            "WHERE name = :p_name"
        ),
        {"p_value": value, "p_name": name, "p_now": clock.current()},
    )
    return changed.rowcount > 0


def set_password(conn: Connection, name: str, password_hash: str) -> bool:
    """Replace the user's password hash; False if there is no such user. Their sessions go
    on (log them out with `remove_user` and adding them back, or let them expire)."""
    return _update_user(conn, name, "password_hash", password_hash)


def set_role(conn: Connection, name: str, role: str) -> bool:
    """Change the user's role (sessions see it on their next request); False if unknown."""
    _check(name, role)
    return _update_user(conn, name, "role", role)


def remove_user(conn: Connection, name: str) -> bool:
    """Remove the user and, by the foreign key's cascade, their sessions."""
    removed = conn.execute(
        text("DELETE FROM orchestrator.ui_users WHERE name = :p_name"), {"p_name": name}
    )
    return removed.rowcount > 0


def get_user(conn: Connection, name: str) -> UiUser | None:
    row = conn.execute(
        text(f"SELECT {_USER_COLUMNS} FROM orchestrator.ui_users WHERE name = :p_name"),
        {"p_name": name},
    ).first()
    return UiUser(*row) if row else None


def list_users(conn: Connection) -> list[UiUser]:
    rows = conn.execute(text(f"SELECT {_USER_COLUMNS} FROM orchestrator.ui_users ORDER BY name"))
    return [UiUser(*row) for row in rows]


def count_users(conn: Connection) -> int:
    return int(conn.execute(text("SELECT count(*) FROM orchestrator.ui_users")).scalar_one())


# -- sessions -----------------------------------------------------------------------------


def create_session(
    conn: Connection, id_hash: bytes, user_name: str, csrf_token: str, ttl_seconds: float
) -> None:
    """A session of `user_name` ending `ttl_seconds` from now."""
    conn.execute(
        text(
            "INSERT INTO orchestrator.ui_sessions (id_hash, user_name, csrf_token, created_at, "
            f"expires_at, last_seen_at) VALUES (:p_id, :p_user, :p_csrf, {_NOW}, "
            f"{_NOW} + make_interval(secs => :p_ttl), {_NOW})"
        ),
        {
            "p_id": id_hash,
            "p_user": user_name,
            "p_csrf": csrf_token,
            "p_ttl": float(ttl_seconds),
            "p_now": clock.current(),
        },
    )


# The session and its user's current role; the UPDATE in the same statement moves
# last_seen_at when it is a minute old, so a busy page does not write on every request.
_GET_SESSION = text(
    f"""
    WITH found AS (
        SELECT s.id_hash, s.user_name, u.role, s.csrf_token, s.expires_at, s.last_seen_at
        FROM orchestrator.ui_sessions s JOIN orchestrator.ui_users u ON u.name = s.user_name
        WHERE s.id_hash = :p_id AND s.expires_at > {_NOW}
    ), touched AS (
        UPDATE orchestrator.ui_sessions s SET last_seen_at = {_NOW}
        FROM found WHERE s.id_hash = found.id_hash
          AND found.last_seen_at <= {_NOW} - {TOUCH_EVERY}
    )
    SELECT user_name, role, csrf_token, expires_at FROM found
    """
)


def get_session(conn: Connection, id_hash: bytes) -> UiSession | None:
    """The live session with this id hash, or None (unknown, expired, or its user removed)."""
    row = conn.execute(_GET_SESSION, {"p_id": id_hash, "p_now": clock.current()}).first()
    return UiSession(*row) if row else None


def delete_session(conn: Connection, id_hash: bytes) -> None:
    conn.execute(
        text("DELETE FROM orchestrator.ui_sessions WHERE id_hash = :p_id"), {"p_id": id_hash}
    )


def purge_sessions(conn: Connection) -> int:
    """Delete the expired sessions; returns how many."""
    purged = conn.execute(
        text(f"DELETE FROM orchestrator.ui_sessions WHERE expires_at <= {_NOW}"),
        {"p_now": clock.current()},
    )
    return purged.rowcount


# -- API tokens ---------------------------------------------------------------------------

_TOKEN_COLUMNS = "id::text, name, role, created_at, last_used_at, revoked_at"


def create_token(conn: Connection, name: str, token_hash: bytes, role: str) -> str:
    """Record a token under a unique `name` (`UserExistsError` if taken); returns its id."""
    if role not in ROLES:
        raise UsageError(f"role {role!r} is not one of {', '.join(ROLES)}")
    made = conn.execute(
        text(
            "INSERT INTO orchestrator.ui_tokens (name, token_hash, role, created_at) "
            f"VALUES (:p_name, :p_hash, :p_role, {_NOW}) ON CONFLICT (name) DO NOTHING "
            "RETURNING id::text"
        ),
        {"p_name": name, "p_hash": token_hash, "p_role": role, "p_now": clock.current()},
    ).scalar()
    if made is None:
        raise UserExistsError(
            f"an API token named {name!r} exists already (revoked tokens keep their name); "
            "pick another name"
        )
    return str(made)


_TOKEN_BY_HASH = text(
    f"""
    WITH found AS (
        SELECT id, name, role, created_at, last_used_at, revoked_at FROM orchestrator.ui_tokens
        WHERE token_hash = :p_hash AND revoked_at IS NULL
    ), touched AS (
        UPDATE orchestrator.ui_tokens t SET last_used_at = {_NOW}
        FROM found WHERE t.id = found.id
          AND (found.last_used_at IS NULL OR found.last_used_at <= {_NOW} - {TOUCH_EVERY})
    )
    SELECT {_TOKEN_COLUMNS} FROM found
    """
)


def token_by_hash(conn: Connection, token_hash: bytes) -> UiToken | None:
    """The unrevoked token with this hash, or None; records its use (at most once a minute)."""
    row = conn.execute(_TOKEN_BY_HASH, {"p_hash": token_hash, "p_now": clock.current()}).first()
    return UiToken(*row) if row else None


def revoke_token(conn: Connection, name: str) -> bool:
    """Revoke the token; False if there is no unrevoked token of that name."""
    revoked = conn.execute(
        text(
            f"UPDATE orchestrator.ui_tokens SET revoked_at = {_NOW} "
            "WHERE name = :p_name AND revoked_at IS NULL"
        ),
        {"p_name": name, "p_now": clock.current()},
    )
    return revoked.rowcount > 0


def list_tokens(conn: Connection) -> list[UiToken]:
    """Every token, revoked ones too, by name."""
    rows = conn.execute(text(f"SELECT {_TOKEN_COLUMNS} FROM orchestrator.ui_tokens ORDER BY name"))
    return [UiToken(*row) for row in rows]
