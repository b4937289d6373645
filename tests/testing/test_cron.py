"""A cron function across a virtual week: every tick fires once, at its hour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import Context, Orchestrator, cron
from orchestrator.testing import TestEnv

app = Orchestrator()
START = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)  # on the hour


@app.function("hourly", trigger=cron("0 * * * *"))
def hourly(ctx: Context) -> dict[str, Any]:
    return {"tick": ctx.event.data["scheduled_at"]}


@pytest.fixture
def orchestrator_app() -> Orchestrator:
    return app


def test_cron__a_virtual_week_fires_every_hour_once(db_url: str) -> None:
    with TestEnv(app, url=db_url, start=START) as env:
        env.advance(timedelta(days=7))

        runs = env.runs("hourly")
        assert len(runs) == 168
        assert {r.status for r in runs} == {"completed"}
        ticks = [datetime.fromisoformat(r.event["data"]["scheduled_at"]) for r in runs]
        assert len(set(ticks)) == 168
        expected = [START + timedelta(hours=h) for h in range(1, 169)]
        assert sorted(ticks) == expected
        assert [datetime.fromisoformat(r.output["tick"]) for r in runs] == ticks
        assert len({r.event["id"] for r in runs}) == 168  # no tick fired twice
        assert [r.created_at for r in runs] == ticks  # each made at its own hour
