"""What an execution tells a tracer, if one is set up: one span per run attempt, one per step
attempt, sleeps and waits as events on the run's span.

The engine knows only these protocols; the OpenTelemetry implementation lives in
orchestrator/runtime/tracing.py and is used only when the worker set up a tracer provider.
Otherwise the execution's `trace` is None and each hook point costs one `is not None` check
(see `NOTRACE`), like the observer (engine/observer.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from orchestrator.errors import Suspend

T = TypeVar("T")


class StepSpan(Protocol):
    def carrier(self) -> str | None:
        """This step's trace context as JSON, for the runs and events it starts."""

    def enter(self) -> object:
        """Make this span current (for the step body's own spans and log lines); returns
        the token `leave` takes."""

    def leave(self, token: object) -> None: ...

    def end(self, status: str, error_type: str | None = None) -> None:
        """The attempt ended: `completed`, `retrying`, `failed`, `waiting`, `stopped`."""


class RunSpan(Protocol):
    def step(self, step_id: str, kind: str, attempt: int) -> StepSpan:
        """A span for one attempt of a step, a child of this run attempt's."""

    def event(self, name: str, attributes: dict[str, Any]) -> None:
        """Something the run did that takes no span of its own (a sleep, a wait)."""

    def enter(self) -> object: ...

    def leave(self, token: object) -> None: ...

    def failed(self, error_type: str) -> None:
        """The run failed for good with an error of this type."""

    def end(self, status: str) -> None:
        """The run attempt stopped with this status (`completed`, `failed`, `suspended`…)."""


class Traced(Protocol):
    """What the tracer needs of a claimed run (engine/executor.py `Task`)."""

    @property
    def run_id(self) -> str: ...
    @property
    def function_id(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def origin(self) -> str | None: ...
    @property
    def origin_run_id(self) -> str | None: ...
    @property
    def trace_context(self) -> dict[str, Any] | None: ...


class Tracer(Protocol):
    def run(self, task: Traced) -> RunSpan | None:
        """A span for this attempt of the run (None: nothing traced)."""


async def spanned(span: StepSpan | None, work: Callable[[str | None], Awaitable[T]]) -> T:
    """Await `work(carrier)` inside `span`, then end it: `completed`, `waiting` (the run
    suspended), or `failed`. `carrier` is the span's context as JSON, for the runs and events
    the work starts (None without a span: tracing is off)."""
    if span is None:
        return await work(None)
    try:
        result = await work(span.carrier())
    except Suspend:
        span.end("waiting")
        raise
    except BaseException as exc:
        span.end("failed", type(exc).__name__)
        raise
    span.end("completed")
    return result


class _NoTracer:
    def run(self, task: Traced) -> RunSpan | None:
        return None


NOTRACE: Tracer = _NoTracer()
