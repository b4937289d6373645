"""`ctx.step.parallel` against the real daemon (the function "fanout" of
tests/e2e/apps/coordination.py): branches `fan[a]`, `fan[b]`, `fan[c]` run in threads, each
memoized as its own step, so a failing branch is retried alone and a crash re-runs only the
branches that had not finished.

Branch-body executions are counted in `public.effects` (written by the body itself).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import clone_template, drop_database, eventually, with_database
from tests.e2e.apps.common import ensure_schema
from tests.e2e.harness import DaemonProcess, run_of, send, sql, stop_all

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
BRANCHES = ["fan[a]", "fan[b]", "fan[c]"]


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


@dataclass(frozen=True)
class KilledRun:
    """The run of `killed_mid_parallel`, and what was seen along the way."""

    url: str
    run_id: str
    effects_before_kill: dict[str, int]
    completed_before_kill: set[str]
    effects_after_restart: dict[str, int]


@pytest.fixture(scope="module")
def killed_mid_parallel(
    server_url: str, template_name: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KilledRun]:
    """One run shared by the tests that need it (a daemon start costs seconds on a busy box):
    fan/start with branch b held at its gate; once a and c are checkpointed the daemon is
    killed -9, a new one re-runs b (its effect count reaches 2), then b's gate is opened and
    the run completes (or not: the tests check)."""
    name = clone_template(server_url, template_name)
    url = with_database(server_url, name)
    ensure_schema(url)
    logs = tmp_path_factory.mktemp("killed-mid-parallel")
    daemons = [DaemonProcess(url, APP, logs / f"daemon-{i}.log") for i in range(2)]
    try:
        daemons[0].start()
        run_id = run_of(url, send(url, "fan/start", {"gate": "b"}))
        eventually(
            lambda: (
                effect_counts(url, run_id) == {"a": 1, "b": 1, "c": 1}
                and completed_branches(url, run_id) == {"fan[a]", "fan[c]"}
            ),
            what="a and c checkpointed, b held at its gate",
        )
        before = (effect_counts(url, run_id), completed_branches(url, run_id))
        assert run_row(url, run_id)["status"] == "running"

        daemons[0].kill9()
        daemons[1].start()
        eventually(
            lambda: effect_counts(url, run_id).get("b") == 2,
            timeout=30,
            what="branch b re-executed after the restart",
        )
        after_restart = effect_counts(url, run_id)
        sql(url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:b",))
        wait_ended(url, run_id)
        yield KilledRun(url, run_id, before[0], before[1], after_restart)
    finally:
        stop_all(daemons)
        drop_database(server_url, name)


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


@pytest.mark.timeout(100)
def test_parallel__kill9_mid_parallel__only_unfinished_branch_reruns(killed_mid_parallel):
    url, run_id = killed_mid_parallel.url, killed_mid_parallel.run_id
    assert killed_mid_parallel.effects_before_kill == {"a": 1, "b": 1, "c": 1}
    assert killed_mid_parallel.completed_before_kill == {"fan[a]", "fan[c]"}
    # the new daemon re-ran b, the one unfinished branch, and not the checkpointed a and c
    assert killed_mid_parallel.effects_after_restart == {"a": 1, "b": 2, "c": 1}

    row = run_row(url, run_id)

    assert row["status"] == "completed", row
    assert row["output"] == ["A", "B", "C"]
    assert effect_counts(url, run_id) == {"a": 1, "b": 2, "c": 1}
    assert row["recoveries"] == 1
    steps = branch_steps(url, run_id)
    assert {sid: (s["status"], s["attempt"], s["output"]) for sid, s in steps.items()} == {
        "fan[a]": ("completed", 1, "A"),
        "fan[b]": ("completed", 1, "B"),
        "fan[c]": ("completed", 1, "C"),
    }


@pytest.mark.timeout(100)
def test_parallel__replay_after_out_of_order_finish__positions_follow_list_order(
    killed_mid_parallel,
):
    url, run_id = killed_mid_parallel.url, killed_mid_parallel.run_id
    assert run_row(url, run_id)["status"] == "completed"

    # b finished last, after a restart that replayed a and c from their checkpoints ...
    finish_order = [
        sid
        for (sid,) in sql(
            url,
            "SELECT step_id FROM orchestrator.steps WHERE run_id = %s ORDER BY updated_at",
            (run_id,),
        )
    ]
    assert finish_order[-1] == "fan[b]"
    assert set(finish_order) == set(BRANCHES)
    # ... yet positions are consecutive in list order, whatever the order of finishing
    positions = [branch_steps(url, run_id)[sid]["position"] for sid in BRANCHES]
    assert positions == [positions[0], positions[0] + 1, positions[0] + 2]
