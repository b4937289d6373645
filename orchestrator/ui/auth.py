"""Passwords, sessions, API tokens, and the failed-login limiter.

Secrets never reach the database in the clear: a password is stored as an argon2id hash, a
session id or API token (32 random bytes, URL-safe base64 to the client) as its SHA-256
digest, so a copy of the tables lets nobody in. A failed login counts against the name and
the client address; past `limit` failures in `window` seconds the limiter refuses (429) even
a correct password, until the oldest failure ages out.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from orchestrator.db import ui_auth
from orchestrator.errors import OrchestratorError

if TYPE_CHECKING:
    from orchestrator.db.database import Database

COOKIE = "orchestrator_session"
MIN_PASSWORD = 12
WINDOW = 15 * 60.0
DEFAULT_TTL = 43200.0
ROLES = ("viewer", "operator")

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters
# verified when the name is unknown, so that a wrong name takes as long as a wrong password
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


class LoginFailed(OrchestratorError):
    """The name is unknown or the password wrong (the message does not say which)."""

    code = "login_failed"


class TooManyAttempts(OrchestratorError):
    """Too many failed logins for this name or from this client; try again later."""

    code = "too_many_attempts"


def hash_password(password: str) -> str:
    check_password(password)
    return _hasher.hash(password)


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise OrchestratorError(
            f"the password has {len(password)} characters; use at least {MIN_PASSWORD}"
        )


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def new_secret() -> tuple[str, bytes]:
    """A new session id or API token: (what the client holds, what the database keeps)."""
    plaintext = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return plaintext, digest(plaintext)


new_token = new_secret


def digest(plaintext: str) -> bytes:
    return hashlib.sha256(plaintext.encode()).digest()


class LoginLimiter:
    """Failed logins per (name, client) and per client, in a sliding window; in memory, so
    each UI process counts its own (a restart forgets)."""

    def __init__(self, limit: int = 5, window: float = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[tuple[str, str], deque[float]] = {}
        self._lock = threading.Lock()

    def _keys(self, name: str, client: str) -> list[tuple[tuple[str, str], int]]:
        # a client trying many names is slowed too, at a looser limit
        return [((name, client), self.limit), (("", client), self.limit * 4)]

    def blocked(self, name: str, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(len(self._recent(key, now)) >= cap for key, cap in self._keys(name, client))

    def failed(self, name: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key, _ in self._keys(name, client):
                self._recent(key, now).append(now)

    def succeeded(self, name: str, client: str) -> None:
        with self._lock:
            self._failures.pop((name, client), None)

    def _recent(self, key: tuple[str, str], now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times


DEFAULT_LIMITER = LoginLimiter()


def login(
    db: Database,
    name: str,
    password: str,
    client: str,
    *,
    ttl_seconds: float = DEFAULT_TTL,
    limiter: LoginLimiter = DEFAULT_LIMITER,
) -> tuple[str, ui_auth.UiSession]:
    """Check the password and open a session: (the cookie's value, the session). Raises
    `TooManyAttempts` once the limiter says so, `LoginFailed` on a wrong name or password."""
    if limiter.blocked(name, client):
        raise TooManyAttempts(
            f"too many failed logins; try again in {limiter.window / 60:g} minutes"
        )
    user = db.run(lambda conn: ui_auth.get_user(conn, name))
    if not verify_password(user.password_hash if user else _DUMMY_HASH, password) or not user:
        limiter.failed(name, client)
        raise LoginFailed("wrong name or password")
    limiter.succeeded(name, client)
    cookie, id_hash = new_secret()
    csrf = secrets.token_urlsafe(32)
    db.run(lambda conn: ui_auth.create_session(conn, id_hash, user.name, csrf, ttl_seconds))
    session = db.run(lambda conn: ui_auth.get_session(conn, id_hash))
    assert session is not None  # just made, with a positive lifetime
    return cookie, session


def logout(db: Database, cookie: str) -> None:
    db.run(lambda conn: ui_auth.delete_session(conn, digest(cookie)))


def session_of(db: Database, cookie: str) -> ui_auth.UiSession | None:
    return db.run(lambda conn: ui_auth.get_session(conn, digest(cookie)))


def token_of(db: Database, token: str) -> ui_auth.UiToken | None:
    return db.run(lambda conn: ui_auth.token_by_hash(conn, digest(token)))
