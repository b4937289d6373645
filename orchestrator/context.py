"""What user code sees: `Context` and the step API `ctx.step`.

```python
@app.function("send-welcome", trigger=event("user/created"))
def send_welcome(ctx: Context) -> dict:
    ctx.step.run("send-email", send_email, ctx.event.data["email"])
    ctx.step.sleep("wait-a-day", timedelta(days=1))
    return {"sent": True}
```

Every step takes a step id first. The id names the step's recorded result in
`orchestrator.steps`; calling the same id again in one run gets an automatic counter
(`id`, `id#1`, …).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, overload

from orchestrator.engine.execution import Execution
from orchestrator.engine.kinds import invoke, parallel, run, send_event, sleep, wait, wait_any
from orchestrator.engine.kinds.wait_any import OnEvent, OnInvoke

T = TypeVar("T")


@dataclass(frozen=True)
class Event:
    """An event as a function receives it."""

    id: str
    name: str
    data: dict[str, Any]
    ts: str

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Event:
        return cls(
            str(obj.get("id", "")),
            str(obj.get("name", "")),
            obj.get("data") or {},
            str(obj.get("ts", "")),
        )


@dataclass(frozen=True)
class Arrival:
    """What `wait_for_any` returns when one of its entries came first: its `index` in the
    list, its `key`, and its `value`: the event (`Event`) for an `OnEvent` entry, the child
    run's output for an `OnInvoke` entry."""

    index: int
    key: str
    value: Any


