"""orchestrator: durable execution for Python with Postgres as the only moving part.

The public names are imported on first use (module `__getattr__`), so that `import
orchestrator.cli` does not load the engine, SQLAlchemy and the expression compiler just to
print `orchestrator --help`. `from orchestrator import Orchestrator` works as always.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orchestrator.app import Orchestrator
    from orchestrator.context import Arrival, AsyncContext, Context, Event, Step
    from orchestrator.engine.kinds.wait_any import OnEvent, OnInvoke
    from orchestrator.errors import (
        AsyncUsageError,
        CancelledRunError,
        ConcurrentStepError,
        ExpressionError,
        FunctionInUseError,
        InvalidRunIdError,
        InvalidSignalError,
        InvalidStepOptionError,
        NestedStepError,
        NonDeterminismError,
        NonRetriableError,
        OrchestratorError,
        RetryAfterError,
        RunCancelledError,
        RunFailedError,
        RunFinishedError,
        RunNotCompletedError,
        RunNotFoundError,
        RunSkippedError,
        RunStateError,
        RunTimeoutError,
        StateTooLargeError,
        StepError,
        StepNotFoundError,
        StepTimeoutError,
        UnknownFunctionError,
    )
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
    from orchestrator.functions import Backoff, CancelOn, cancel_on, cron, event
    from orchestrator.handles import RunHandle

_HOMES = {
    "orchestrator.app": ("Orchestrator",),
    "orchestrator.context": ("Arrival", "AsyncContext", "Context", "Event", "Step"),
    "orchestrator.engine.kinds.wait_any": ("OnEvent", "OnInvoke"),
    "orchestrator.errors": (
        "AsyncUsageError",
        "CancelledRunError",
        "ConcurrentStepError",
        "ExpressionError",
        "FunctionInUseError",
        "InvalidRunIdError",
        "InvalidSignalError",
        "InvalidStepOptionError",
        "NestedStepError",
        "NonDeterminismError",
        "NonRetriableError",
        "OrchestratorError",
        "RetryAfterError",
        "RunCancelledError",
        "RunFailedError",
        "RunFinishedError",
        "RunNotCompletedError",
        "RunNotFoundError",
        "RunSkippedError",
        "RunStateError",
        "RunTimeoutError",
        "StateTooLargeError",
        "StepError",
        "StepNotFoundError",
        "StepTimeoutError",
        "UnknownFunctionError",
    ),
    "orchestrator.flow": (
        "Batch",
        "Concurrency",
        "Debounce",
        "Idempotency",
        "Priority",
        "RateLimit",
        "Singleton",
        "Throttle",
        "Timeouts",
    ),
    "orchestrator.functions": ("Backoff", "CancelOn", "cancel_on", "cron", "event"),
    "orchestrator.handles": ("RunHandle",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME_OF))


__all__ = [
    "Arrival",
    "AsyncContext",
    "AsyncUsageError",
    "Backoff",
    "Batch",
    "CancelOn",
    "CancelledRunError",
    "Concurrency",
    "ConcurrentStepError",
    "Context",
    "Debounce",
    "Event",
    "ExpressionError",
    "FunctionInUseError",
    "Idempotency",
    "InvalidRunIdError",
    "InvalidSignalError",
    "InvalidStepOptionError",
    "NestedStepError",
    "NonDeterminismError",
    "NonRetriableError",
    "OnEvent",
    "OnInvoke",
    "Orchestrator",
    "OrchestratorError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RunCancelledError",
    "RunFailedError",
    "RunFinishedError",
    "RunHandle",
    "RunNotCompletedError",
    "RunNotFoundError",
    "RunSkippedError",
    "RunStateError",
    "RunTimeoutError",
    "Singleton",
    "StateTooLargeError",
    "Step",
    "StepError",
    "StepNotFoundError",
    "StepTimeoutError",
    "Throttle",
    "Timeouts",
    "UnknownFunctionError",
    "cancel_on",
    "cron",
    "event",
]
__version__ = "0.1.0"
