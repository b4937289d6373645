"""Start a function directly and await its result: `app.start` and `RunHandle`.

```python
handle = app.start("resize-image", {"key": "a.png"})   # no event; returns at once
thumbnail = handle.result(timeout=30)                  # the run's output, once completed

handle = await app.start_async("resize-image", {"key": "a.png"})
thumbnail = await handle.result_async(timeout=30)

app.run_handle(run_id).status()                        # any run, however it was started
```

A started run is an ordinary run of the function: any daemon serving the function executes
it, with the function's retries, `cancel_on`, timeouts, concurrency, throttle and priority.
Its `ctx.event` is the event `orchestrator/function.started` (`id` `start:<run id>`, `data`
as given, `ts` the caller's clock); no event row is written. The flow control that decides
over events — `rate_limit`, `idempotency`, `singleton`, `debounce`, `batch_events` — does
not apply: pass `id=` to make a start idempotent.

`result()` LISTENs for the end of the run (migration 0009 notifies the end of awaited
runs), so it returns as soon as the run ends, and also reads the run every `POLL_EVERY`
seconds in case notifications cannot reach it (a transaction pooler does not pass them).
Each `result()` call holds a connection of its own while it waits.

The decisions live here as plain code (generators of the commands in db/handles.py); the
sync and async methods only choose the connection and the driver.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from orchestrator import tracecontext
from orchestrator.db import clock, outbox
from orchestrator.db import handles as db
from orchestrator.db.ops import Op, Pause
from orchestrator.db.runs import CancelWatch, NewRun
from orchestrator.errors import (
    CancelledRunError,
    InvalidRunIdError,
    RunFailedError,
    RunNotFoundError,
    RunSkippedError,
    RunTimeoutError,
    UnknownFunctionError,
)
from orchestrator.flow import FlowPolicy, RunKeys

if TYPE_CHECKING:
    from orchestrator.app import Orchestrator

STARTED_EVENT_NAME = "orchestrator/function.started"
POLL_EVERY = 5.0  # seconds between reads of an awaited run when no notification comes

_ENDINGS = {"failed": RunFailedError, "cancelled": CancelledRunError, "skipped": RunSkippedError}


class RunHandle:
    """A run, to await or inspect. Made by `app.start` or `app.run_handle(run_id)`; holds no
    connection. An unknown run id raises `RunNotFoundError` from `result()` and `status()`."""

    def __init__(self, app: Orchestrator, run_id: str) -> None:
        self._app = app
        self.run_id = run_id_of(run_id)

    def __repr__(self) -> str:
        return f"RunHandle({self.run_id!r})"

    def result(self, timeout: timedelta | float | None = None) -> Any:
        """Wait for the run to end and return its output (decoded JSON).

        A run that failed, was cancelled or was skipped raises `RunFailedError`,
        `CancelledRunError` or `RunSkippedError` (all `RunNotCompletedError`), with the
        error the run recorded. With a `timeout` (seconds or a timedelta), a run not ended by
        then raises `RunTimeoutError` (a `TimeoutError`) and goes on unaffected. Marks the
        run awaited (see the module doc)."""
        op = awaiting(self.run_id, seconds(timeout, "timeout"))
        with db.listening(self._app.database_url()) as conn:
            return outbox.run(op, conn)

    async def result_async(self, timeout: timedelta | float | None = None) -> Any:
        """`result()`, for asyncio."""
        op = awaiting(self.run_id, seconds(timeout, "timeout"))
        url = await asyncio.to_thread(self._app.database_url)  # it may start the embedded one
        async with await db.listening_async(url) as conn:
            return await outbox.run_async(op, conn)

    def status(self) -> str:
        """The run's status now: queued, running, sleeping, waiting, completed, failed,
        cancelled or skipped."""
        return self._app._execute(lambda: current(self.run_id), None)

    async def status_async(self) -> str:
        """`status()`, for asyncio."""
        return await self._app._execute_async(current(self.run_id), None)


# -- awaiting ------------------------------------------------------------------------------


def awaiting(
    run_id: str,
    timeout: float | None,
    *,
    poll_every: float = POLL_EVERY,
    clock: Callable[[], float] = time.monotonic,
) -> Op[Any]:
    """The run's output once it ended (or its typed error), woken by the notification of
    its end and reading it every `poll_every` seconds besides."""
    deadline = None if timeout is None else clock() + timeout
    state = yield from db.watch(run_id)
    read_at = clock()
    while state is not None and not state.ended:
        now = clock()
        if deadline is not None and now >= deadline:
            raise RunTimeoutError(run_id, timeout or 0.0, state.status)
        until = read_at + poll_every if deadline is None else min(read_at + poll_every, deadline)
        heard = yield Pause(max(0.0, until - now))
        if run_id in heard or clock() >= read_at + poll_every:
            state = yield from db.read(run_id)
            read_at = clock()
    return outcome(run_id, state)


def outcome(run_id: str, state: db.RunState | None) -> Any:
    """An ended run's output, or the typed error of its end."""
    if state is None:
        raise RunNotFoundError(f"no run with id {run_id!r}")
    ending = _ENDINGS.get(state.status)
    if ending is not None:
        raise ending(run_id, state.status, state.error)
    return state.output


