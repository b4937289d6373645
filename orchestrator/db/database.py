"""A database handle: an engine, transactions, and retries over transient connection errors."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import psycopg
from sqlalchemy import Connection, Engine
from sqlalchemy import exc as sa_exc

from orchestrator.db.connect import make_engine
from orchestrator.redact import redact_url

T = TypeVar("T")

# Errors after which the same statement may succeed on a new connection (server restart,
# terminated backend, network blip). Anything else is a bug or bad data and is not retried.
# psycopg's own errors come from the direct connections of the hot path (db/direct.py).
TransientError = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    psycopg.OperationalError,
    psycopg.InterfaceError,
)
DatabaseError = (sa_exc.SQLAlchemyError, psycopg.Error)
IntegrityError = sa_exc.IntegrityError


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TransientError):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)


def retry_transient(
    attempt: Callable[[], T], *, retry_for: float, reset: Callable[[], None] | None = None
) -> T:
    """Call `attempt`; on a transient error call `reset` (if given) and try again, with
    jittered exponential back-off, for up to `retry_for` seconds. Other errors propagate."""
    deadline = time.monotonic() + retry_for
    delay = 0.05
    while True:
        try:
            return attempt()
        except DatabaseError as exc:
            if not is_transient(exc):
                raise
            if reset is not None:
                reset()
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay * (0.5 + random.random() / 2))
            delay = min(delay * 2, 1.0)


class Database:
    def __init__(self, url: str, *, pool_size: int = 5, application_name: str = "orchestrator"):
        self.url = url
        self.application_name = application_name
        self.engine: Engine = make_engine(
            url, pool_size=pool_size, application_name=application_name
        )

    def __repr__(self) -> str:
        return f"Database({redact_url(self.url)!r}, application_name={self.application_name!r})"

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self.engine.begin() as conn:
            yield conn

    def run(self, fn: Callable[[Connection], T], *, retry_for: float = 30.0) -> T:
        """Run `fn` in a transaction, retrying on transient errors for up to `retry_for` s.

        `fn` must be safe to repeat: either its effect is idempotent or it is fenced.
        """

        def attempt() -> T:
            with self.transaction() as conn:
                return fn(conn)

        return retry_transient(attempt, retry_for=retry_for)

    def connect_now(self) -> None:
        """Open a pooled connection now rather than on the first statement (a worker at
        start-up): connecting, and SQLAlchemy's first-connect set-up, take milliseconds."""
        with self.engine.connect():
            pass

    def dispose(self) -> None:
        self.engine.dispose()
