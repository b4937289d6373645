"""The outbox against a live daemon: an event sent in the application's transaction runs if
that transaction commits, and never exists if it rolls back.

One daemon serves the tests of this module (tests/e2e/shared.py); each test looks only at its
own events.
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from orchestrator import Orchestrator
from orchestrator.db.connect import sqlalchemy_url
from tests.e2e.harness import count, finished_run, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"  # "double": math/double {x} → 2x
module_daemons, served = shared_daemons(APP, workers=1)


def _orders(url: str) -> None:
    sql(url, "CREATE TABLE IF NOT EXISTS public.outbox_orders (id text PRIMARY KEY)")


def _never_existed(url: str, event_id: str) -> bool:
    events = count(url, "SELECT count(*) FROM orchestrator.events WHERE id = %s", (event_id,))
    made = count(url, "SELECT count(*) FROM orchestrator.runs WHERE event_id = %s", (event_id,))
    return events == made == 0


def test_outbox__a_session_commit_runs_the_function_and_a_rollback_leaves_nothing(
    served: Served,
) -> None:
    _orders(served.url)
    app = Orchestrator(served.url)
    engine = create_engine(sqlalchemy_url(served.url))
    kept_order, dropped_order = f"kept-{uuid.uuid4()}", f"dropped-{uuid.uuid4()}"
    order = text("INSERT INTO public.outbox_orders (id) VALUES (:id)")
    try:
        with Session(engine) as session:
            session.execute(order, {"id": kept_order})
            kept = app.send("math/double", {"x": 21}, conn=session)
            session.commit()
            session.execute(order, {"id": dropped_order})
            dropped = app.send("math/double", {"x": 5}, conn=session)
            session.rollback()
    finally:
        engine.dispose()
        app.close()
    assert finished_run(served.url, kept)["output"] == 42
    assert _never_existed(served.url, dropped)
    orders = sql(
        served.url,
        "SELECT id FROM public.outbox_orders WHERE id = ANY(%s)",
        ([kept_order, dropped_order],),
    )
    assert orders == [(kept_order,)]


def test_outbox__an_async_commit_runs_the_function_and_a_rollback_leaves_nothing(
    served: Served,
) -> None:
    app = Orchestrator(served.url)

    async def scenario() -> tuple[str, str]:
        async with await psycopg.AsyncConnection.connect(served.url) as conn:
            kept = await app.send_async("math/double", {"x": 4}, conn=conn)
            await conn.commit()
            dropped = await app.send_async("math/double", {"x": 6}, conn=conn)
            await conn.rollback()
        return kept, dropped

    kept, dropped = asyncio.run(scenario())
    app.close()
    assert finished_run(served.url, kept)["output"] == 8
    assert _never_existed(served.url, dropped)


def test_outbox__a_psycopg_commit_runs_the_function_and_a_rollback_leaves_nothing(
    served: Served,
) -> None:
    app = Orchestrator(served.url)
    try:
        with psycopg.connect(served.url) as conn:
            kept = app.send("math/double", {"x": 10}, conn=conn)
            conn.commit()
            dropped = app.send("math/double", {"x": 11}, conn=conn)
            conn.rollback()
    finally:
        app.close()
    assert finished_run(served.url, kept)["output"] == 20
    assert _never_existed(served.url, dropped)


def test_outbox__an_sqlalchemy_async_session_commit_runs_and_a_rollback_leaves_nothing(
    served: Served,
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    app = Orchestrator(served.url)

    async def scenario() -> tuple[str, str]:
        engine = create_async_engine(sqlalchemy_url(served.url))
        try:
            async with AsyncSession(engine) as session:
                async with session.begin():
                    kept = await app.send_async("math/double", {"x": 15}, conn=session)
                with pytest.raises(RuntimeError):
                    async with session.begin():
                        dropped = await app.send_async("math/double", {"x": 16}, conn=session)
                        raise RuntimeError("the request failed after sending")
        finally:
            await engine.dispose()
            await app.aclose()
        return kept, dropped

    kept, dropped = asyncio.run(scenario())
    assert finished_run(served.url, kept)["output"] == 30
    assert _never_existed(served.url, dropped)
