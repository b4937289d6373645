"""The retry policy: exponential back-off with jitter, and how errors are recorded."""

from __future__ import annotations

import random
import traceback
from typing import Any

from orchestrator.errors import NonRetriableError, RetryAfterError
from orchestrator.functions import Backoff

_MAX_TRACEBACK = 8000


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
    if isinstance(exc, NonRetriableError) or getattr(exc, "non_retriable", False):
        return None
    if attempt > retries:
        return None
    if isinstance(exc, RetryAfterError):
        return exc.delay
    return backoff_delay(backoff, attempt)


def error_dict(exc: BaseException) -> dict[str, Any]:
    """The JSON shape of an error in `runs.error` and `steps.error`."""
    tb = "".join(traceback.format_exception(exc))
    error = {
        "type": type(exc).__name__,
        "message": _storable(str(exc)),
        "code": getattr(exc, "code", None),
        "traceback": _storable(tb[-_MAX_TRACEBACK:]),
    }
    step = getattr(exc, "step_id", None)
    if isinstance(step, str):  # the step it is about (a non-determinism error's)
        error["step"] = step
    return error


def _storable(text: str) -> str:
    """jsonb refuses NUL and lone surrogates; an error message carrying them (parsing binary
    data, say) must still be recorded, so show them escaped instead of failing the write."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode("utf-8")
