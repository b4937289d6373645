"""How an execution does its I/O: the sync face and the async face.

Every step kind is written once, as a coroutine (engine/kinds/), that decides what to record,
whether to suspend and what to return, and asks its execution's face to do the I/O: call a
user's step body, make a store call, wait for a group commit, run parallel branches.

- The sync face, for a plain `def` function, never suspends: a step's coroutine runs to its
  end in one `send` on the worker thread (`run_sync`), so `ctx.step.run(...)` returns the
  value itself.
- The async face, for an `async def` function, runs on the worker's event loop:
  `ctx.step.run(...)` returns the step's coroutine for user code to await. An `async def`
  body is awaited on the loop; a plain one runs in a thread so that it cannot block the loop;
  store calls run in a small pool of I/O threads; a group commit is awaited as a future.

A step body given a timeout (`call(..., timeout=...)`) that outlives it raises `TimedOut`:
an `async def` body is cancelled at the timeout; a plain body, which cannot be stopped, runs
on a thread of its own (engine/threads.py) that is left to finish by itself.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Executor, Future, wait
from typing import Any, Protocol, TypeVar

from orchestrator.db.ops import complete
from orchestrator.engine import threads
from orchestrator.functions import is_async_callable

T = TypeVar("T")
Step = Coroutine[Any, Any, T]


run_sync = complete  # runs a coroutine of the sync face, which never suspends, to its end


class TimedOut(Exception):
    """A step body outlived its timeout; `left` is the future of the plain body's thread that
    still runs (None: the body was stopped)."""

    def __init__(self, left: Future[Any] | None) -> None:
        super().__init__("the step body outlived its timeout")
        self.left = left


def discard(awaitable: Any) -> None:
    """Close a coroutine that will never be awaited, so that Python does not warn about it."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()


class Face(Protocol):
    is_async: bool
    cancelled: bool  # the run's cancellation interrupted its user code (async runs only)

    def complete(self, step: Step[T]) -> Any:
        """What `ctx.step.<kind>(...)` returns for this step's coroutine."""

    async def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> Any:
        """Call user code (a step body, or the function itself) and return its value; with
        `timeout` (seconds), raise `TimedOut` if it has not ended by then."""

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Make a blocking store call."""

    async def settle(self, future: Future[T]) -> T:
        """Wait for a group commit."""

    async def gather(self, branches: Sequence[Step[None]]) -> None:
        """Run these coroutines at once, until every one has ended (they raise nothing)."""


async def _awaited(value: Any) -> Any:
    return await value


class SyncFace:
    is_async = False
    cancelled = False

    def complete(self, step: Step[T]) -> T:
        return run_sync(step)

    async def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> Any:
        if timeout is None:
            return fn(*args, **kwargs)
        running = threads.start(fn, args, kwargs)
        ended, _ = wait([running], timeout=timeout)
        if not ended:
            raise TimedOut(running)
        return running.result()

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return fn(*args, **kwargs)

    async def settle(self, future: Future[T]) -> T:
        return future.result()

    async def gather(self, branches: Sequence[Step[None]]) -> None:
        threads = [threading.Thread(target=run_sync, args=(b,), daemon=True) for b in branches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()


class AsyncFace:
    """The face of one async run. `cancel()` (on the loop) interrupts the run's user code at
    once, wherever it awaits; it never interrupts a store call or a commit midway: one in
    flight finishes first (the cancellation is delivered after it), so the run's records stay
    whole."""

    is_async = True

    def __init__(self, *, bodies: Executor, io: Executor) -> None:
        self._bodies = bodies  # threads for the plain bodies of async functions
        self._io = io
        self._in_io = 0
        self._root: asyncio.Task[Any] | None = None
        self.cancelled = False

    def complete(self, step: Step[T]) -> Step[T]:
        return step

    def adopt(self) -> None:
        """Called in the run's task: the task that `cancel` interrupts."""
        self._root = asyncio.current_task()

    def cancel(self) -> None:
        self.cancelled = True
        self._deliver()

    def _deliver(self) -> None:
        if self._in_io == 0 and self._root is not None and not self._root.done():
            self._root.cancel()

    async def call(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> Any:
        if timeout is None:
            return await self._call(fn, args, kwargs)
        if not is_async_callable(fn):
            return await self._on_own_thread(fn, args, kwargs, timeout)
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                return await self._call(fn, args, kwargs)
        except TimeoutError:
            if limit.expired():  # else the body's own TimeoutError: its failure
                raise TimedOut(None) from None
            raise

    async def _call(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        if is_async_callable(fn):
            value = await fn(*args, **kwargs)
        else:
            run = functools.partial(contextvars.copy_context().run, fn, *args, **kwargs)
            value = await asyncio.get_running_loop().run_in_executor(self._bodies, run)
        while inspect.isawaitable(value):  # a plain callable (a lambda) returned a coroutine
            value = await value
        return value

    async def _on_own_thread(
        self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], timeout: float
    ) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        running = threads.start(fn, args, kwargs)
        ended, _ = await asyncio.wait([asyncio.wrap_future(running)], timeout=timeout)
        if not ended:
            raise TimedOut(running)
        value = running.result()
        if inspect.isawaitable(value):  # a plain callable (a lambda) returned a coroutine
            left = max(deadline - loop.time(), 0.0)
            return await self.call(_awaited, (value,), {}, timeout=left)
        return value

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        call = functools.partial(fn, *args, **kwargs)
        return await self._engine(asyncio.get_running_loop().run_in_executor(self._io, call))

    async def settle(self, future: Future[T]) -> T:
        return await self._engine(asyncio.wrap_future(future))

    async def _engine(self, work: asyncio.Future[T]) -> T:
        self._in_io += 1
        try:
            # a cancellation cannot arrive here (see cancel): this is for the loop's shutdown
            return await asyncio.shield(work)
        finally:
            self._in_io -= 1
            if self.cancelled and self._in_io == 0:  # one came meanwhile: deliver it now
                asyncio.get_running_loop().call_soon(self._deliver)

    async def gather(self, branches: Sequence[Step[None]]) -> None:
        await asyncio.gather(*branches)
