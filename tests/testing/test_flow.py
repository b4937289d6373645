"""Flow control by virtual time: a debounce window and a batch window released by
`advance`, a throttle and a concurrency limit honoured."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import Batch, Concurrency, Context, Debounce, Orchestrator, Throttle, event
from orchestrator.testing import TestEnv

app = Orchestrator()
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@app.function("reindex", trigger=event("doc/edited"), debounce=Debounce(timedelta(seconds=30)))
def reindex(ctx: Context) -> Any:
    return ctx.event.data


@app.function(
    "digest",
    trigger=event("mail/received"),
    batch_events=Batch(max_size=10, timeout=timedelta(minutes=1)),
)
def digest(ctx: Context) -> list[int]:
    return [e.data["n"] for e in ctx.events]


@app.function(
    "sync",
    trigger=event("sync/requested"),
    throttle=Throttle(limit=1, period=timedelta(minutes=1)),
)
def sync(ctx: Context) -> int:
    return int(ctx.event.data["n"])


running_seen: list[int] = []  # runs of "export" claimed (status running) during each body
current: list[TestEnv] = []


def write() -> str:
    running_seen.append(len(current[0].runs("export", status="running")))
    return "written"


@app.function("export", trigger=event("export/requested"), concurrency=Concurrency(limit=1))
def export(ctx: Context) -> int:
    ctx.step.run("write", write)
    return int(ctx.event.data["n"])


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_debounce__one_run_with_the_last_event_after_the_quiet_period(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        for n in range(3):
            env.send("doc/edited", {"n": n})
            env.run_until_idle()
            env.advance(timedelta(seconds=10))
        assert env.runs("reindex") == []  # still gathering: the last edit was 10 s ago

        env.advance(timedelta(minutes=5))

        (run,) = env.runs("reindex")
        assert run.status == "completed"
        assert run.output == {"n": 2}
        # made when the window closed: 30 s after the last edit, not when the test stopped
        assert run.created_at == START + timedelta(seconds=20 + 30)


def test_batch__the_window_is_released_by_advance(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        for n in range(3):
            env.send("mail/received", {"n": n})
        env.run_until_idle()
        assert env.runs("digest") == []

        env.advance(timedelta(minutes=10))

        (run,) = env.runs("digest")
        assert run.status == "completed"
        assert run.output == [0, 1, 2]
        assert len(run.events) == 3
        assert run.created_at == START + timedelta(minutes=1)


def test_throttle__runs_start_one_period_apart(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        for n in range(3):
            env.send("sync/requested", {"n": n})
        env.run_until_idle()
        assert [r.status for r in env.runs("sync")] == ["completed", "queued", "queued"]

        env.advance(timedelta(minutes=5))

        runs = env.runs("sync")
        assert [r.status for r in runs] == ["completed"] * 3
        started = sorted(r.started_at for r in runs if r.started_at is not None)
        assert len(started) == 3
        assert [b - a for a, b in itertools.pairwise(started)] == [timedelta(minutes=1)] * 2


def test_concurrency__one_is_claimed_at_a_time(orchestrator_env: TestEnv) -> None:
    # a plain claim takes every due run at once (all `running`, executed in turn); with
    # Concurrency(1) the next is claimed only once the one before has ended
    env = orchestrator_env
    current[:] = [env]
    running_seen.clear()
    for n in range(3):
        env.send("export/requested", {"n": n})
    env.run_until_idle()

    runs = env.runs("export")
    assert [r.status for r in runs] == ["completed"] * 3
    assert running_seen == [1, 1, 1]
    assert [r.output for r in runs] == [0, 1, 2]
