"""A cron function that fires every 2 seconds (croniter's sixth field is seconds)."""

from __future__ import annotations

from typing import Any

from orchestrator import Context, Orchestrator, cron
from tests.e2e.apps.common import record

app = Orchestrator()


@app.function("every-two-seconds", trigger=cron("* * * * * */2"))
def every_two_seconds(ctx: Context) -> dict[str, Any]:
    def tick() -> str:
        record(ctx.run_id, "tick")
        return str(ctx.event.data["scheduled_at"])

    return {"scheduled_at": ctx.step.run("tick", tick)}
