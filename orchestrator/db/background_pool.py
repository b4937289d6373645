"""The library's own async connections: a psycopg pool on an event loop of its own.

`send_async` and `cancel_async`, called without `conn=`, need connections, and the event
loop they are called from is not ours: a test or a script calls `asyncio.run` several
times, an ASGI server runs one loop per worker, `asgiref.async_to_sync` may make a loop per
call. A `psycopg_pool.AsyncConnectionPool` belongs to the loop it was opened in, and one left
open when its loop ends can hang `asyncio.run` at exit: a pool worker that is connecting (to
grow the pool, or to replace a broken or expired connection) swallows the cancellation
`asyncio.run` sends it, and `asyncio.run` waits for it forever (seen with psycopg-pool 3.3).
Nobody can be relied on to close the pool before their loop ends.

So the pool lives on a loop that only this module runs, on a daemon thread started at the
first use. A caller awaits a future of that loop wrapped for its own (`asyncio.wrap_future`):
its loop never blocks, any loop may call at any time, and one pool serves them all.
Cancelling the caller's task cancels the work on the pool's loop; the transaction is then
rolled back. `close()` (from any thread) closes the pool and stops the thread; the next use
starts them again.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeAlias, TypeVar

import psycopg
from psycopg_pool import AsyncConnectionPool

from orchestrator.db.connect import libpq_url

T = TypeVar("T")
Pool: TypeAlias = AsyncConnectionPool[psycopg.AsyncConnection[Any]]
Work: TypeAlias = Callable[[psycopg.AsyncConnection[Any]], Awaitable[T]]


class BackgroundPool:
    def __init__(self, url: Callable[[], str], *, application_name: str, max_size: int = 4) -> None:
        """`url` is called once, on the pool's thread, when the pool is opened (resolving it
        may start the embedded server, which must not block the caller's loop)."""
        self._url = url
        self._application_name = application_name
        self._max_size = max_size
        self._lock = threading.Lock()
        self._host: _Host | None = None

    async def run(self, work: Work[T]) -> T:
        """`await work(conn)` with a pooled connection, in a transaction committed when it
        returns and rolled back if it raises."""
        host = self._started()
        future = asyncio.run_coroutine_threadsafe(host.run(work), host.loop)
        return await asyncio.wrap_future(future)

    def close(self, timeout: float = 10.0) -> None:
        """Close the pool's connections and stop its thread (waits up to `timeout` s)."""
        with self._lock:
            host, self._host = self._host, None
        if host is not None:
            host.stop(timeout)

    def _started(self) -> _Host:
        with self._lock:
            if self._host is None:
                self._host = _Host(self._open_pool)
            return self._host

    async def _open_pool(self) -> Pool:
        pool: Pool = AsyncConnectionPool(
            libpq_url(self._url()),
            min_size=1,
            max_size=self._max_size,
            open=False,
            name="orchestrator-client",
            kwargs={"application_name": self._application_name, "connect_timeout": 10},
            # a connection that died while idle (server restart) is replaced at checkout
            check=AsyncConnectionPool.check_connection,
        )
        await pool.open()
        return pool


class _Host:
    """One event loop on a daemon thread, and the pool opened on it."""

    def __init__(self, open_pool: Callable[[], Coroutine[Any, Any, Pool]]) -> None:
        self._open_pool = open_pool
        self._pool: asyncio.Task[Pool] | None = None  # used on `loop` only
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._serve, name="orchestrator-async-pool", daemon=True
        )
        self._thread.start()

    async def run(self, work: Work[T]) -> T:
        pool = await self._opened()
        async with pool.connection() as conn:
            return await work(conn)

    def stop(self, timeout: float) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._close(), self.loop).result(timeout)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)

    async def _opened(self) -> Pool:
        if self._pool is None or _failed(self._pool):  # a failed opening is tried again
            self._pool = self.loop.create_task(self._open_pool())
        return await asyncio.shield(self._pool)

    async def _close(self) -> None:
        if self._pool is None:
            return
        try:
            pool = await self._pool
        except (Exception, asyncio.CancelledError):
            return  # it never opened: nothing to close
        await pool.close()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)
