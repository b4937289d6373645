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
from orchestrator.engine.kinds import (
    invoke,
    parallel,
    run,
    send_event,
    signal,
    sleep,
    wait,
    wait_any,
)
from orchestrator.engine.kinds.wait_any import OnEvent, OnInvoke
from orchestrator.engine.retry import RetryOn, step_policy
from orchestrator.functions import Backoff

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

    def run(
        self,
        step_id: str,
        fn: Callable[..., T],
        *args: Any,
        retries: int | None = None,
        backoff: Backoff | None = None,
        retry_on: RetryOn | None = None,
        timeout: timedelta | float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run `fn(*args, **kwargs)` once successfully and return its JSON result.

        On failure the step is retried with exponential back-off (the function's `retries`
        and `backoff`); when no retries are left, `StepError` is raised here. The result must
        be JSON (dicts with string keys, lists, strings, numbers, booleans, None); what is
        returned is the value as stored, so the first execution and a replay see the same
        thing. In an async function `fn` may be `async def` (awaited on the loop) or plain
        (run in a thread).

        The step's own policy overrides the function's. These four keyword names are
        reserved: they are never passed to `fn` (pass such an argument through a lambda or
        a partial). Bad values raise TypeError or ValueError naming the step, at the call.

        - `retries`: retries after the first attempt (0-100).
        - `backoff`: a `Backoff` (as `app.function` takes), e.g. `Backoff.of(base=1, max=60)`.
        - `retry_on`: an exception type, a tuple of them, or a predicate `(exc) -> bool`.
          An error it does not accept fails the step at once, as `NonRetriableError` does
          (a predicate that raises accepts nothing). `NonRetriableError` always fails at
          once; `StepTimeoutError` (a `TimeoutError`) is judged like any other error.
        - `timeout`: seconds or a timedelta an attempt may run. An attempt that runs longer
          fails with `StepTimeoutError` and is retried as the policy says.
          An `async def` body is cancelled at the timeout. A plain body cannot be stopped:
          with a timeout it runs on a new thread of its own, and at the timeout the step
          stops waiting for it. The thread is then abandoned: it runs on until the body
          returns or raises by itself, and whatever it returns or raises is dropped; a step
          it calls is refused, and nothing it does can be recorded for the run (the run
          released its lease when the attempt failed; the retry runs under a new lease token
          and the database refuses writes under the old one). Its side effects are its own:
          a body that may outlive its timeout should be safe to run again, or watch a
          deadline itself. Abandoned threads are counted in the metrics
          (`orchestrator_step_threads_abandoned_total`, and those still running in
          `orchestrator_step_threads_abandoned`); they never hold up the worker's exit.
        """
        policy = None
        overrides = (retries, backoff, retry_on, timeout)
        if any(value is not None for value in overrides):
            policy = step_policy(
                step_id,
                self._execution.policy,
                retries=retries,
                backoff=backoff,
                retry_on=retry_on,
                timeout=timeout,
            )
        step = run.start(self._execution, step_id, fn, args, kwargs, policy=policy)
        result: T = self._complete(step)
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

    def wait_for_signal(
        self, step_id: str, name: str, *, timeout: timedelta | float | None
    ) -> dict[str, Any] | None:
        """Take the oldest signal called `name` sent to this run and return its data (a
        dict, `{}` for a signal sent without data); if none is pending, suspend until one is
        sent, or return None after `timeout` (a timedelta or seconds; None waits for good).

        Signals are sent with `app.signal(run_id, name, data)` (or an INSERT into
        `orchestrator.signals`) and kept until a wait takes them: one sent before the run
        reaches its wait is taken by it. Each signal is taken by one wait, in the order of
        sending. The run holds no worker while it waits.
        """
        seconds = wait.seconds(timeout)
        taken: dict[str, Any] | None = self._complete(
            signal.start(self._execution, step_id, name, seconds)
        )
        return taken

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
        self,
        step_id: str,
        fn: Callable[..., Awaitable[T]],
        *args: Any,
        retries: int | None = None,
        backoff: Backoff | None = None,
        retry_on: RetryOn | None = None,
        timeout: timedelta | float | None = None,
        **kwargs: Any,
    ) -> Awaitable[T]: ...
    @overload
    def run(
        self,
        step_id: str,
        fn: Callable[..., T],
        *args: Any,
        retries: int | None = None,
        backoff: Backoff | None = None,
        retry_on: RetryOn | None = None,
        timeout: timedelta | float | None = None,
        **kwargs: Any,
    ) -> Awaitable[T]: ...
    def sleep(self, step_id: str, duration: timedelta | float) -> Awaitable[None]: ...
    def sleep_until(self, step_id: str, until: datetime) -> Awaitable[None]: ...
    def wait_for_event(self, step_id: str, **options: Any) -> Awaitable[Event | None]: ...
    def wait_for_signal(
        self, step_id: str, name: str, *, timeout: timedelta | float | None
    ) -> Awaitable[dict[str, Any] | None]: ...
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
    - `cancelled`: True once the run was cancelled (`app.cancel`, a `cancel_on` event, …)
      while this execution runs it; `wait_cancelled(timeout)` blocks until then

    A cancellation ends the run at once, even while one of its step bodies runs: the run is
    `cancelled`, its flow-control slots are free, and nothing its execution writes afterwards
    is kept (a step result, its end). An async function's task is cancelled where it awaits;
    a plain function's step body runs on until it returns, and may look at `ctx.cancelled` or
    wait on `ctx.wait_cancelled(timeout)` to stop early: whatever it returns is refused, and
    the function stops at its next step.
    - `set_state(key, value)`: publish progress that `app.run_state(run_id)` reads
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

    @property
    def cancelled(self) -> bool:
        """True once this run was cancelled (the worker executing it was told)."""
        execution = self.step._execution
        return execution.lease.token in execution.cancelled

    def wait_cancelled(self, timeout: float | None = None) -> bool:
        """Block until this run is cancelled, or for `timeout` seconds (None: for good);
        returns `cancelled`. For a plain function's step body; an async function's task is
        cancelled where it awaits anyway."""
        execution = self.step._execution
        return execution.cancelled.wait(execution.lease.token, timeout)

    def set_state(self, key: str, value: Any) -> None:
        """Publish `value` (JSON) under `key` in the run's state (`runs.state`), which
        `app.run_state(run_id)`, `orchestrator runs show` and SQL read while the run is in
        flight. Plain in sync and async functions alike: it writes nothing itself; the run's
        next write (a step's checkpoint, a sleep or wait, its end) carries it, so the state
        is never ahead of the steps before it, and a replay repeats the calls whose write
        was lost. Keys set earlier stay. The whole state is limited to `max_state_bytes` of
        JSON (64 KiB by default): `StateTooLargeError` (naming the key) past it,
        `PayloadError` for a value that is not JSON, `InvalidStateError` for a key that is
        not a 1-200 character string."""
        self.step._execution.set_state(key, value)


class AsyncContext(Context):
    """The `Context` an `async def` function receives: the same attributes, and a `step`
    whose methods return awaitables (annotate with it: `async def f(ctx: AsyncContext)`)."""

    if TYPE_CHECKING:
        step: AsyncStep  # type: ignore[assignment]
