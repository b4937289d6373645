"""The retry policy: exponential back-off with jitter, and a step's own policy (its retries,
back-off, `retry_on` and timeout) over the function's (how errors are recorded: failures.py)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

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


RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True)
class Policy:
    """How one step retries: the function's `retries` and `backoff`, or the step's own, and
    what the step's `retry_on` and `timeout` add."""

    retries: int
    backoff: Backoff
    retry_on: RetryOn | None = None
    timeout: float | None = None  # seconds an attempt may run

    def delay(self, exc: BaseException, attempt: int) -> float | None:
        """Seconds until the next attempt after `exc` ended attempt `attempt`, or None when
        the step fails for good (`retry_on` refuses the error, or as `retry_delay` says)."""
        if self.retry_on is not None and not _accepts(self.retry_on, exc):
            return None
        return retry_delay(exc, self.backoff, attempt, self.retries)


def _accepts(retry_on: RetryOn, exc: BaseException) -> bool:
    if isinstance(retry_on, type | tuple):
        return isinstance(exc, retry_on)
    try:
        return bool(retry_on(exc))
    except Exception:  # a predicate that raises accepts nothing: the step fails at once
        return False


def step_policy(
    step_id: str,
    function: Policy,
    *,
    retries: int | None,
    backoff: Backoff | None,
    retry_on: RetryOn | None,
    timeout: timedelta | float | None,
) -> Policy:
    """The policy of step `step_id`: the function's, with what the call overrides. Raises a
    TypeError or ValueError naming the step for a value it cannot use."""
    where = f"ctx.step.run({step_id!r})"
    if retries is not None and (
        not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100
    ):
        raise ValueError(f"{where}: retries must be a whole number 0-100, got {retries!r}")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(
            f"{where}: backoff must be a Backoff (such as Backoff.of(base=1, max=60)), "
            f"got {type(backoff).__name__}"
        )
    _check_retry_on(where, retry_on)
    return Policy(
        function.retries if retries is None else retries,
        backoff or function.backoff,
        retry_on,
        None if timeout is None else _timeout_seconds(where, timeout),
    )


def _check_retry_on(where: str, retry_on: Any) -> None:
    if retry_on is None or _exception_type(retry_on):
        return
    if isinstance(retry_on, tuple):
        if retry_on and all(_exception_type(t) for t in retry_on):
            return
    elif callable(retry_on) and not isinstance(retry_on, type):
        return
    raise TypeError(
        f"{where}: retry_on must be an exception type, a non-empty tuple of exception types "
        f"or a predicate (exc) -> bool, got {retry_on!r}"
    )


def _exception_type(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)


def _timeout_seconds(where: str, timeout: Any) -> float:
    if isinstance(timeout, timedelta):
        seconds = timeout.total_seconds()
    elif isinstance(timeout, int | float) and not isinstance(timeout, bool):
        seconds = float(timeout)
    else:
        raise TypeError(
            f"{where}: timeout must be seconds (a number) or a timedelta, "
            f"got {type(timeout).__name__}"
        )
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{where}: timeout must be a finite number of seconds > 0, got {timeout}")
    return seconds
