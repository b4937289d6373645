"""orchestrator: durable execution for Python with Postgres as the only moving part."""

from orchestrator.app import Orchestrator
from orchestrator.context import Context, Event, Step
from orchestrator.errors import (
    ExpressionError,
    NonDeterminismError,
    NonRetriableError,
    OrchestratorError,
    RetryAfterError,
    RunNotFoundError,
    RunStateError,
    StepError,
    StepNotFoundError,
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

__all__ = [
    "Backoff",
    "Batch",
    "CancelOn",
    "Concurrency",
    "Context",
    "Debounce",
    "Event",
    "ExpressionError",
    "Idempotency",
    "NonDeterminismError",
    "NonRetriableError",
    "Orchestrator",
    "OrchestratorError",
    "Priority",
    "RateLimit",
    "RetryAfterError",
    "RunNotFoundError",
    "RunStateError",
    "Singleton",
    "Step",
    "StepError",
    "StepNotFoundError",
    "Throttle",
    "Timeouts",
    "cancel_on",
    "cron",
    "event",
]
__version__ = "0.1.0"
