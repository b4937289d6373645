"""orchestrator: durable execution for Python with Postgres as the only moving part."""

from orchestrator.app import Orchestrator
from orchestrator.context import Context, Event, Step
from orchestrator.errors import (
    ExpressionError,
    NonRetriableError,
    OrchestratorError,
    RetryAfterError,
    StepError,
)
from orchestrator.functions import Backoff, CancelOn, cancel_on, cron, event

__all__ = [
    "Backoff",
    "CancelOn",
    "Context",
    "Event",
    "ExpressionError",
    "NonRetriableError",
    "Orchestrator",
    "OrchestratorError",
    "RetryAfterError",
    "Step",
    "StepError",
    "cancel_on",
    "cron",
    "event",
]
__version__ = "0.1.0"
