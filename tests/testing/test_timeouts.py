"""A function's `timeouts` by virtual time: a run is cancelled at its deadline, not at
whatever falls due next."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from orchestrator import Context, Orchestrator, Throttle, Timeouts, event
from orchestrator.testing import TestEnv

app = Orchestrator()
START = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)


@app.function("slow", trigger=event("slow/go"), timeouts=Timeouts(finish=timedelta(hours=1)))
def slow(ctx: Context) -> str:
    ctx.step.sleep("nap", timedelta(hours=2))
    return "done"


@app.function(
    "hourly-slot",
    trigger=event("slot/go"),
    throttle=Throttle(limit=1, period=timedelta(hours=1)),
    timeouts=Timeouts(start=timedelta(minutes=10)),
)
def hourly_slot(ctx: Context) -> str:
    return "started"


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_timeouts__finish_cancels_at_the_deadline(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        env.send("slow/go")
        env.run_until_idle()
        assert env.next_due() == START + timedelta(hours=1)  # before the nap's end
        env.advance(timedelta(minutes=90))

        (run,) = env.runs("slow")
        assert run.status == "cancelled"
        assert run.finished_at == START + timedelta(hours=1)
        assert run.error is not None and "timeouts.finish" in run.error["message"]


def test_timeouts__start_cancels_a_run_held_back_too_long(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        env.send("slot/go", {"n": 1})
        env.send("slot/go", {"n": 2})
        env.advance(timedelta(minutes=30))

        first, second = env.runs("hourly-slot")
        assert (first.status, first.output) == ("completed", "started")
        assert second.status == "cancelled"  # the throttle held it past its start timeout
        assert second.started_at is None
        assert second.finished_at == START + timedelta(minutes=10)
