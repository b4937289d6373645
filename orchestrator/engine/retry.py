"""The retry policy: exponential back-off with jitter (how errors are recorded: failures.py)."""

from __future__ import annotations

import math
import random

from orchestrator.errors import NonRetriableError, RetryAfterError
from orchestrator.functions import Backoff


def backoff_delay(backoff: Backoff, attempt: int, rng: random.Random | None = None) -> float:
    """Delay before attempt `attempt + 1`: base * 2**(attempt-1), capped, with equal jitter.

    Equal jitter keeps at least half the nominal delay, so retries of many runs that failed
    together spread out without any of them retrying almost at once.
    """
    nominal = min(backoff.max, backoff.base * 2 ** max(attempt - 1, 0))
    rng = rng or random.Random()
    return float(nominal / 2 + rng.uniform(0, nominal / 2))


def retry_delay(exc: BaseException, backoff: Backoff, attempt: int, retries: int) -> float | None:
    """Seconds until the next attempt, or None when the step fails for good."""
    if isinstance(exc, NonRetriableError) or _flagged_non_retriable(exc):
        return None
    if attempt > retries:
        return None
    asked = _asked_delay(exc) if isinstance(exc, RetryAfterError) else None
    return asked if asked is not None else backoff_delay(backoff, attempt)


def _asked_delay(exc: RetryAfterError) -> float | None:
    """The delay a RetryAfterError asks for; None (the back-off) when a subclass lost it or
    made it something other than a finite number of seconds >= 0."""
    try:
        delay = float(exc.delay)
    except Exception:
        return None
    return delay if math.isfinite(delay) and delay >= 0 else None


def _flagged_non_retriable(exc: BaseException) -> bool:
    """An exception may say `non_retriable = True`; a property that raises says nothing."""
    try:
        return bool(getattr(exc, "non_retriable", False))
    except Exception:
        return False
