"""Crashes for real: `kill -9` of the whole daemon, or of one of its worker processes, mid-run.

Step-body executions are counted in `public.effects` (written by the body on its own
connection), so "ran exactly once" is observed independently of the engine's own tables.
"""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import scalar, sql

pytestmark = pytest.mark.e2e

OUTPUT = {"steps": ["one", "two", "three"]}


def send_three(url: str, data: dict[str, Any]) -> str:
    """Insert one `test/three` event by SQL; returns the id of the run it starts."""
    sql(
        url,
        "INSERT INTO orchestrator.events (name, data) VALUES ('test/three', %s::jsonb)",
        (json.dumps(data),),
    )
    return eventually(
        lambda: scalar(url, "SELECT id::text FROM orchestrator.runs"), what="run created"
    )


def effect_counts(url: str, run_id: str) -> dict[str, int]:
    rows = sql(url, "SELECT step, count(*) FROM effects WHERE run_id = %s GROUP BY step", (run_id,))
    return dict(rows)


def run_row(url: str, run_id: str) -> dict[str, Any]:
    rows = sql(
        url,
        "SELECT status, output, attempts, recoveries FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    status, output, attempts, recoveries = rows[0]
    return {"status": status, "output": output, "attempts": attempts, "recoveries": recoveries}


def wait_completed(url: str, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return eventually(
        lambda: (row := run_row(url, run_id))["status"] == "completed" and row,
        timeout=timeout,
        what=f"run {run_id} completed",
    )


def open_gate(url: str, run_id: str, step: str) -> None:
    sql(url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:{step}",))


@pytest.mark.timeout(90)
def test_kill9__during_sleep__steps_run_once(e2e_url, daemon_factory):
    daemon = daemon_factory()
    run_id = send_three(e2e_url, {"sleep": 4})
    eventually(lambda: run_row(e2e_url, run_id)["status"] == "sleeping", what="run asleep at 'nap'")

    daemon.kill9()
    # the kill landed inside the sleep: step one ran, step two has not started
    assert effect_counts(e2e_url, run_id) == {"one": 1}
    assert run_row(e2e_url, run_id)["status"] == "sleeping"
    wake_at: datetime = scalar(
        e2e_url,
        "SELECT wake_at FROM orchestrator.steps WHERE run_id = %s AND step_id = 'nap'",
        (run_id,),
    )
    assert wake_at is not None

    daemon_factory()
    row = wait_completed(e2e_url, run_id)

    assert row["output"] == OUTPUT
    assert effect_counts(e2e_url, run_id) == {"one": 1, "two": 1, "three": 1}
    two_at = scalar(e2e_url, "SELECT at FROM effects WHERE run_id = %s AND step = 'two'", (run_id,))
    assert two_at >= wake_at, "the restart cut the sleep short"
    assert row["recoveries"] == 0  # a sleeping run holds no lease: nothing to recover


@pytest.mark.timeout(90)
def test_kill9__during_step_three__earlier_steps_run_once(e2e_url, daemon_factory):
    daemon = daemon_factory()
    run_id = send_three(e2e_url, {"gate": "three"})
    eventually(
        lambda: effect_counts(e2e_url, run_id).get("three") == 1, what="step three's body started"
    )
    assert run_row(e2e_url, run_id)["status"] == "running"

    daemon.kill9()
    daemon_factory()
    # the dead daemon's run is rescued and step three's body, never checkpointed, runs again
    eventually(
        lambda: effect_counts(e2e_url, run_id).get("three") == 2,
        what="step three re-executed after the restart",
    )
    open_gate(e2e_url, run_id, "three")
    row = wait_completed(e2e_url, run_id)

    assert row["output"] == OUTPUT
    assert effect_counts(e2e_url, run_id) == {"one": 1, "two": 1, "three": 2}
    assert row["recoveries"] == 1
    completed = sql(
        e2e_url,
        "SELECT step_id FROM orchestrator.steps WHERE run_id = %s AND status = 'completed' "
        "AND kind = 'run' ORDER BY position",
        (run_id,),
    )
    assert completed == [("one",), ("two",), ("three",)]


@pytest.mark.timeout(60)  # well under the 120 s lease: only the pool's crash path can save it
def test_kill9_one_worker__mid_step__run_requeued_without_lease_expiry(e2e_url, daemon_factory):
    daemon = daemon_factory(lease_duration=120, workers=2)
    workers_before = daemon.worker_pids()
    # two regular workers and the quarantine worker for runs that crashed a worker
    assert len(workers_before) == 3, f"expected 3 worker processes, found {workers_before}"

    run_id = send_three(e2e_url, {"gate": "two"})
    eventually(
        lambda: effect_counts(e2e_url, run_id).get("two") == 1, what="step two's body started"
    )
    victim = scalar(
        e2e_url, "SELECT pid FROM effects WHERE run_id = %s AND step = 'two'", (run_id,)
    )
    assert victim in workers_before, f"step ran in pid {victim}, not a worker {workers_before}"

    os.kill(victim, signal.SIGKILL)
    eventually(
        lambda: effect_counts(e2e_url, run_id).get("two") == 2,
        timeout=30,
        what="step two re-executed after its worker died",
    )
    open_gate(e2e_url, run_id, "two")
    row = wait_completed(e2e_url, run_id)

    assert row["output"] == OUTPUT
    assert effect_counts(e2e_url, run_id) == {"one": 1, "two": 2, "three": 1}
    assert row["recoveries"] == 1
    assert row["attempts"] == 2
    workers_after = eventually(
        lambda: pids if len(pids := daemon.worker_pids()) == 3 else None,
        what="the dead worker replaced",
    )
    assert victim not in workers_after
    assert len(set(workers_after) - set(workers_before)) == 1
    assert daemon.proc is not None and daemon.proc.poll() is None, "the daemon itself died"
