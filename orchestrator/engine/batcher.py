"""Batching: concurrent callers' requests of one kind served together, in one round trip.

A caller hands its request to the batcher and gets a future back (an executor thread blocks
on it; an async run awaits it). A thread of the batcher's own takes every request waiting at
that moment, serves them with one call on its direct connection and settles their futures.
Nothing waits for company: a request that arrives while the thread is idle is served at once,
and requests pile up only while a batch is in flight. This is how the group committer
(engine/commit.py) shares commits; the loader of recorded steps (engine/loader.py) and the
storing of waits (engine/waiter.py) are built on it.

A batch that fails with a transient error is retried whole (`Direct.run`): what is served
must be safe to repeat. With `isolate`, a batch that fails otherwise is served again one
request at a time, so that one bad request fails alone; without it, every request of the
batch fails with the error. No error leaves a caller waiting, and none stops the thread.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Future, InvalidStateError
from typing import Any, Generic, TypeVar

from orchestrator.db.database import is_transient
from orchestrator.db.direct import Direct

Req = TypeVar("Req")
Res = TypeVar("Res")

Serve = Callable[[Any, list[Req]], list[Res]]
"""Serve a batch on a connection: one result per request, in order."""


class Batcher(Generic[Req, Res]):
    def __init__(
        self,
        direct: Direct,
        serve: Serve[Req, Res],
        *,
        name: str,
        retry_for: float,
        max_batch: int = 500,
        isolate: bool = False,
        key: Callable[[Req], Hashable] | None = None,
    ) -> None:
        """`key`, if given: a batch never holds two requests with the same key (a later one
        waits for the next batch)."""
        self.direct = direct
        self.serve = serve
        self.name = name
        self.retry_for = retry_for
        self.max_batch = max_batch
        self.isolate = isolate
        self.key = key
        self._pending: deque[tuple[Req, Future[Res]]] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def submit(self, request: Req) -> Future[Res]:
        """Serve `request` with whatever else is waiting; the future holds its result, or the
        error that failed it."""
        done: Future[Res] = Future()
        with self._cond:
            self._start()
            self._pending.append((request, done))
            self._cond.notify()
        return done

    def warm(self, prepare: Callable[[Any], object] | None = None) -> None:
        """Connect (and `prepare` the connection) and start the thread now, so that the first
        request pays for neither."""
        self.direct.run(prepare or _nothing, retry_for=self.retry_for)
        with self._cond:
            self._start()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    self._cond.wait()
                batch = self._take()
            self._serve(batch)

    def _take(self) -> list[tuple[Req, Future[Res]]]:
        if self.key is None:
            count = min(self.max_batch, len(self._pending))
            return [self._pending.popleft() for _ in range(count)]
        batch: list[tuple[Req, Future[Res]]] = []
        later: list[tuple[Req, Future[Res]]] = []
        keys: set[Hashable] = set()
        while self._pending and len(batch) < self.max_batch:
            item = self._pending.popleft()
            key = self.key(item[0])
            (later if key in keys else batch).append(item)
            keys.add(key)
        self._pending.extendleft(reversed(later))
        return batch

    def _serve(self, batch: list[tuple[Req, Future[Res]]]) -> None:
        requests = [request for request, _ in batch]
        try:
            results = self.direct.run(
                lambda conn: self.serve(conn, requests), retry_for=self.retry_for
            )
            settled = list(zip(batch, results, strict=True))
        except Exception as exc:  # a database error, or a bug: never leave callers waiting
            if self.isolate and len(batch) > 1 and not is_transient(exc):
                for item in batch:
                    self._serve([item])
            else:
                for _, done in batch:
                    _settle(done, error=exc)
            return
        for (_, done), result in settled:
            _settle(done, result=result)


def _settle(done: Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)
    except InvalidStateError:  # cancelled by its caller meanwhile: nobody waits for it
        pass


def _nothing(conn: Any) -> None:
    return None