class Step:
    """Durable steps. Each call is memoized by its step id: once it has a recorded result,
    later executions of the run return that result without running the body again.

    In an `async def` function every method returns an awaitable instead of the value:
    `await ctx.step.run(...)` (the signatures are those of `AsyncStep`)."""

    def __init__(self, execution: Execution, run_id: str) -> None:
        self._execution = execution
        self._run_id = run_id
        self._complete = execution.face.complete  # the value, or the awaitable of it

    def run(self, step_id: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `fn(*args, **kwargs)` once successfully and return its JSON result.

        On failure the step is retried with exponential back-off (the function's `retries`);
        when no retries are left, `StepError` is raised here. The result must be JSON (dicts
        with string keys, lists, strings, numbers, booleans, None); what is returned is the
        value as stored, so the first execution and a replay see the same thing. In an async
        function `fn` may be `async def` (awaited on the loop) or plain (run in a thread).
        """
        result: T = self._complete(run.start(self._execution, step_id, fn, args, kwargs))
        return result

    def sleep(self, step_id: str, duration: timedelta | float) -> None:
        """Suspend the run for `duration` (a timedelta or seconds), judged by the database clock.

        The worker is freed while the run sleeps; a daemon restart does not shorten or
        lengthen the sleep.
        """
        seconds = duration.total_seconds() if isinstance(duration, timedelta) else float(duration)
        return self._complete(sleep.start(self._execution, step_id, seconds=seconds))  # type: ignore[no-any-return]

    def sleep_until(self, step_id: str, until: datetime) -> None:
        """Suspend the run until `until` (an aware datetime; naive means UTC)."""
        if until.tzinfo is None:
            until = until.replace(tzinfo=UTC)
        return self._complete(sleep.start(self._execution, step_id, until=until))  # type: ignore[no-any-return]

    def wait_for_event(
        self,
        step_id: str,
        *,
        event: str,
        timeout: timedelta | float | None,
        match: str | None = None,
        if_: str | None = None,
        lookback: timedelta | float | Literal["run"] | None = None,
    ) -> Event | None:
        """Suspend until an event called `event` arrives, and return it; None on `timeout`
        (a timedelta or seconds; None waits for good).

        - `match="data.order_id"`: the event's `data.order_id` equals the triggering event's.
        - `if_`: a CEL expression over the triggering event `event` and the incoming one
          `async`, such as `"async.data.amount >= event.data.amount"`.
        - `lookback`: also count the events received in this window (a timedelta or
          seconds) before the step began; `"run"`: every event since the run was created.

        Every matching event received since the previous step began counts, including one
        that arrived before the run reached the wait. An event that ended an earlier step of
        this run never ends another; of the rest, the first received wins. The run holds no
        worker while it waits.
        """
        lookback = wait.lookback_of(lookback, f"wait_for_event '{step_id}'")
        spec = wait.WaitFor(event, match, if_, wait.seconds(timeout), lookback)
        found = _then(wait.start(self._execution, step_id, spec), _event_or_none)
        result: Event | None = self._complete(found)
        return result

    def invoke(
        self,
        step_id: str,
        *,
        function: str,
        data: dict[str, Any] | None = None,
        timeout: timedelta | float | None = None,
    ) -> Any:
        """Run function `function` as a child run (its event: `orchestrator/function.invoked`
        with `data`) and return its output. Its failure, cancellation or not finishing within
        `timeout` raises `StepError` here. The child's `parent_run_id` is this run."""
        seconds = wait.seconds(timeout)
        return self._complete(invoke.start(self._execution, step_id, function, data, seconds))

    def wait_for_any(
        self,
        step_id: str,
        *,
        events: Sequence[OnEvent | OnInvoke],
        timeout: timedelta | float | None,
    ) -> Arrival | None:
        """Suspend until the first of several things happens, and say which: an event
        (`OnEvent("payment/received", match="data.order_id")`, with the options of
        `wait_for_event`) or the end of a child run (`OnInvoke("charge", data={...})`, started
        as `invoke` starts one). Returns an `Arrival` (the entry's index and key, and the event
        or the child's output; a failed child raises `StepError`), or None on `timeout`.

        It is one step: it ends once, with the first to arrive (an event matching several
        entries ends the lowest), and replays the same answer. The children of the entries
        that did not win are cancelled.
        """
        found = wait_any.start(self._execution, step_id, events, wait.seconds(timeout))
        arrival = _then(found, _arrival)
        result: Arrival | None = self._complete(arrival)
        return result

    def send_event(
        self, step_id: str, events: dict[str, Any] | Sequence[dict[str, Any]]
    ) -> list[str]:
        """Send one event (`{"name": ..., "data": {...}}`, optional `"id"`) or a list of
        them; returns their ids. Ids are derived from the run and step, so a replay never
        sends an event twice."""
        batch = [events] if isinstance(events, dict) else list(events)
        sent: list[str] = self._complete(send_event.start(self._execution, step_id, batch))
        return sent

    def parallel(self, step_id: str, branches: Sequence[Any]) -> list[Any]:
        """Run step bodies concurrently and return their results in list order. Each entry
        is a callable or `(id, fn, args)`; each is memoized on its own as step
        `step_id[index or id]`, so a crash re-runs only the unfinished ones. In an async
        function the branches run concurrently on the loop."""
        results: list[Any] = self._complete(parallel.start(self._execution, step_id, branches))
        return results

    def idempotency_key(self, step_id: str) -> str:
        """A key stable across every re-execution of this step, for external APIs."""
        return f"{self._run_id}:{step_id}"


class AsyncStep(Protocol):
    """`ctx.step` as an `async def` function sees it, for type checkers (annotate the
    argument as `AsyncContext`): the same object as `Step`, whose methods take the same
    arguments and return awaitables of what `Step`'s return."""

    @overload
    def run(
        self, step_id: str, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> Awaitable[T]: ...
    @overload
    def run(
        self, step_id: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> Awaitable[T]: ...
    def sleep(self, step_id: str, duration: timedelta | float) -> Awaitable[None]: ...
    def sleep_until(self, step_id: str, until: datetime) -> Awaitable[None]: ...
    def wait_for_event(self, step_id: str, **options: Any) -> Awaitable[Event | None]: ...
    def invoke(self, step_id: str, **options: Any) -> Awaitable[Any]: ...
    def wait_for_any(self, step_id: str, **options: Any) -> Awaitable[Arrival | None]: ...
    def send_event(self, step_id: str, events: Any) -> Awaitable[list[str]]: ...
    def parallel(self, step_id: str, branches: Sequence[Any]) -> Awaitable[list[Any]]: ...
    def idempotency_key(self, step_id: str) -> str: ...


async def _then(step: Coroutine[Any, Any, Any], convert: Callable[[Any], T]) -> T:
    return convert(await step)


def _event_or_none(found: dict[str, Any] | None) -> Event | None:
    return None if found is None else Event.from_json(found)


def _arrival(won: wait_any.Won | None) -> Arrival | None:
    if won is None:
        return None
    index, entry, value = won
    if isinstance(entry, OnEvent):
        value = Event.from_json(value)
    return Arrival(index, wait_any.key_of(entry), value)


class Context:
    """The argument every function receives.

    - `event`: the triggering event (`Event` with `id`, `name`, `data`, `ts`)
    - `events`: every event the run received (one, for an event trigger)
    - `run_id`, `function_id`
    - `attempt`: how many times this run has been picked up by a worker (1 on the first)
    - `log`: a structlog logger bound to `run_id` and `function_id`
    - `step`: the durable step API
    """

    def __init__(
        self,
        *,
        run_id: str,
        function_id: str,
        events: list[Event],
        attempt: int,
        log: Any,
        step: Step,
    ) -> None:
        self.run_id = run_id
        self.function_id = function_id
        self.events = events
        self.event = events[0] if events else Event("", "", {}, "")
        self.attempt = attempt
        self.log = log
        self.step = step


class AsyncContext(Context):
    """The `Context` an `async def` function receives: the same attributes, and a `step`
    whose methods return awaitables (annotate with it: `async def f(ctx: AsyncContext)`)."""

    if TYPE_CHECKING:
        step: AsyncStep  # type: ignore[assignment]
