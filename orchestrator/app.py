"""`Orchestrator`: the registry of functions and the way to send events.

```python
app = Orchestrator()                       # database from config / env / embedded default

@app.function("send-welcome", trigger=event("user/created"), retries=3)
def send_welcome(ctx: Context) -> dict: ...

event_id = app.send("user/created", {"user_id": 7})
```

The daemon (`orchestrator run --app package.module:app`) imports this object to learn which
functions exist; `send` only writes an event row, so any process that can reach the database
can send.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from orchestrator.codec import validate_event
from orchestrator.config import Config, load_config
from orchestrator.errors import RegistrationError
from orchestrator.flow import (
    Batch,
    Concurrency,
    Debounce,
    Idempotency,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from orchestrator.functions import (
    FAILED_EVENT_NAME,
    Backoff,
    CancelOn,
    FunctionDef,
    Trigger,
    event,
    make_function,
)

__all__ = ["Orchestrator", "validate_event"]  # validate_event: its home is codec.py

if TYPE_CHECKING:
    import uuid

    from orchestrator.db.background_pool import BackgroundPool
    from orchestrator.db.database import Database
    from orchestrator.db.ops import Op
    from orchestrator.db.outbox import AsyncOutboxConnection, OutboxConnection
    from orchestrator.handles import RunHandle
    from orchestrator.recovery import Recovery, Selection

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


class Orchestrator:
    def __init__(self, database_url: str | None = None, *, config: Config | None = None) -> None:
        """`database_url` (or `config.database_url`) wins over the config file and environment;
        with neither, the configured URL or the embedded Postgres is used."""
        self._explicit_url = database_url
        self._config = config
        self._functions: dict[str, FunctionDef] = {}
        self._db: Database | None = None
        self._lock = threading.Lock()

    # -- registry ----------------------------------------------------------------------

    def function(
        self,
        id: str,
        *,
        trigger: Trigger | Sequence[Trigger] | None = None,
        retries: int = 3,
        backoff: Backoff | None = None,
        cancel_on: Sequence[CancelOn] = (),
        on_failure: Callable[..., Any] | None = None,
        concurrency: Concurrency | Sequence[Concurrency] | None = None,
        throttle: Throttle | None = None,
        rate_limit: RateLimit | None = None,
        debounce: Debounce | None = None,
        priority: Priority | None = None,
        batch_events: Batch | None = None,
        idempotency: str | Idempotency | None = None,
        singleton: Singleton | None = None,
        timeouts: Timeouts | None = None,
    ) -> Callable[[F], F]:
        """Register a durable function under a stable `id`.

        - `trigger`: `event(...)`, `cron(...)`, or a list of them.
        - `retries`, `backoff`: the retry policy of each step.
        - `cancel_on`: `cancel_on(...)` conditions; a matching event cancels the run.
        - `on_failure`: a function `(ctx) -> Any` run as its own durable run (id
          `<id>:on-failure`) when a run fails for good; `ctx.event` is the event
          `orchestrator/function.failed` with `data.run_id`, `data.error` and `data.event`
          (the original event). Its run's `parent_run_id` is the failed run.
        - Flow control (orchestrator/flow.py; keys are CEL over `event`): `concurrency`,
          `throttle`, `rate_limit`, `debounce`, `priority`, `batch_events`, `idempotency`
          (a key expression, or `Idempotency(key, period)`), `singleton`, `timeouts`.
        """
        flow = {
            "concurrency": concurrency,
            "throttle": throttle,
            "rate_limit": rate_limit,
            "debounce": debounce,
            "priority": priority,
            "batch_events": batch_events,
            "idempotency": idempotency,
            "singleton": singleton,
            "timeouts": timeouts,
        }

        def register(fn: F) -> F:
            handler_id = f"{id}:on-failure" if on_failure is not None else None
            fdef = make_function(
                id,
                fn,
                trigger,
                retries,
                backoff,
                cancel=cancel_on,
                on_failure_id=handler_id,
                flow=flow,
            )
            self._add(fdef)
            if on_failure is not None and handler_id is not None:
                only_this = event(FAILED_EVENT_NAME, if_=f"event.data.function_id == {id!r}")
                self._add(make_function(handler_id, on_failure, only_this, retries, backoff))
            return fn

        return register

    def _add(self, fdef: FunctionDef) -> None:
        if fdef.id in self._functions:
            raise RegistrationError(f"function id {fdef.id!r} is registered twice")
        self._functions[fdef.id] = fdef

    @property
    def functions(self) -> dict[str, FunctionDef]:
        return dict(self._functions)

    def version(self) -> str:
        """A hash of the registered functions' ids and source: the code version of this app."""
        digest = hashlib.sha256()
        for fid in sorted(self._functions):
            digest.update(self._functions[fid].source_hash().encode())
        return digest.hexdigest()[:12]

    # -- database ----------------------------------------------------------------------

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config()
        return self._config

    def database_url(self) -> str:
        """The URL this app talks to: explicit, configured, or the embedded server's."""
        import os

        from orchestrator.config import project_home
        from orchestrator.db.connect import resolve_url

        cfg = self.config
        url = self._explicit_url or cfg.database_url
        if url:
            return url
        return resolve_url("", cfg.embedded_data_dir, home=project_home(None, os.environ))

    def _database(self) -> Database:
        with self._lock:
            if self._db is None:
                from orchestrator.db.database import Database

                self._db = Database(
                    self.database_url(), pool_size=2, application_name="orchestrator-client"
                )
            return self._db

    def bind(self, url: str | None) -> str | None:
        """Use `url` from now on (the daemon binds its app to the database it serves; a test
        environment to its test database); None goes back to the configured database.
        Returns the URL bound before (None: none was)."""
        self.close()
        with self._lock:
            before, self._explicit_url = self._explicit_url, url
        return before

    def close(self) -> None:
        """Close the app's connections (the next call opens new ones), the async methods'
        pool included."""
        with self._lock:
            db, background = self._db, self._background
            self._db = self._background = None
        if db is not None:
            db.dispose()
        if background is not None:
            background.close()

    # -- events ------------------------------------------------------------------------

    def send(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
        conn: OutboxConnection | None = None,
    ) -> str:
        """Record an event and return its id. An id seen before is a duplicate: nothing is
        created and the same id is returned.

        Without `conn`, the event is committed on the app's own connection. With `conn` (a
        psycopg `Connection`, or an SQLAlchemy `Connection` or `Session`) it is written in
        that connection's transaction and nothing is committed: the event exists when the
        caller commits, and never did if they roll back (the outbox pattern)."""
        from orchestrator import client, tracecontext

        with tracecontext.sending(name):
            new = client.new_event(name, data, id, ts, self.config.max_event_bytes)
            return self._execute(lambda: client.send_op([new]), conn)[0]

    async def send_async(
        self,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        id: str | None = None,
        ts: datetime | None = None,
        conn: AsyncOutboxConnection | None = None,
    ) -> str:
        """`send` for asyncio, which never blocks the event loop. `conn`, if given, is a
        psycopg `AsyncConnection`, or an SQLAlchemy `AsyncConnection` or `AsyncSession`."""
        from orchestrator import client, tracecontext

        with tracecontext.sending(name):
            new = client.new_event(name, data, id, ts, await self._max_event_bytes())
            return (await self._execute_async(client.send_op([new]), conn))[0]

    def send_many(
        self, events: Iterable[dict[str, Any]], *, conn: OutboxConnection | None = None
    ) -> list[str]:
        """Record events given as dicts `{"name": ..., "data": {...}, "id"?: ..., "ts"?: ...}`
        and return their ids in the order given; `conn` as for `send`.

        Every event is checked before anything is written: a bad one raises
        `InvalidEventError` naming its index (`events[3]: ...`), and nothing is written. An
        id seen before, or repeated in `events`, is a duplicate: it is returned, and only
        its first occurrence is recorded. A statement records up to 1,000 events; on a
        connection in autocommit mode each is a transaction of its own."""
        from orchestrator import client, tracecontext

        with tracecontext.sending("events"):
            batch = client.new_events(events, self.config.max_event_bytes)
            return self._execute(lambda: client.send_op(batch), conn)

    async def send_many_async(
        self, events: Iterable[dict[str, Any]], *, conn: AsyncOutboxConnection | None = None
    ) -> list[str]:
        """`send_many` for asyncio; `conn` as for `send_async`."""
        from orchestrator import client, tracecontext

        with tracecontext.sending("events"):
            batch = client.new_events(events, await self._max_event_bytes())
            return await self._execute_async(client.send_op(batch), conn)

    # -- the connections of send, send_many and cancel, sync and async -------------------

    _background: BackgroundPool | None = None  # the async methods' own connections

    def _execute(self, op: Callable[[], Op[T]], conn: OutboxConnection | None) -> T:
        """Run a fresh `op()` on `conn`, or in a transaction of the app's own (retried after
        a lost connection, hence an op made per attempt)."""
        from orchestrator.db import outbox

        if conn is not None:
            return outbox.run(op(), conn)
        return self._database().run(lambda own: outbox.run(op(), own))

    async def _execute_async(self, op: Op[T], conn: AsyncOutboxConnection | None) -> T:
        from orchestrator.db import outbox

        if conn is not None:
            return await outbox.run_async(op, conn)
        return await self._background_pool().run(lambda own: outbox.run_async(op, own))

    def _background_pool(self) -> BackgroundPool:
        with self._lock:
            if self._background is None:
                from orchestrator.db.background_pool import BackgroundPool

                self._background = BackgroundPool(
                    self.database_url, application_name="orchestrator-client"
                )
            return self._background

    async def _max_event_bytes(self) -> int:
        if self._config is None:  # loading it reads a file: not on the event loop
            await asyncio.to_thread(lambda: self.config)
        return self.config.max_event_bytes

    async def aclose(self) -> None:
        """Close the connections of the async methods (`close` closes the others). A later
        call opens new ones."""
        if self._background is not None:
            await asyncio.to_thread(self._background.close)

    # -- runs ---------------------------------------------------------------------------

    def cancel(
        self,
        run_id: str,
        *,
        reason: str = "cancelled by request",
        children: bool = True,
        conn: OutboxConnection | None = None,
    ) -> str:
        """Cancel a run and, unless `children=False`, its unfinished invoked runs; returns
        the run's status after (`cancelled`, or the status of a run that had already ended).

        Any active run is `cancelled` at once, an executing one too: its flow-control slots
        are free for the next run, and its execution stops (an async function's task is
        cancelled; a plain function stops at its next step, and anything it still writes is
        refused). With `children=False` the runs it invoked keep running; their ends are
        recorded as usual, and nobody awaits them. Raises `RunNotFoundError` for an unknown
        id. `conn` as for `send` (the cancellation takes effect when it commits).
        """
        from orchestrator import client

        return self._execute(lambda: client.cancel_op(run_id, reason, children), conn)

    async def cancel_async(
        self,
        run_id: str,
        *,
        reason: str = "cancelled by request",
        children: bool = True,
        conn: AsyncOutboxConnection | None = None,
    ) -> str:
        """`cancel` for asyncio; `conn` as for `send_async`."""
        from orchestrator import client

        return await self._execute_async(client.cancel_op(run_id, reason, children), conn)

    def signal(
        self,
        run_id: str,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        conn: OutboxConnection | None = None,
    ) -> int:
        """Send signal `name` with `data` (a JSON object; None sends `{}`) to one run, whose
        `ctx.step.wait_for_signal(..., name)` returns it; returns the signal's id (its place
        in the order of sending).

        Kept until a wait takes it, so the run need not wait yet; each signal is taken once,
        in the order of sending. Raises `RunNotFoundError` for an unknown run,
        `RunFinishedError` for a run that has finished, `InvalidSignalError` for an empty or
        overlong name or data that is not a dict, `PayloadError` / `PayloadTooLargeError` for
        data that is not JSON or larger than `max_event_bytes`. `conn` as for `send`.
        """
        from orchestrator import client

        data_json = client.signal_data(name, data, self.config.max_event_bytes)
        return self._execute(lambda: client.signal_op(run_id, name, data_json), conn)

    async def signal_async(
        self,
        run_id: str,
        name: str,
        data: dict[str, Any] | None = None,
        *,
        conn: AsyncOutboxConnection | None = None,
    ) -> int:
        """`signal` for asyncio; `conn` as for `send_async`."""
        from orchestrator import client

        data_json = client.signal_data(name, data, await self._max_event_bytes())
        return await self._execute_async(client.signal_op(run_id, name, data_json), conn)

    def run_state(self, run_id: str, *, conn: OutboxConnection | None = None) -> dict[str, Any]:
        """The state run `run_id` published with `ctx.set_state` (`{}` if none), as of its
        last write to the database. Raises `RunNotFoundError` for an unknown run."""
        from orchestrator import client

        return self._execute(lambda: client.run_state_op(run_id), conn)

    async def run_state_async(
        self, run_id: str, *, conn: AsyncOutboxConnection | None = None
    ) -> dict[str, Any]:
        """`run_state` for asyncio."""
        from orchestrator import client

        return await self._execute_async(client.run_state_op(run_id), conn)

    def start(
        self,
        function_id: str,
        data: dict[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
        id: str | uuid.UUID | None = None,
    ) -> RunHandle:
        """Start a run of `function_id` now, without an event, and return its `RunHandle`
        (`handle.result()` awaits its output).

        Its `ctx.event` is `orchestrator/function.started` with `data` (checked like event
        data). `delay` (seconds or a timedelta) makes it due that much later. `id`, a UUID
        of your choosing, makes the start idempotent: a second start with the same id
        creates nothing and returns a handle to the first run. The function must be
        registered on this app or by a daemon, else `UnknownFunctionError`. See
        orchestrator/handles.py for what flow control applies.
        """
        from orchestrator.handles import RunHandle, plan_start

        plan = plan_start(self, function_id, data, delay, id)
        return RunHandle(self, self._execute(plan.op, None))

    async def start_async(
        self,
        function_id: str,
        data: dict[str, Any] | None = None,
        *,
        delay: timedelta | float | None = None,
        id: str | uuid.UUID | None = None,
    ) -> RunHandle:
        """`start`, for asyncio."""
        from orchestrator.handles import RunHandle, plan_start

        plan = plan_start(self, function_id, data, delay, id)
        return RunHandle(self, await self._execute_async(plan.op(), None))

    def run_handle(self, run_id: str | uuid.UUID) -> RunHandle:
        """A handle on an existing run (however it was started), to await or inspect it.
        Reads nothing: an unknown id raises `RunNotFoundError` from `result()` and
        `status()`; an id that is not a UUID raises `InvalidRunIdError` here."""
        from orchestrator.handles import RunHandle

        return RunHandle(self, str(run_id))

    # -- recovery: replay, resume, fork (see orchestrator/recovery.py) --------------------

    def replay(self, run_id: str) -> str:
        """Start a new run of the same function from the same event(s) as `run_id`, with
        fresh steps; returns the new run's id (its `origin_run_id` is `run_id`)."""
        return self._recovery().replay(run_id)

    def resume(self, run_id: str) -> str:
        """Put a failed or cancelled run back in the queue: its completed steps are reused,
        the step that failed it runs again with fresh retries. Returns the run's id; raises
        `RunStateError` for a run in another state."""
        return self._recovery().resume(run_id)

    def fork(self, run_id: str, from_step: str, *, data: dict[str, Any] | None = None) -> str:
        """Start a new run that reuses the steps `run_id` recorded before `from_step` and
        executes from there, with `data` as its event data if given; returns its id."""
        return self._recovery().fork(run_id, from_step, data)

    def replay_runs(
        self,
        *,
        function: str | None = None,
        status: str | tuple[str, ...] = "failed",
        since: datetime | timedelta | None = None,
        until: datetime | timedelta | None = None,
    ) -> list[str]:
        """Replay every run of `function` with `status` that finished in [since, until) (a
        timedelta counts back from now); returns the new runs' ids."""
        return self._bulk("replay", _selection(function, status, since, until))

    def resume_runs(
        self,
        *,
        function: str | None = None,
        status: str | tuple[str, ...] = "failed",
        since: datetime | timedelta | None = None,
        until: datetime | timedelta | None = None,
    ) -> list[str]:
        """Resume every run of `function` with `status` (failed or cancelled) that finished
        in [since, until); returns the ids of the runs requeued."""
        return self._bulk("resume", _selection(function, status, since, until))

    def _bulk(self, verb: str, selection: Selection) -> list[str]:
        recovery = self._recovery()
        ids = recovery.select(selection)
        act = recovery.replay_many if verb == "replay" else recovery.resume_many
        return act(ids).done

    def _recovery(self) -> Recovery:
        from orchestrator.recovery import Recovery

        return Recovery(self._database(), max_event_bytes=self.config.max_event_bytes)


def _selection(
    function: str | None,
    status: str | tuple[str, ...],
    since: datetime | timedelta | None,
    until: datetime | timedelta | None,
) -> Selection:
    from orchestrator.recovery import Selection

    statuses = (status,) if isinstance(status, str) else tuple(status)
    return Selection(statuses, function, since, until)
