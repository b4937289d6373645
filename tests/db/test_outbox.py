"""The outbox: `send(..., conn=c)` writes in the caller's transaction and never commits.

Each kind of connection a caller may hand over is checked the same way: rolled back, no
event; committed, the event is there, and the daemons' wake-up (NOTIFY on
`orchestrator_events`) reaches a listener only at the commit, never before.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import structlog
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import (
    AsyncSession,
    async_scoped_session,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from orchestrator import Orchestrator
from orchestrator.db import functions, runs
from orchestrator.db.connect import sqlalchemy_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.db.ops import Op, Pause, Query
from orchestrator.db.outbox import run, run_async
from orchestrator.runtime.ingest import Ingester
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(60)


@dataclass
class Caller:
    """A connection of the application's, and how the application ends its transaction."""

    conn: Any
    commit: Callable[[], Any]
    rollback: Callable[[], Any]


# -- the kinds of connection -----------------------------------------------------------------


@contextmanager
def psycopg_connection(url: str) -> Iterator[Caller]:
    with psycopg.connect(url) as conn:
        yield Caller(conn, conn.commit, conn.rollback)


@contextmanager
def sqlalchemy_connection(url: str) -> Iterator[Caller]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as conn:  # nothing executed yet: the send begins the transaction
            yield Caller(conn, conn.commit, conn.rollback)
    finally:
        engine.dispose()


@contextmanager
def sqlalchemy_session(url: str) -> Iterator[Caller]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        with Session(engine) as session:
            yield Caller(session, session.commit, session.rollback)
    finally:
        engine.dispose()


@contextmanager
def sqlalchemy_psycopg2_session(url: str) -> Iterator[Caller]:
    engine = create_engine(sqlalchemy_url(url).replace("+psycopg:", "+psycopg2:", 1))
    assert engine.dialect.driver == "psycopg2"
    try:
        with Session(engine) as session:
            yield Caller(session, session.commit, session.rollback)
    finally:
        engine.dispose()


@contextmanager
def sqlalchemy_scoped_session(url: str) -> Iterator[Caller]:
    engine = create_engine(sqlalchemy_url(url))
    sessions = scoped_session(sessionmaker(engine))
    try:
        yield Caller(sessions, sessions.commit, sessions.rollback)
    finally:
        sessions.remove()
        engine.dispose()


@asynccontextmanager
async def psycopg_async_connection(url: str) -> AsyncIterator[Caller]:
    async with await psycopg.AsyncConnection.connect(url) as conn:
        yield Caller(conn, conn.commit, conn.rollback)


@asynccontextmanager
async def sqlalchemy_async_connection(url: str) -> AsyncIterator[Caller]:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with engine.connect() as conn:
            yield Caller(conn, conn.commit, conn.rollback)
    finally:
        await engine.dispose()


@asynccontextmanager
async def sqlalchemy_async_session(url: str) -> AsyncIterator[Caller]:
    engine = create_async_engine(sqlalchemy_url(url))
    try:
        async with AsyncSession(engine) as session:
            yield Caller(session, session.commit, session.rollback)
    finally:
        await engine.dispose()


@asynccontextmanager
async def sqlalchemy_async_scoped_session(url: str) -> AsyncIterator[Caller]:
    engine = create_async_engine(sqlalchemy_url(url))
    sessions = async_scoped_session(async_sessionmaker(engine), asyncio.current_task)
    try:
        yield Caller(sessions, sessions.commit, sessions.rollback)
    finally:
        await sessions.remove()
        await engine.dispose()


SYNC_KINDS = {
    "psycopg": psycopg_connection,
    "sqlalchemy-connection": sqlalchemy_connection,
    "sqlalchemy-session": sqlalchemy_session,
    "sqlalchemy-scoped-session": sqlalchemy_scoped_session,
    "sqlalchemy-psycopg2-session": sqlalchemy_psycopg2_session,
}
ASYNC_KINDS = {
    "psycopg-async": psycopg_async_connection,
    "sqlalchemy-async-connection": sqlalchemy_async_connection,
    "sqlalchemy-async-session": sqlalchemy_async_session,
    "sqlalchemy-async-scoped-session": sqlalchemy_async_scoped_session,
}


# -- what each test looks at -----------------------------------------------------------------


