"""Function-level retries and step timeouts with a `kill -9` of the daemon at the worst
moment: while the run is queued for its retry back-off, and while a timed-out sync body's
thread still runs with the step's retry pending.

Executions are counted in `public.effects` (written on their own connection), so "ran once"
is observed independently of the engine's own tables.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import cli, effects, send, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

APP = "tests.e2e.apps.function_retries:app"


def run_of(url: str, event_id: str) -> str:
    return str(
        eventually(
            lambda: sql(
                url, "SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (event_id,)
            ),
            what="run created",
        )[0][0]
    )


def run_row(url: str, run_id: str) -> dict[str, Any]:
    ((status, retries, error, output, recoveries),) = sql(
        url,
        "SELECT status, retries, error, output, recoveries FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    return {
        "status": status,
        "retries": retries,
        "error": error,
        "output": output,
        "recoveries": recoveries,
    }


def step_rows(url: str, run_id: str) -> dict[str, tuple[str, int, Any]]:
    rows = sql(
        url,
        "SELECT step_id, status, attempt, error FROM orchestrator.steps WHERE run_id = %s",
        (run_id,),
    )
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def completed(url: str, run_id: str) -> dict[str, Any]:
    return eventually(
        lambda: (row := run_row(url, run_id))["status"] == "completed" and row,
        timeout=60,
        what=f"run {run_id} completed",
    )


def test_kill9__while_a_function_retry_is_pending__completes_and_step_ran_once(
    e2e_url, daemon_factory
):
    daemon = daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "fretry/after-step"))
    pending = eventually(
        lambda: (row := run_row(e2e_url, run_id))["retries"] == 1 and row,
        what="the run queued for its function retry",
    )

    daemon.kill9()
    # the kill landed in the back-off: step one is recorded, the retry not yet taken
    assert effects(e2e_url, run_id) == {"one": 1, "code": 1}
    assert (pending["status"], pending["error"]["type"]) == ("queued", "ConnectionError")
    assert step_rows(e2e_url, run_id)["one"][:2] == ("completed", 1)
    shown = cli(e2e_url, "runs", "show", run_id).stdout.splitlines()
    assert any(line.split() == ["retries", "1"] for line in shown), shown
    assert any(line.startswith("error") and "ConnectionError" in line for line in shown), shown

    daemon_factory(APP)
    row = completed(e2e_url, run_id)

    assert row["output"] == {"one": "one done", "executions": 2}
    assert (row["retries"], row["error"]) == (1, None)
    assert effects(e2e_url, run_id) == {"one": 1, "code": 2}  # step one's body ran once


def test_kill9__while_a_timed_out_sync_body_still_runs__retry_completes_the_step(
    e2e_url, daemon_factory
):
    daemon = daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "fretry/timed-step"))
    eventually(
        lambda: step_rows(e2e_url, run_id).get("slow", ("",))[0] == "retrying",
        what="step 'slow' timed out, its retry pending",
    )

    daemon.kill9()  # its first body is still blocked on its thread: it dies with the worker
    assert effects(e2e_url, run_id) == {"one": 1, "slow": 1}
    status, attempt, error = step_rows(e2e_url, run_id)["slow"]
    assert (status, attempt, error["type"], error["code"]) == (
        "retrying",
        1,
        "StepTimeoutError",
        "step_timeout",
    )
    assert run_row(e2e_url, run_id)["status"] == "queued"

    daemon_factory(APP)
    row = completed(e2e_url, run_id)

    assert row["output"] == {"one": "one done", "slow": "slow done on execution 2"}
    assert effects(e2e_url, run_id) == {"one": 1, "slow": 2}
    assert step_rows(e2e_url, run_id)["slow"][:2] == ("completed", 2)
    assert row["retries"] == 0  # a step's retries are not the function's