def current(run_id: str) -> Op[str]:
    state = yield from db.read(run_id)
    if state is None:
        raise RunNotFoundError(f"no run with id {run_id!r}")
    return state.status


# -- starting ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    """A checked `app.start` call, to be written by `op()`."""

    run_id: str
    function_id: str
    options: dict[str, Any] | None  # the function's, if registered on this app
    data: dict[str, Any]
    delay: float
    ts: datetime
    trace_context: str | None = None  # the caller's, as JSON (orchestrator/tracecontext.py)

    def op(self) -> Op[str]:
        """Create the run; returns its id (that of the existing run, for an id seen before)."""
        options = self.options
        if options is None:
            options = yield from db.function_options(self.function_id)
        if options is None:
            raise UnknownFunctionError(
                f"function {self.function_id!r} is not registered on this app, and no daemon "
                "ever registered it; check the id, or register it with @app.function(...)"
            )
        run, watches = self.new_run(options)
        other = yield from db.start(run, watches, self.delay)
        if other is not None and other != self.function_id:
            raise InvalidRunIdError(
                f"run id {self.run_id} belongs to a run of function {other!r}, not "
                f"{self.function_id!r}; use a new id for each run you start"
            )
        return self.run_id

    def new_run(self, options: dict[str, Any]) -> tuple[NewRun, list[CancelWatch]]:
        """The run and its cancellation conditions, as the ingest would make them."""
        event = {
            "id": f"start:{self.run_id}",
            "name": STARTED_EVENT_NAME,
            "data": self.data,
            "ts": self.ts.isoformat(),
        }
        policy = FlowPolicy.from_options(options)
        keys = policy.run_keys(event) if policy.claims else RunKeys()
        run = NewRun(
            self.function_id,
            [event],
            id=self.run_id,
            trace_context=self.trace_context,
            **keys.fields(),
        )
        watches = [
            CancelWatch(
                self.function_id, i, c["event"], c.get("match"), c.get("if"), c.get("timeout")
            )
            for i, c in enumerate(options.get("cancel_on") or ())
        ]
        return run, watches


def plan_start(
    app: Orchestrator,
    function_id: str,
    data: dict[str, Any] | None,
    delay: timedelta | float | None,
    run_id: str | uuid.UUID | None,
) -> Start:
    """Check an `app.start` call (no I/O)."""
    from orchestrator.codec import validate_event

    if not isinstance(function_id, str):
        raise UnknownFunctionError(f"function id must be a string, got {function_id!r}")
    text = validate_event(
        STARTED_EVENT_NAME, data if data is not None else {}, None, app.config.max_event_bytes
    )
    fdef = app.functions.get(function_id)
    return Start(
        run_id=str(uuid.uuid4()) if run_id is None else run_id_of(run_id),
        function_id=function_id,
        options=None if fdef is None else fdef.describe(),
        data=json.loads(text),
        delay=seconds(delay, "delay") or 0.0,
        ts=clock.current() or datetime.now(UTC),
        trace_context=tracecontext.current_json(),
    )


def run_id_of(value: str | uuid.UUID) -> str:
    """A run id in its canonical form; `InvalidRunIdError` if it is no UUID."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))
    except ValueError:
        raise InvalidRunIdError(f"run id must be a UUID, got {value!r}") from None


def seconds(value: timedelta | float | None, what: str) -> float | None:
    if value is None:
        return None
    number = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not number >= 0:  # also NaN
        raise ValueError(f"{what} must be a number of seconds >= 0 or a timedelta, got {value!r}")
    return number
