"""Run operations (db/ops.py) on a connection someone else owns: the outbox pattern.

`app.send(..., conn=c)` writes the event in the transaction of `c`, the caller's connection:
if the caller rolls back, the event never existed; if they commit, it is there, and the
daemon's wake-up (the events trigger's NOTIFY) is delivered by Postgres only at that commit.
Nothing here commits or rolls back. The library's own connections go through the same
runners (an SQLAlchemy connection from `Database.run`, an async psycopg connection from
db/background_pool.py).

Accepted connections:

- `run` (sync): a psycopg `Connection`; an SQLAlchemy `Connection`, `Session` or
  `scoped_session`;
- `run_async`: a psycopg `AsyncConnection`; an SQLAlchemy `AsyncConnection`, `AsyncSession`
  or `async_scoped_session`.

SQLAlchemy objects execute through SQLAlchemy (`exec_driver_sql`, on `Session.connection()`
for a session), so a statement joins the transaction SQLAlchemy tracks, and begins it if
none is open. Executing on the psycopg connection underneath instead could write in a
transaction SQLAlchemy does not know of: its `commit()` would then do nothing and the pool
would roll the event back. The statements are in psycopg's dialect (`%(name)s`), so the
engine must be PostgreSQL through psycopg, or psycopg2 for sync code (not asyncpg or
pg8000). Statements on a psycopg connection join its transaction, or, in autocommit mode,
are each a transaction of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar

import psycopg
from psycopg.rows import tuple_row
from sqlalchemy import Connection, Dialect
from sqlalchemy.orm import Session, scoped_session

from orchestrator.db.ops import IO, Op, Query, Rows, complete, drive

if TYPE_CHECKING:
    from collections.abc import Awaitable

    from sqlalchemy.ext import asyncio as sa_asyncio

    OutboxConnection: TypeAlias = (
        psycopg.Connection[Any] | Connection | Session | scoped_session[Any]
    )
    AsyncOutboxConnection: TypeAlias = (
        psycopg.AsyncConnection[Any]
        | sa_asyncio.AsyncConnection
        | sa_asyncio.AsyncSession
        | sa_asyncio.async_scoped_session[Any]
    )

T = TypeVar("T")

SYNC_KINDS = "a psycopg Connection, or an SQLAlchemy Connection, Session or scoped_session"
ASYNC_KINDS = (
    "a psycopg AsyncConnection, or an SQLAlchemy AsyncConnection, AsyncSession or "
    "async_scoped_session"
)


def run(op: Op[T], conn: object) -> T:
    """Run `op` on `conn`, a sync connection, in its current transaction."""
    return complete(drive(op, _io(conn)))


async def run_async(op: Op[T], conn: object) -> T:
    """Run `op` on `conn`, an async connection, in its current transaction."""
    return await drive(op, _async_io(conn))


def _io(conn: object) -> IO:
    if isinstance(conn, psycopg.Connection):
        return _Psycopg(conn)
    if isinstance(conn, Connection):
        return _SqlAlchemy(lambda: conn)
    if isinstance(conn, Session | scoped_session):
        return _SqlAlchemy(conn.connection)
    raise TypeError(_wrong_kind(conn, wanted=SYNC_KINDS, hint=_is_async(conn)))


def _async_io(conn: object) -> IO:
    if isinstance(conn, psycopg.AsyncConnection):
        return _AsyncPsycopg(conn)
    sa_asyncio = _sqlalchemy_asyncio()
    if sa_asyncio is not None and isinstance(conn, sa_asyncio.AsyncConnection):
        return _AsyncSqlAlchemy(lambda: _ready(conn))
    if sa_asyncio is not None and isinstance(
        conn, sa_asyncio.AsyncSession | sa_asyncio.async_scoped_session
    ):
        return _AsyncSqlAlchemy(conn.connection)
    raise TypeError(_wrong_kind(conn, wanted=ASYNC_KINDS, hint=_is_sync(conn)))


# -- the IO of each kind of connection (blocking ones behind coroutines that never suspend) --


class _Psycopg:
    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    async def execute(self, query: Query) -> Rows:
        # tuples whatever the caller's row factory (dict_row is common)
        cursor = self.conn.cursor(row_factory=tuple_row).execute(query.sql, query.params)
        return list(cursor.fetchall()) if cursor.description is not None else []

    async def pause(self, seconds: float) -> list[str]:
        return [n.payload for n in self.conn.notifies(timeout=seconds, stop_after=1)]


class _SqlAlchemy:
    def __init__(self, connection: Callable[[], Connection]) -> None:
        self.connection = connection  # a session's, fetched per statement: it may change

    async def execute(self, query: Query) -> Rows:
        conn = self.connection()
        _check_driver(conn.dialect, ("psycopg", "psycopg2"))
        result = conn.exec_driver_sql(query.sql, dict(query.params))
        return [tuple(row) for row in result.all()] if result.returns_rows else []

    async def pause(self, seconds: float) -> list[str]:
        raise TypeError("waiting for notifications needs a psycopg connection")


class _AsyncPsycopg:
    def __init__(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.conn = conn

    async def execute(self, query: Query) -> Rows:
        cursor = self.conn.cursor(row_factory=tuple_row)
        await cursor.execute(query.sql, query.params)
        return list(await cursor.fetchall()) if cursor.description is not None else []

    async def pause(self, seconds: float) -> list[str]:
        return [n.payload async for n in self.conn.notifies(timeout=seconds, stop_after=1)]


class _AsyncSqlAlchemy:
    def __init__(self, connection: Callable[[], Awaitable[sa_asyncio.AsyncConnection]]) -> None:
        self.connection = connection

    async def execute(self, query: Query) -> Rows:
        conn = await self.connection()
        _check_driver(conn.dialect, ("psycopg",))
        result = await conn.exec_driver_sql(query.sql, dict(query.params))
        return [tuple(row) for row in result.all()] if result.returns_rows else []

    async def pause(self, seconds: float) -> list[str]:
        raise TypeError("waiting for notifications needs a psycopg connection")


async def _ready(conn: sa_asyncio.AsyncConnection) -> sa_asyncio.AsyncConnection:
    return conn


def _sqlalchemy_asyncio() -> Any:
    """`sqlalchemy.ext.asyncio`, or None where it cannot be imported: it needs `greenlet`,
    which is not our dependency, and without it nobody has an SQLAlchemy async connection."""
    try:
        from sqlalchemy.ext import asyncio as sa_asyncio
    except ImportError:
        return None
    return sa_asyncio


# -- a connection of the wrong kind ----------------------------------------------------------


def _check_driver(dialect: Dialect, drivers: tuple[str, ...]) -> None:
    if dialect.name != "postgresql" or dialect.driver not in drivers:
        raise TypeError(
            f"conn is an SQLAlchemy connection to {dialect.name} through {dialect.driver}; "
            f"it must be to postgresql through {' or '.join(drivers)} "
            "(a URL like postgresql+psycopg://...)"
        )


def _is_async(conn: object) -> bool:
    sa_asyncio = _sqlalchemy_asyncio()
    kinds: tuple[type, ...] = (psycopg.AsyncConnection,)
    if sa_asyncio is not None:
        kinds += (sa_asyncio.AsyncConnection, sa_asyncio.AsyncSession)
        kinds += (sa_asyncio.async_scoped_session,)
    return isinstance(conn, kinds)


def _is_sync(conn: object) -> bool:
    return isinstance(conn, psycopg.Connection | Connection | Session | scoped_session)


def _wrong_kind(conn: object, *, wanted: str, hint: bool) -> str:
    message = f"conn must be {wanted}; got {type(conn).__module__}.{type(conn).__qualname__}"
    if hint and wanted == SYNC_KINDS:
        return f"{message}, an async connection: use send_async, send_many_async, cancel_async"
    if hint:
        return f"{message}, a sync connection: use send, send_many, cancel"
    return message