@contextmanager
def listener(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN orchestrator_events")
        yield conn


def notifications(listening: psycopg.Connection[Any], timeout: float) -> int:
    """How many notifications arrive within `timeout` (returns at the first)."""
    return len(list(listening.notifies(timeout=timeout, stop_after=1)))


def notified_so_far(listening: psycopg.Connection[Any], url: str) -> int:
    """How many notifications came before now: a sentinel notified now arrives after every
    notification committed before it (Postgres delivers them in commit order), so no
    waiting on a timer is needed to show that none came."""
    with psycopg.connect(url, autocommit=True) as other:
        other.execute("SELECT pg_notify('orchestrator_events', 'sentinel')")
    payloads = []
    while "sentinel" not in payloads:
        arrived = [n.payload for n in listening.notifies(timeout=10, stop_after=1)]
        assert arrived, "the sentinel notification never arrived"
        payloads += arrived
    return len(payloads) - 1


def event_count(db: Database, event_id: str) -> int:
    rows = execute(db, "SELECT count(*) FROM orchestrator.events WHERE id = :i", i=event_id)
    return int(rows[0][0])


def end(outcome: str, caller: Caller) -> Any:
    return caller.commit() if outcome == "commit" else caller.rollback()


# -- sync ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_send__rolled_back_with_the_callers_transaction(
    db: Database, db_url: str, kind: str
) -> None:
    app = Orchestrator(db_url)
    with listener(db_url) as listening, SYNC_KINDS[kind](db_url) as caller:
        event_id = app.send("outbox/a", {"n": 1}, conn=caller.conn)
        caller.rollback()
        assert notified_so_far(listening, db_url) == 0
    assert event_count(db, event_id) == 0
    app.close()


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_send__committed_with_the_callers_transaction_and_notified_at_commit(
    db: Database, db_url: str, kind: str
) -> None:
    app = Orchestrator(db_url)
    with listener(db_url) as listening, SYNC_KINDS[kind](db_url) as caller:
        event_id = app.send("outbox/a", {"n": 1}, conn=caller.conn)
        assert notified_so_far(listening, db_url) == 0, "notified before the caller committed"
        assert event_count(db, event_id) == 0, "visible before the caller committed"
        caller.commit()
        assert notifications(listening, 10) == 1
    assert event_count(db, event_id) == 1
    app.close()


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_send_many_and_cancel__join_the_callers_transaction(
    db: Database, db_url: str, kind: str
) -> None:
    app = Orchestrator(db_url)
    [run_id] = _queued_runs(db, 1)
    with SYNC_KINDS[kind](db_url) as caller:
        ids = app.send_many([{"name": "outbox/b"}, {"name": "outbox/c"}], conn=caller.conn)
        assert app.cancel(run_id, conn=caller.conn) == "cancelled"
        caller.rollback()
    assert [event_count(db, i) for i in ids] == [0, 0]
    assert _status(db, run_id) == "queued"
    app.close()


# -- async -----------------------------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_send_async__follows_the_callers_transaction_and_notifies_at_commit(
    db: Database, db_url: str, kind: str, outcome: str
) -> None:
    app = Orchestrator(db_url)

    async def scenario() -> tuple[str, int, int]:
        with listener(db_url) as listening:
            async with ASYNC_KINDS[kind](db_url) as caller:
                event_id = await app.send_async("outbox/a", {"n": 1}, conn=caller.conn)
                before = notified_so_far(listening, db_url) + event_count(db, event_id)
                await end(outcome, caller)
                after = notified_so_far(listening, db_url)
        return event_id, before, after

    event_id, before, after = asyncio.run(scenario())
    assert before == 0, "notified or visible before the caller committed"
    expected = 1 if outcome == "commit" else 0
    assert (after, event_count(db, event_id)) == (expected, expected)
    app.close()


@pytest.mark.parametrize("kind", ASYNC_KINDS)
def test_send_many_async_and_cancel_async__join_the_callers_transaction(
    db: Database, db_url: str, kind: str
) -> None:
    app = Orchestrator(db_url)
    [run_id] = _queued_runs(db, 1)

    async def scenario() -> list[str]:
        async with ASYNC_KINDS[kind](db_url) as caller:
            ids = await app.send_many_async([{"name": "outbox/b"}], conn=caller.conn)
            assert await app.cancel_async(run_id, conn=caller.conn) == "cancelled"
            await caller.commit()
        return ids

    [event_id] = asyncio.run(scenario())
    assert event_count(db, event_id) == 1
    assert _status(db, run_id) == "cancelled"
    app.close()


# -- the run follows the event -----------------------------------------------------------------


def test_outbox__a_committed_event_starts_a_run_and_a_rolled_back_one_none(
    db: Database, db_url: str
) -> None:
    with db.transaction() as conn:
        functions.upsert(
            conn, "f", triggers=[{"type": "event", "name": "outbox/a"}], options={}, version="1"
        )
    app = Orchestrator(db_url)
    with psycopg.connect(db_url) as caller:
        kept = app.send("outbox/a", {"n": 1}, conn=caller)
        caller.commit()
        dropped = app.send("outbox/a", {"n": 2}, conn=caller)
        caller.rollback()
    direct = Direct(db.url, application_name="test-outbox", settings=runs.CLAIM_SETTINGS)
    ingester = Ingester(
        db, direct, batch_size=100, max_event_bytes=1024, log=structlog.get_logger()
    )
    try:
        assert ingester.tick() == 1
    finally:
        direct.close()
    rows = execute(db, "SELECT event_id FROM orchestrator.runs")
    assert [row[0] for row in rows] == [kept]
    assert event_count(db, dropped) == 0
    app.close()


