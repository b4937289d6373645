"""SIGTERM with steps in flight: stop claiming, let running steps finish within the grace
period, give the rest back, exit 0 — and lose or repeat nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from tests.conftest import eventually
from tests.e2e.harness import DaemonProcess, scalar, sql

pytestmark = pytest.mark.e2e

GRACE = 3.0
MARGIN = 3.0  # stopping workers, releasing leases, closing connections
RUNS = 4
OUTPUT = {"steps": ["one", "two", "three"]}


def start_gated_runs(url: str, daemon: DaemonProcess) -> list[str]:
    """Start RUNS runs and wait until every one is inside step two's body, held by its gate."""
    sql(
        url,
        "INSERT INTO orchestrator.events (name, data) "
        """SELECT 'test/three', '{"gate": "two"}'::jsonb FROM generate_series(1, %s)""",
        (RUNS,),
    )
    eventually(
        lambda: scalar(url, "SELECT count(*) FROM effects WHERE step = 'two'") == RUNS,
        what=f"{RUNS} runs inside step two",
    )
    assert daemon.proc is not None
    return [r for (r,) in sql(url, "SELECT id::text FROM orchestrator.runs ORDER BY id")]


def open_gates(url: str) -> None:
    sql(url, "INSERT INTO gates (name) SELECT id::text || ':two' FROM orchestrator.runs")


def sigterm_and_wait(
    daemon: DaemonProcess, between=lambda: None, *, whole_group: bool = False
) -> tuple[int, float]:
    """SIGTERM the daemon (or its whole process group, as systemd's default KillMode does),
    run `between`, and return (exit code, seconds it took to exit)."""
    assert daemon.proc is not None
    started = time.monotonic()
    if whole_group:
        os.killpg(daemon.proc.pid, signal.SIGTERM)
    else:
        daemon.proc.send_signal(signal.SIGTERM)
    between()
    try:
        code = daemon.proc.wait(timeout=GRACE + MARGIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"daemon still running {GRACE + MARGIN}s after SIGTERM:\n{daemon.logs()}")
    return code, time.monotonic() - started


def completed_steps(url: str) -> set[tuple[str, str]]:
    rows = sql(
        url,
        "SELECT run_id::text, step_id FROM orchestrator.steps "
        "WHERE kind = 'run' AND status = 'completed'",
    )
    return {(r, s) for r, s in rows}


def effect_counts(url: str) -> dict[tuple[str, str], int]:
    rows = sql(url, "SELECT run_id, step, count(*) FROM effects GROUP BY 1, 2")
    return {(r, s): n for r, s, n in rows}


def statuses(url: str) -> dict[str, int]:
    return dict(sql(url, "SELECT status, count(*) FROM orchestrator.runs GROUP BY 1"))


def finish_with_new_daemon(url: str, daemon_factory) -> None:
    daemon_factory(shutdown_grace=GRACE)
    eventually(lambda: statuses(url) == {"completed": RUNS}, timeout=30, what="every run completed")
    outputs = [o for (o,) in sql(url, "SELECT output FROM orchestrator.runs")]
    assert outputs == [OUTPUT] * RUNS


@pytest.mark.timeout(60)
@pytest.mark.parametrize("whole_group", [False, True], ids=["daemon", "process-group"])
def test_sigterm__gates_opened_within_grace__steps_finish_and_exit_0(
    e2e_url, daemon_factory, whole_group
):
    daemon = daemon_factory(shutdown_grace=GRACE)
    run_ids = start_gated_runs(e2e_url, daemon)

    def open_once_shutting_down() -> None:
        eventually(lambda: '"shutting down"' in daemon.logs(), what="daemon shutting down")
        open_gates(e2e_url)

    code, took = sigterm_and_wait(daemon, open_once_shutting_down, whole_group=whole_group)
    assert code == 0, daemon.logs()
    assert took <= GRACE + MARGIN

    # the steps in flight finished and were checkpointed; the runs were handed back, not
    # left leased to a daemon that is gone, and not counted as recoveries
    done = completed_steps(e2e_url)
    assert {(r, "two") for r in run_ids} <= done
    assert not any(step == "three" for _, step in done), "a new step started while draining"
    assert statuses(e2e_url) == {"queued": RUNS}
    assert scalar(e2e_url, "SELECT sum(recoveries) FROM orchestrator.runs") == 0

    finish_with_new_daemon(e2e_url, daemon_factory)
    counts = effect_counts(e2e_url)
    assert counts == {(r, s): 1 for r in run_ids for s in ("one", "two", "three")}


@pytest.mark.timeout(60)
def test_sigterm__steps_stuck_past_grace__exit_0_and_runs_complete_later(e2e_url, daemon_factory):
    daemon = daemon_factory(shutdown_grace=GRACE)
    run_ids = start_gated_runs(e2e_url, daemon)
    done_before = completed_steps(e2e_url)
    assert done_before == {(r, "one") for r in run_ids}

    code, took = sigterm_and_wait(daemon)
    assert code == 0, daemon.logs()
    assert GRACE - 0.5 <= took <= GRACE + MARGIN, f"exited after {took:.1f}s"
    assert statuses(e2e_url) == {"queued": RUNS}, "runs left leased to a stopped daemon"
    assert completed_steps(e2e_url) == done_before
    # stopping our own workers at the end of the grace period is a release, not a crash
    assert scalar(e2e_url, "SELECT sum(recoveries) FROM orchestrator.runs") == 0

    open_gates(e2e_url)
    finish_with_new_daemon(e2e_url, daemon_factory)
    counts = effect_counts(e2e_url)
    # completed steps ran once; step two, cut off before its checkpoint, ran again
    assert all(counts[step] == 1 for step in done_before)
    assert counts == {
        (r, s): 2 if s == "two" else 1 for r in run_ids for s in ("one", "two", "three")
    }
