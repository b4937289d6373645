"""A step's own retry policy (engine/retry.py), the step timeout error, and the metrics of
function retries and abandoned step threads."""

from __future__ import annotations

from datetime import timedelta

import pytest

import orchestrator
from orchestrator import NonRetriableError, RetryAfterError, StepTimeoutError
from orchestrator.engine.retry import Policy, step_policy
from orchestrator.functions import Backoff
from orchestrator.runtime.health import Health
from orchestrator.runtime.metrics import DaemonMetrics, StepTally

pytestmark = pytest.mark.timeout(10)

FUNCTION = Policy(3, Backoff.of(base=1, max=1))


def test_step_policy__keeps_the_functions_where_the_step_says_nothing() -> None:
    policy = step_policy(
        "s", FUNCTION, retries=None, backoff=None, retry_on=None, timeout=timedelta(minutes=1)
    )
    assert policy == Policy(3, FUNCTION.backoff, None, 60.0)


def test_step_policy__overrides_retries_and_backoff() -> None:
    backoff = Backoff.of(base=5, max=50)
    policy = step_policy("s", FUNCTION, retries=0, backoff=backoff, retry_on=None, timeout=None)
    assert (policy.retries, policy.backoff, policy.timeout) == (0, backoff, None)


def test_policy_delay__retry_on_refusing_an_error_fails_at_once() -> None:
    policy = Policy(3, FUNCTION.backoff, retry_on=KeyError)
    assert policy.delay(ValueError("x"), 1) is None
    assert policy.delay(KeyError("x"), 1) is not None


def test_policy_delay__non_retriable_fails_even_when_retry_on_accepts_it() -> None:
    policy = Policy(3, FUNCTION.backoff, retry_on=lambda exc: True)
    assert policy.delay(NonRetriableError("no"), 1) is None


def test_policy_delay__retry_after_delay_honoured_and_retries_counted() -> None:
    policy = Policy(1, FUNCTION.backoff, retry_on=(RetryAfterError,))
    assert policy.delay(RetryAfterError(42), 1) == 42
    assert policy.delay(RetryAfterError(42), 2) is None  # no retries left


def test_step_timeout_error__typed_with_a_stable_code_and_a_timeout_error() -> None:
    exc = StepTimeoutError("charge", 2.5)
    assert orchestrator.StepTimeoutError is StepTimeoutError
    assert exc.code == "step_timeout"
    assert isinstance(exc, TimeoutError) and isinstance(exc, orchestrator.OrchestratorError)
    assert "'charge'" in str(exc) and "2.5s" in str(exc)


def test_metrics__function_retries_and_abandoned_threads_reach_the_daemons_series() -> None:
    metrics = DaemonMetrics(
        ["a"],
        app_version="x",
        health=Health(tick_within=10, heartbeat_within=5),
        leader=lambda: True,
        executing=lambda: 0,
        threads=1,
    )

    def value(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"function": "a"})

    assert value("orchestrator_run_retries_total") == 0
    assert value("orchestrator_step_threads_abandoned_total") == 0
    assert value("orchestrator_step_threads_abandoned") == 0
    tally = StepTally()
    tally.run_retrying("a")
    tally.thread_abandoned("a")
    tally.thread_abandoned("a")
    tally.abandoned_thread_ended("a")
    delta = tally.take()
    assert delta is not None
    metrics.merge(delta)

    assert value("orchestrator_run_retries_total") == 1
    assert value("orchestrator_step_threads_abandoned_total") == 2
    assert value("orchestrator_step_threads_abandoned") == 1