# -- the wrong kind of connection --------------------------------------------------------------


def test_send__an_async_connection_is_refused_with_the_method_to_use(db_url: str) -> None:
    app = Orchestrator(db_url)

    async def scenario() -> None:
        async with await psycopg.AsyncConnection.connect(db_url) as conn:
            with pytest.raises(TypeError) as refused:
                app.send("outbox/a", conn=conn)  # type: ignore[arg-type]
        assert str(refused.value) == (
            "conn must be a psycopg Connection, or an SQLAlchemy Connection, Session or "
            "scoped_session; got psycopg.AsyncConnection, an async connection: use "
            "send_async, send_many_async, cancel_async"
        )

    asyncio.run(scenario())


def test_send_async__a_sync_connection_is_refused_with_the_method_to_use(db_url: str) -> None:
    app = Orchestrator(db_url)
    with psycopg.connect(db_url) as conn, pytest.raises(TypeError) as refused:
        asyncio.run(app.send_async("outbox/a", conn=conn))  # type: ignore[arg-type]
    assert str(refused.value) == (
        "conn must be a psycopg AsyncConnection, or an SQLAlchemy AsyncConnection, "
        "AsyncSession or async_scoped_session; got psycopg.Connection, a sync connection: "
        "use send, send_many, cancel"
    )


def test_send__an_engine_or_anything_else_is_refused(db: Database, db_url: str) -> None:
    app = Orchestrator(db_url)
    for wrong, kind in [(db.engine, "sqlalchemy.engine.base.Engine"), (db_url, "builtins.str")]:
        with pytest.raises(TypeError, match=f"; got {kind}$"):
            app.send("outbox/a", conn=wrong)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=f"; got {kind}$"):
            asyncio.run(app.send_async("outbox/a", conn=wrong))  # type: ignore[arg-type]
    assert execute(db, "SELECT count(*) FROM orchestrator.events") == [(0,)]


def test_send__an_sqlalchemy_session_on_another_driver_is_refused(db_url: str) -> None:
    app = Orchestrator(db_url)
    engine = create_engine("sqlite://")
    try:
        with Session(engine) as session, pytest.raises(TypeError) as refused:
            app.send("outbox/a", conn=session)
    finally:
        engine.dispose()
    assert str(refused.value) == (
        "conn is an SQLAlchemy connection to sqlite through pysqlite; it must be to "
        "postgresql through psycopg or psycopg2 (a URL like postgresql+psycopg://...)"
    )


# -- the runners themselves: one operation, every kind of connection -------------------------------


def _listen_and_pause() -> Op[list[str]]:
    yield Query("LISTEN outbox_test", {})
    yield Query("SELECT pg_notify('outbox_test', 'hello')", {})
    return list((yield Pause(5.0)))


def test_run__an_operation_can_listen_and_pause_on_psycopg(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert run(_listen_and_pause(), conn) == ["hello"]

    async def scenario() -> list[str]:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await run_async(_listen_and_pause(), conn)

    assert asyncio.run(scenario()) == ["hello"]


# -- helpers ---------------------------------------------------------------------------------


def _queued_runs(db: Database, n: int) -> list[str]:
    with db.transaction() as conn:
        return runs.create_many(conn, [runs.NewRun("f", [{"i": i}]) for i in range(n)])


def _status(db: Database, run_id: str) -> str:
    rows = execute(db, "SELECT status FROM orchestrator.runs WHERE id = CAST(:i AS uuid)", i=run_id)
    return str(rows[0][0])


def test_send_and_cancel__on_connections_with_a_dict_row_factory(db: Database, db_url: str) -> None:
    from psycopg.rows import dict_row

    app = Orchestrator(db_url)
    with db.transaction() as conn:
        event = {"id": str(uuid.uuid4()), "name": "test/start", "data": {}, "ts": ""}
        (run_id,) = runs.create_many(conn, [runs.NewRun("some-function", [event])])
    with psycopg.connect(db_url, row_factory=dict_row) as caller:
        event_id = app.send("outbox/dicts", {"n": 1}, conn=caller)
        assert app.cancel(run_id, conn=caller) == "cancelled"
        caller.commit()

    async def in_async() -> str:
        async with await psycopg.AsyncConnection.connect(db_url, row_factory=dict_row) as conn:
            sent = await app.send_async("outbox/dicts", {"n": 2}, conn=conn)
            await conn.commit()
            return sent

    second = asyncio.run(in_async())
    app.close()
    assert event_count(db, event_id) == event_count(db, second) == 1
