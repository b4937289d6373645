"""A cron function that fires every second and runs for 1.5 s with `overlap="skip"`, so every
other tick meets an active run (its own app: in a shared one it would keep a worker busy, and
write effects, under every other test)."""

from __future__ import annotations

import time
from typing import Any

from orchestrator import Context, Orchestrator, cron
from tests.e2e.apps.common import record

app = Orchestrator()
BODY_SECONDS = 1.5


@app.function("slow-cron", trigger=cron("* * * * * *", overlap="skip"))
def slow_cron(ctx: Context) -> dict[str, Any]:
    def body() -> None:
        record(ctx.run_id, "work")
        time.sleep(BODY_SECONDS)

    ctx.step.run("work", body)
    return {"scheduled_at": ctx.event.data["scheduled_at"]}
