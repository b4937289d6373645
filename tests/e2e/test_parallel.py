"""`ctx.step.parallel` against the real daemon (the function "fanout" of
tests/e2e/apps/coordination.py): branches `fan[a]`, `fan[b]`, `fan[c]` run in threads, each
memoized as its own step, so a failing branch is retried alone and a crash re-runs only the
branches that had not finished.

Branch-body executions are counted in `public.effects` (written by the body itself).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess, scalar, send, sql

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
BRANCHES = ["fan[a]", "fan[b]", "fan[c]"]


def run_of(url: str, event_id: str) -> str:
    return eventually(
        lambda: scalar(
            url, "SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (event_id,)
        ),
        what=f"run of event {event_id} created",
    )


def run_row(url: str, run_id: str) -> dict[str, Any]:
    rows = sql(
        url,
        "SELECT status, output, error, attempts, recoveries FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    status, output, error, attempts, recoveries = rows[0]
    return {
        "status": status,
        "output": output,
        "error": error,
        "attempts": attempts,
        "recoveries": recoveries,
    }


def wait_ended(url: str, run_id: str, timeout: float = 30.0) -> dict[str, Any]:
    return eventually(
        lambda: (
            (row := run_row(url, run_id))["status"] in ("completed", "failed", "cancelled") and row
        ),
        timeout=timeout,
        what=f"run {run_id} ended",
    )


def effect_counts(url: str, run_id: str) -> dict[str, int]:
    rows = sql(url, "SELECT step, count(*) FROM effects WHERE run_id = %s GROUP BY step", (run_id,))
    return dict(rows)


def branch_steps(url: str, run_id: str) -> dict[str, dict[str, Any]]:
    rows = sql(
        url,
        "SELECT step_id, kind, status, attempt, position, output FROM orchestrator.steps "
        "WHERE run_id = %s",
        (run_id,),
    )
    return {
        sid: {"kind": kind, "status": status, "attempt": attempt, "position": pos, "output": out}
        for sid, kind, status, attempt, pos, out in rows
    }


def completed_branches(url: str, run_id: str) -> set[str]:
    return {
        sid
        for sid, row in branch_steps(url, run_id).items()
        if sid in BRANCHES and row["status"] == "completed"
    }


def kill_mid_parallel(url: str, daemon_factory: Any) -> str:
    """fan/start with branch b held at its gate: a and c finish, the daemon is killed -9 and
    a new one re-runs b (its effect count reaches 2). Returns the run id, b's gate still shut."""
    daemon: DaemonProcess = daemon_factory(APP)
    run_id = run_of(url, send(url, "fan/start", {"gate": "b"}))
    eventually(
        lambda: (
            effect_counts(url, run_id) == {"a": 1, "b": 1, "c": 1}
            and completed_branches(url, run_id) == {"fan[a]", "fan[c]"}
        ),
        what="a and c checkpointed, b held at its gate",
    )
    assert run_row(url, run_id)["status"] == "running"

    daemon.kill9()
    daemon_factory(APP)
    eventually(
        lambda: effect_counts(url, run_id).get("b") == 2,
        timeout=30,
        what="branch b re-executed after the restart",
    )
    return run_id


@pytest.mark.timeout(60)
def test_parallel__one_branch_fails_twice__retried_alone_until_it_succeeds(e2e_url, daemon_factory):
    daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "fan/start", {"flaky": True}))

    row = wait_ended(e2e_url, run_id)

    assert row["status"] == "completed", row
    assert row["output"] == ["A", "B", "C"]
    assert effect_counts(e2e_url, run_id) == {"a": 1, "b": 3, "c": 1}
    steps = branch_steps(e2e_url, run_id)
    assert set(steps) == set(BRANCHES)
    assert {
        sid: (s["kind"], s["status"], s["attempt"], s["output"]) for sid, s in steps.items()
    } == {
        "fan[a]": ("run", "completed", 1, "A"),
        "fan[b]": ("run", "completed", 3, "B"),
        "fan[c]": ("run", "completed", 1, "C"),
    }


@pytest.mark.timeout(90)
def test_parallel__kill9_mid_parallel__only_unfinished_branch_reruns(e2e_url, daemon_factory):
    run_id = kill_mid_parallel(e2e_url, daemon_factory)
    # the finished branches were not run again by the new daemon
    assert effect_counts(e2e_url, run_id) == {"a": 1, "b": 2, "c": 1}

    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:b",))
    row = wait_ended(e2e_url, run_id)

    assert row["status"] == "completed", row
    assert row["output"] == ["A", "B", "C"]
    assert effect_counts(e2e_url, run_id) == {"a": 1, "b": 2, "c": 1}
    assert row["recoveries"] == 1
    steps = branch_steps(e2e_url, run_id)
    assert {sid: (s["status"], s["attempt"], s["output"]) for sid, s in steps.items()} == {
        "fan[a]": ("completed", 1, "A"),
        "fan[b]": ("completed", 1, "B"),
        "fan[c]": ("completed", 1, "C"),
    }


@pytest.mark.timeout(90)
def test_parallel__replay_after_out_of_order_finish__positions_follow_list_order(
    e2e_url, daemon_factory
):
    run_id = kill_mid_parallel(e2e_url, daemon_factory)
    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:b",))
    assert wait_ended(e2e_url, run_id)["status"] == "completed"

    # b finished last, after a restart that replayed a and c from their checkpoints ...
    finish_order = [
        sid
        for (sid,) in sql(
            e2e_url,
            "SELECT step_id FROM orchestrator.steps WHERE run_id = %s ORDER BY updated_at",
            (run_id,),
        )
    ]
    assert finish_order[-1] == "fan[b]"
    # ... yet positions are consecutive in list order, whatever the order of finishing
    positions = [branch_steps(e2e_url, run_id)[sid]["position"] for sid in BRANCHES]
    assert positions == [positions[0], positions[0] + 1, positions[0] + 2]
