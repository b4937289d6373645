"""Step bodies replaced for one test: mocks (`TestEnv.mock_step`) and injected failures
(`TestEnv.fail_step`), and a record of every body call with its time on the virtual clock.

The engine asks `StandIns.body` before each step body runs (engine/execution.py `StandIns`);
what it returns is called in the body's place, by the same code that calls a real body, so a
mocked or failing step is checkpointed, retried and replayed exactly as a real one.
"""

from __future__ import annotations

import inspect
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from orchestrator.db import clock
from orchestrator.errors import LeaseLost, NonRetriableError
from orchestrator.functions import is_async_callable

FailureKind = Literal["transient", "non_retriable", "crash"]


class InjectedFailure(RuntimeError):
    """The error a transient failure injected by `TestEnv.fail_step` raises in a step body
    (retried like any other exception)."""

    code = "injected_failure"


class SimulatedCrash(LeaseLost):
    """A worker process dying right after a step body returned, before its result was
    recorded: the execution stops there, writing nothing, and the run is requeued as after a
    real crash (one recovery, one crash)."""


@dataclass(frozen=True)
class StepCall:
    """One call of a step body (a real one, a mock or an injected failure)."""

    run_id: str
    step_id: str  # the unique id: `charge`, or `charge#1` for its second call in the run
    attempt: int  # 1 for the first call of this step id in this run, 2 for the next...
    at: datetime  # the virtual time of the call
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    function_id: str = ""  # the function whose run called it


@dataclass
class StepMock:
    """What `TestEnv.mock_step` returns: its calls, to assert on."""

    function_id: str
    step_id: str
    return_value: Any = None
    side_effect: Any = None
    calls: list[StepCall] = field(default_factory=list)
    _effects: Iterator[Any] | None = field(default=None, repr=False)

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        effect = self.side_effect
        if effect is None:
            return self.return_value
        if isinstance(effect, BaseException) or (
            isinstance(effect, type) and issubclass(effect, BaseException)
        ):
            raise effect
        if callable(effect):
            return effect(*args, **kwargs)
        if self._effects is None:
            self._effects = iter(effect)
        try:
            item = next(self._effects)
        except StopIteration:
            raise AssertionError(
                f"mock of step '{self.step_id}' of '{self.function_id}' was called more times "
                "than its side_effect has items"
            ) from None
        if isinstance(item, BaseException) or (
            isinstance(item, type) and issubclass(item, BaseException)
        ):
            raise item
        return item


@dataclass
class Failure:
    """An injected failure: the first `times` calls of the step fail as `kind` says."""

    function_id: str
    step_id: str
    kind: FailureKind
    times: int
    error: BaseException | None
    used: int = 0


class StandIns:
    """The mocks and failures of one test environment, and the body calls it saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.mocks: dict[tuple[str, str], StepMock] = {}
        self.failures: dict[tuple[str, str], Failure] = {}
        self.calls: list[StepCall] = []
        self.attempts: dict[tuple[str, str], int] = {}  # calls so far by (run, step id)
        self.crashed: set[str] = set()  # runs whose execution a simulated crash stopped

    def mock(self, function_id: str, step_id: str, return_value: Any, side_effect: Any) -> StepMock:
        mock = StepMock(function_id, step_id, return_value=return_value, side_effect=side_effect)
        with self.lock:
            self.mocks[function_id, step_id] = mock
        return mock

    def fail(
        self,
        function_id: str,
        step_id: str,
        kind: FailureKind,
        times: int,
        error: BaseException | None,
    ) -> Failure:
        if kind not in {"transient", "non_retriable", "crash"}:
            raise ValueError(f"failure kind {kind!r}: use 'transient', 'non_retriable' or 'crash'")
        if times < 1:
            raise ValueError(f"times={times}: a failure is injected at least once")
        failure = Failure(function_id, step_id, kind, times, error)
        with self.lock:
            self.failures[function_id, step_id] = failure
        return failure

    def _find(self, table: dict[tuple[str, str], Any], fid: str, sid: str) -> Any:
        """The entry for the step's unique id (`charge#1`), else for its id (`charge`)."""
        return table.get((fid, sid)) or table.get((fid, base_id(sid)))

    def body(
        self, run_id: str, function_id: str, step_id: str, fn: Callable[..., Any]
    ) -> Callable[..., Any]:
        with self.lock:
            mock: StepMock | None = self._find(self.mocks, function_id, step_id)
            failure: Failure | None = self._find(self.failures, function_id, step_id)
            failing = failure is not None and failure.used < failure.times
            if failure is not None and failing:
                failure.used += 1
        inner: Callable[..., Any] = mock if mock is not None else fn
        kind = failure.kind if failure is not None and failing else None

        def record(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            with self.lock:
                attempt = self.attempts[run_id, step_id] = (
                    self.attempts.get((run_id, step_id), 0) + 1
                )
                call = StepCall(run_id, step_id, attempt, _now(), args, kwargs, function_id)
                self.calls.append(call)
                if mock is not None:
                    mock.calls.append(call)

        def before() -> None:
            if kind == "transient":
                assert failure is not None
                raise failure.error or InjectedFailure(
                    f"injected failure of step '{step_id}' ({failure.used} of {failure.times})"
                )
            if kind == "non_retriable":
                assert failure is not None
                raise failure.error or NonRetriableError(
                    f"injected non-retriable failure of step '{step_id}'"
                )

        def after() -> None:
            if kind == "crash":
                with self.lock:
                    self.crashed.add(run_id)
                raise SimulatedCrash(f"simulated crash after the body of step '{step_id}'")

        if is_async_callable(inner) or (mock is not None and is_async_callable(mock.side_effect)):

            async def stand_in_async(*args: Any, **kwargs: Any) -> Any:
                record(args, kwargs)
                before()
                value = inner(*args, **kwargs)
                if inspect.isawaitable(value):
                    value = await value
                after()
                return value

            return stand_in_async

        def stand_in(*args: Any, **kwargs: Any) -> Any:
            record(args, kwargs)
            before()
            value = inner(*args, **kwargs)
            after()
            return value

        return stand_in


def base_id(step_id: str) -> str:
    """A step's id without the occurrence suffix the engine adds to its later calls in a run:
    `charge#1` → `charge`, `notify#2[email]` (a parallel branch) → `notify[email]`."""
    return _OCCURRENCE.sub("", step_id, count=1)


def matches(step_id: str, wanted: str) -> bool:
    """Whether the step's unique id is `wanted`, or one call of the step `wanted` names."""
    return wanted in {step_id, base_id(step_id)}


_OCCURRENCE = re.compile(r"#\d+")


def _now() -> datetime:
    return clock.current() or datetime.now(UTC)
