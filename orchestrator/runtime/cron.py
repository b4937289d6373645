"""Leader duty: fire cron schedules.

A due schedule fires once, for the latest tick at or before the database's now (after downtime,
one run for the latest missed tick, not a burst). The run's idempotency key is the tick time,
so even two daemons that both believed they led could not start the same tick twice.
"""

from __future__ import annotations

from typing import Any

from orchestrator.db import functions, runs
from orchestrator.db.database import Database
from orchestrator.db.session import notify_runs
from orchestrator.functions import CRON_EVENT_NAME, FunctionDef


class CronScheduler:
    def __init__(self, db: Database, registry: dict[str, FunctionDef], log: Any) -> None:
        self.db = db
        self.crons = {fid: f.cron_trigger for fid, f in registry.items() if f.cron_trigger}
        self.log = log

    def register(self) -> None:
        """Record each cron schedule; an unchanged one keeps its next fire time."""
        with self.db.transaction() as conn:
            now = functions.db_now(conn)
            for fid, trigger in self.crons.items():
                functions.upsert_schedule(
                    conn,
                    fid,
                    cron=trigger.expr,
                    tz=trigger.tz or "UTC",
                    next_fire_at=trigger.next_after(now),
                )

    def tick(self) -> int:
        if not self.crons:
            return 0
        fired = 0
        with self.db.transaction() as conn:
            for due in functions.claim_due_schedules(conn, list(self.crons)):
                trigger = self.crons[due.function_id]
                tick_at = trigger.latest_at_or_before(due.now)
                stamp = tick_at.isoformat()
                payload = {
                    "id": f"cron:{due.function_id}:{stamp}",
                    "name": CRON_EVENT_NAME,
                    "data": {"scheduled_at": stamp, "cron": trigger.expr, "tz": trigger.tz},
                    "ts": stamp,
                }
                created = runs.create_many(
                    conn, [runs.NewRun(due.function_id, [payload], idempotency_key=f"cron:{stamp}")]
                )
                functions.mark_fired(
                    conn,
                    due.function_id,
                    fired_at=tick_at,
                    next_fire_at=trigger.next_after(due.now),
                    run_id=created[0] if created else None,
                )
                fired += len(created)
                self.log.info(
                    "cron fired", function_id=due.function_id, tick=stamp, created=bool(created)
                )
            if fired:
                notify_runs(conn)
        return fired
