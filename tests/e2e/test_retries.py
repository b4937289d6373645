"""Retries end to end: back-off, NonRetriableError, StepError compensation, RetryAfterError.

One daemon serves the tests of this module (tests/e2e/shared.py); each looks at its own run."""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e.harness import effects, finished_run, scalar, send, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.retries:app"
module_daemons, served = shared_daemons(APP, workers=1)


def steps(url: str, run_id: str) -> dict[str, dict[str, Any]]:
    rows = sql(
        url,
        "SELECT step_id, status, attempt, output, error FROM orchestrator.steps "
        "WHERE run_id = %s ORDER BY position",
        (run_id,),
    )
    return {r[0]: {"status": r[1], "attempt": r[2], "output": r[3], "error": r[4]} for r in rows}


def test_retry__fails_twice_then_succeeds__attempt_3(served: Served):
    e2e_url = served.url
    run = finished_run(e2e_url, send(e2e_url, "retry/flaky", {"succeed_on": 3}))

    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"step": "flaky-step", "execution": 3}
    step = steps(e2e_url, run["id"])["flaky-step"]
    assert (step["status"], step["attempt"]) == ("completed", 3)
    assert step["output"] == {"step": "flaky-step", "execution": 3}
    assert effects(e2e_url, run["id"]) == {"flaky-step": 3}


def test_retry__non_retriable_error__fails_at_once(served: Served):
    e2e_url = served.url
    run = finished_run(e2e_url, send(e2e_url, "retry/non-retriable"))

    assert run["status"] == "failed"
    assert run["error"]["type"] == "NonRetriableError"
    assert "card declined" in run["error"]["message"]
    step = steps(e2e_url, run["id"])["refuse"]
    assert (step["status"], step["attempt"]) == ("failed", 1)
    assert step["error"]["type"] == "NonRetriableError"
    assert effects(e2e_url, run["id"]) == {"refuse": 1}


def test_retry__retries_exhausted__run_fails_with_the_step_error(served: Served):
    e2e_url = served.url
    run = finished_run(e2e_url, send(e2e_url, "retry/always"))

    assert run["status"] == "failed"
    assert run["error"]["type"] == "FlakyError"
    assert run["error"]["message"] == "always broken"
    step = steps(e2e_url, run["id"])["broken"]
    assert (step["status"], step["attempt"]) == ("failed", 3)  # retries=2: 1 + 2 executions
    assert effects(e2e_url, run["id"]) == {"broken": 3}


def test_retry__step_error_caught__compensation_step_runs(served: Served):
    e2e_url = served.url
    run = finished_run(e2e_url, send(e2e_url, "retry/saga"))

    assert run["status"] == "completed", run["error"]
    assert run["output"] == {
        "compensated": "refunded after: FlakyError",
        "failed_step": "charge",
        "error_type": "FlakyError",
    }
    recorded = steps(e2e_url, run["id"])
    assert list(recorded) == ["charge", "refund"]
    assert (recorded["charge"]["status"], recorded["charge"]["attempt"]) == ("failed", 2)
    assert recorded["charge"]["error"]["type"] == "FlakyError"
    assert (recorded["refund"]["status"], recorded["refund"]["attempt"]) == ("completed", 1)
    assert effects(e2e_url, run["id"]) == {"charge": 2, "refund": 1}


def test_retry__retry_after_error__waits_at_least_the_delay(served: Served):
    e2e_url = served.url
    # the function's back-off is capped at 1 s, so a gap of 2 s can only come from the delay
    run = finished_run(e2e_url, send(e2e_url, "retry/after", {"delay": 2}))

    assert run["status"] == "completed", run["error"]
    assert run["output"] == 2
    step = steps(e2e_url, run["id"])["rate-limited"]
    assert (step["status"], step["attempt"]) == ("completed", 2)
    gap = scalar(
        e2e_url,
        "SELECT extract(epoch FROM max(at) - min(at))::float8 FROM effects WHERE run_id = %s",
        (run["id"],),
    )
    assert effects(e2e_url, run["id"]) == {"rate-limited": 2}
    assert gap >= 2.0
