"""A direct psycopg connection for the hot path: claims and group commits.

On the engine's hottest statements SQLAlchemy's per-statement machinery, its pool's
check-out and reset, and the separate BEGIN and COMMIT cost more CPU and round trips than the
statements themselves. A `Direct` connection runs each statement in autocommit — one
statement, one transaction, one round trip, one WAL flush — prepared on the server after its
first use. The statements it runs are written so that a single statement is the whole
transaction (see `runs.claim_due` and `checkpoints.write_group`).

One `Direct` belongs to one thread. It reconnects after a transient error; `run` retries
such errors for a while, so what it runs must be safe to repeat (fenced or idempotent).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import sqlalchemy

from orchestrator.db.connect import libpq_url
from orchestrator.db.database import retry_transient
from orchestrator.redact import redact_url

T = TypeVar("T")


class Direct:
    def __init__(
        self, url: str, *, application_name: str, settings: dict[str, str] | None = None
    ) -> None:
        self.url = libpq_url(url)
        self.application_name = application_name
        self.settings = settings or {}
        self._conn: psycopg.Connection[Any] | None = None

    def __repr__(self) -> str:
        return f"Direct({redact_url(self.url)!r}, application_name={self.application_name!r})"

    def connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            options = " ".join(f"-c {name}={value}" for name, value in self.settings.items())
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                application_name=self.application_name,
                connect_timeout=10,
                options=options,
            )
        return self._conn

    def run(self, fn: Callable[[psycopg.Connection[Any]], T], *, retry_for: float) -> T:
        """Call `fn` with the connection, reconnecting and retrying on transient errors for up
        to `retry_for` seconds."""
        return retry_transient(lambda: fn(self.connection()), retry_for=retry_for, reset=self.close)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


Conn = sqlalchemy.Connection | psycopg.Connection[Any]
"""A connection the statements shared by the hot path and the rest accept."""


def driver(conn: Conn) -> psycopg.Connection[Any]:
    """`conn` if it is a psycopg connection, else the psycopg connection under an SQLAlchemy
    one (statements on it run in that connection's transaction)."""
    if isinstance(conn, psycopg.Connection):
        return conn
    raw = conn.connection.driver_connection
    assert isinstance(raw, psycopg.Connection)
    return raw


def set_local(conn: Conn, settings: dict[str, str]) -> None:
    """Change planner settings until the end of the current transaction (pipelined: no
    round trip of its own)."""
    calls = ", ".join("set_config(%s, %s, true)" for _ in settings)
    params = [item for pair in settings.items() for item in pair]
    driver(conn).execute(f"SELECT {calls}", params, prepare=True)


class Pipelined:
    """A transaction on a direct connection in pipeline mode (see `pipelined`)."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn
        self.committed = False

    def commit(self) -> None:
        """Send the COMMIT now: it shares the round trip of the next result read (those of
        statements sent before it stay readable). Nothing may be sent after it."""
        self.conn.execute("COMMIT")
        self.committed = True


@contextmanager
def pipelined(conn: psycopg.Connection[Any]) -> Iterator[Pipelined]:
    """One transaction whose statements are pipelined, and whose COMMIT the block may send
    (`commit()`) before reading the last results, so that the commit costs no round trip of
    its own; it is sent at the end of the block otherwise. An error anywhere rolls it back
    (or, if the connection is broken, closes it, which rolls it back on the server)."""
    tx = Pipelined(conn)
    try:
        with conn.pipeline():
            conn.execute("BEGIN")
            yield tx
            if not tx.committed:
                tx.commit()
    except BaseException:
        _abandon(conn)
        raise


def _abandon(conn: psycopg.Connection[Any]) -> None:
    if conn.closed or conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        return
    try:
        conn.execute("ROLLBACK")
    except psycopg.Error:
        conn.close()
