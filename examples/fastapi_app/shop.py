"""The shop's own data: the `shop_orders` table, through a SQLAlchemy async engine.

The table lives in the `public` schema of the orchestrator's database (the outbox needs both
in one database: the order row and its event commit together), never in the `orchestrator`
schema. The URL is `SHOP_DATABASE_URL`, or the orchestrator's own when that is unset.
"""

from __future__ import annotations

import functools
import os
from typing import Any

# The example is an application, not the engine: it talks SQL with its own driver.
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS public.shop_orders (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    sku text NOT NULL,
    quantity int NOT NULL CHECK (quantity > 0),
    status text NOT NULL DEFAULT 'placed',
    available int,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""


def database_url() -> str:
    """`SHOP_DATABASE_URL`, else the orchestrator's URL, with the psycopg 3 driver named."""
    url = os.environ.get("SHOP_DATABASE_URL")
    if not url:
        from examples.fastapi_app.workflows import app

        url = app.database_url()
    return make_url(url).set(drivername="postgresql+psycopg").render_as_string(False)


@functools.cache
def engine() -> AsyncEngine:
    """One engine per process, made on first use (so a daemon importing the workflows
    opens nothing before its workers fork)."""
    return create_async_engine(database_url(), pool_size=5, max_overflow=5)


def session() -> AsyncSession:
    return async_sessionmaker(engine(), expire_on_commit=False)()


async def create_tables() -> None:
    async with engine().begin() as conn:
        await conn.execute(text(TABLE_SQL))


async def dispose() -> None:
    if engine.cache_info().currsize:
        await engine().dispose()
        engine.cache_clear()


async def insert_order(session: AsyncSession, sku: str, quantity: int) -> str:
    """A new order in the caller's transaction; returns its id."""
    result = await session.execute(
        text("INSERT INTO public.shop_orders (sku, quantity) VALUES (:sku, :q) RETURNING id"),
        {"sku": sku, "q": quantity},
    )
    return str(result.scalar_one())


async def set_status(order_id: str, status: str, available: int) -> None:
    async with engine().begin() as conn:
        await conn.execute(
            text(
                "UPDATE public.shop_orders SET status = :status, available = :available, "
                "updated_at = now() WHERE id = :id"
            ),
            {"status": status, "available": available, "id": order_id},
        )


async def get_order(order_id: str) -> dict[str, Any] | None:
    async with engine().connect() as conn:
        result = await conn.execute(
            text(
                "SELECT id::text, sku, quantity, status, available "
                "FROM public.shop_orders WHERE id = :id"
            ),
            {"id": order_id},
        )
        row = result.mappings().first()
    return None if row is None else dict(row)
