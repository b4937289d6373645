"""orchestrator: durable execution for Python with Postgres as the only moving part."""

from orchestrator.app import Orchestrator
from orchestrator.context import Context, Event, Step
from orchestrator.errors import (
    NonRetriableError,
    OrchestratorError,
    RetryAfterError,
    StepError,
)
from orchestrator.functions import Backoff, cron, event

__all__ = [
    "Backoff",
    "Context",
    "Event",
    "NonRetriableError",
    "Orchestrator",
    "OrchestratorError",
    "RetryAfterError",
    "Step",
    "StepError",
    "cron",
    "event",
]
__version__ = "0.1.0"
