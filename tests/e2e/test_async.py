"""`async def` functions on the real daemon: a crash mid-run, and thousands of runs awaiting
at once beside blocked plain bodies (tests/e2e/apps/asyncflows.py)."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import cli, effects, run_of, scalar, send, sql

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.asyncflows:app"


def status(url: str, run_id: str) -> str:
    return str(scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def open_gate(url: str, name: str) -> None:
    sql(url, "INSERT INTO gates (name) VALUES (%s)", (name,))


@pytest.mark.timeout(120)
def test_async_function__kill9_twice__completes_with_each_finished_body_run_once(
    e2e_url, daemon_factory
):
    daemon = daemon_factory(APP)
    key = str(uuid.uuid4())
    run_id = run_of(
        e2e_url, send(e2e_url, "test/async", {"gate": "compute", "sleep": 1, "key": key})
    )
    # inside the plain body 'compute' (a thread beside the loop), after 'fetch' completed
    eventually(lambda: effects(e2e_url, run_id).get("compute") == 1, what="compute running")
    daemon.kill9()
    assert effects(e2e_url, run_id) == {"fetch": 1, "compute": 1}

    daemon = daemon_factory(APP)
    eventually(lambda: effects(e2e_url, run_id).get("compute") == 2, timeout=30, what="rescued")
    open_gate(e2e_url, f"{run_id}:compute")
    # through the sleep to the wait, then killed while it waits
    eventually(lambda: status(e2e_url, run_id) == "waiting", timeout=30, what="waiting")
    daemon.kill9()

    daemon_factory(APP)
    send(e2e_url, "test/approve", {"key": key})
    eventually(lambda: status(e2e_url, run_id) == "completed", timeout=30, what="completed")
    output = scalar(e2e_url, "SELECT output FROM orchestrator.runs WHERE id = %s", (run_id,))
    assert output == {"fetched": {"fetched": run_id[:8]}, "answer": 42, "verdict": "approved"}
    # 'fetch' and 'finish' completed once each and never ran again; 'compute' was cut off by
    # the first kill (not completed) and ran once more
    assert effects(e2e_url, run_id) == {"fetch": 1, "compute": 2, "finish": 1}
    steps = sql(
        e2e_url,
        "SELECT step_id, status FROM orchestrator.steps WHERE run_id = %s ORDER BY position",
        (run_id,),
    )
    assert steps == [
        ("fetch", "completed"),
        ("compute", "completed"),
        ("nap", "completed"),
        ("approval", "completed"),
        ("finish", "completed"),
    ]


@pytest.mark.timeout(60)
def test_async_run__cancelled_mid_await__stops_at_once(e2e_url, daemon_factory):
    daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "test/forever"))
    eventually(lambda: effects(e2e_url, run_id) == {"forever": 1}, what="awaiting for an hour")
    assert cli(e2e_url, "runs", "cancel", run_id).returncode == 0
    # the await of an hour is interrupted: the run ends long before it could have finished
    eventually(lambda: status(e2e_url, run_id) == "cancelled", what="cancelled")
    assert (
        scalar(e2e_url, "SELECT count(*) FROM orchestrator.steps WHERE run_id = %s", (run_id,)) == 0
    )


@pytest.mark.timeout(90)
def test_lanes__a_full_async_lane__a_plain_run_still_wakes_from_its_sleep(e2e_url, daemon_factory):
    # one async slot, held for an hour; a poll interval far longer than the test's deadline
    daemon_factory(APP, workers=1, async_concurrency=1, poll_interval=60)
    hog = run_of(e2e_url, send(e2e_url, "test/forever"))
    eventually(lambda: effects(e2e_url, hog) == {"forever": 1}, what="the async lane full")
    napper = run_of(e2e_url, send(e2e_url, "test/plain-nap"))
    # woken at its due time by the lane that has room, not by the next poll a minute later
    eventually(lambda: status(e2e_url, napper) == "completed", timeout=30, what="woke")
    assert status(e2e_url, hog) == "running"


def overlap(spans: list[tuple[float, float]]) -> int:
    """The most spans open at one moment."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


@pytest.mark.timeout(240)
def test_async_runs__5000_awaiting_at_once__beside_blocked_plain_bodies(e2e_url, daemon_factory):
    runs, seconds, workers, threads = 5000, 2.0, 2, 32
    daemon_factory(APP, workers=workers, concurrency=threads, async_concurrency=2500)
    # a plain function's body blocks a worker thread, an async function's plain body blocks a
    # thread beside a loop: neither may hold up the async runs
    stuck = [
        run_of(e2e_url, send(e2e_url, "test/stuck")),
        run_of(e2e_url, send(e2e_url, "test/async-stuck")),
    ]
    for run_id in stuck:
        eventually(lambda r=run_id: effects(e2e_url, r) == {"stuck": 1}, what="body blocked")

    sent = time.monotonic()
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'test/nap', jsonb_build_object('seconds', %s::float) FROM generate_series(1, %s)",
        (seconds, runs),
    )
    eventually(
        lambda: (
            scalar(
                e2e_url,
                "SELECT count(*) FROM orchestrator.runs WHERE function_id = 'async-nap' "
                "AND status = 'completed'",
            )
            == runs
        ),
        timeout=180,
        interval=0.2,
        what=f"{runs} async runs completed",
    )
    wall = time.monotonic() - sent
    # the blocked bodies are still blocked: the async runs did not wait for them
    assert [status(e2e_url, r) for r in stuck] == ["running", "running"]
    spans: list[Any] = [
        tuple(row[0])
        for row in sql(
            e2e_url, "SELECT output FROM orchestrator.runs WHERE function_id = 'async-nap'"
        )
    ]
    # far more awaited at once than the worker threads could have run
    assert overlap(spans) > workers * threads * 10
    threaded = runs * seconds / (workers * threads)
    print(
        f"\n{runs} async runs of a {seconds:g} s await: {wall:.1f} s from send to the last "
        f"completion ({threaded:.0f} s on {workers}x{threads} threads); at most "
        f"{overlap(spans)} awaiting at once"
    )
    for run_id in stuck:
        open_gate(e2e_url, f"{run_id}:stuck")
    for run_id in stuck:
        eventually(lambda r=run_id: status(e2e_url, r) == "completed", what="unstuck")
