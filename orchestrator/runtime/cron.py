"""Leader duty: fire cron schedules.

A due schedule fires for the ticks its `catch_up` policy names: by default the latest tick at
or before the database's now (after downtime, one run for the latest missed tick, not a
burst); `"none"` drops ticks over a minute late; `"all"` fires each missed tick, at most the
latest 100. Its `overlap` policy decides what a tick does while a run of the function is
still active: start another (`"allow"`), nothing (`"skip"`), or cancel the active runs first
(`"cancel_previous"`). A run's idempotency key is its tick time, so even two daemons that
both believed they led could not start the same tick twice.

A run of a function with `cancel_on` conditions gets them as a run the ingest makes does,
watching events received since its tick. Before it touches any run, the tick takes the shared
lock of each event name they watch (the ingest of such an event holds its exclusive lock, see
db/waits.py): an ingest in flight commits first, and the new run looks back at what it and
the others ingested since the tick (`waits.cancels_since_runs`), to be cancelled in the same
transaction; a later ingest finds the new conditions.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from orchestrator.db import flow, functions, runs, waits
from orchestrator.db.database import Database
from orchestrator.db.session import notify_runs
from orchestrator.functions import CRON_EVENT_NAME, CronTrigger, FunctionDef
from orchestrator.runtime.ingest import met

_CANCELLED = "cancelled by a cancel_on event"


class CronScheduler:
    def __init__(self, db: Database, registry: dict[str, FunctionDef], log: Any) -> None:
        self.db = db
        self.crons = {fid: f.cron_trigger for fid, f in registry.items() if f.cron_trigger}
        self.policies = {fid: registry[fid].policy() for fid in self.crons}
        # the event names the cancel_on conditions of each cron function watch
        self.watched = {fid: _watched(registry[fid]) for fid in self.crons}
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

    def serve(self, function_id: str, fdef: FunctionDef) -> None:
        """Take on (or update, or drop when it has no cron) a function's schedule; call
        `register` after to record it."""
        crons = {f: t for f, t in self.crons.items() if f != function_id}
        if fdef.cron_trigger is not None:
            crons[function_id] = fdef.cron_trigger
            self.policies = self.policies | {function_id: fdef.policy()}
            self.watched = self.watched | {function_id: _watched(fdef)}
        self.crons = crons

    def forget(self, function_id: str) -> None:
        self.crons = {f: t for f, t in self.crons.items() if f != function_id}

    def tick(self) -> int:
        if not self.crons:
            return 0
        fired = 0
        with self.db.transaction() as conn:
            dues = functions.claim_due_schedules(conn, list(self.crons))
            names = sorted({n for due in dues for n in self.watched.get(due.function_id, [])})
            waits.lock_names(conn, names, shared=True)  # before any run is touched
            watches = functions.cancel_watches(conn) if names else []
            for due in dues:
                trigger = self.crons[due.function_id]
                run_id = None
                for tick_at in trigger.ticks_due(due.next_fire_at, due.now):
                    made = self._fire(conn, due.function_id, trigger, tick_at, watches)
                    if made is not None:
                        run_id, fired = made, fired + 1
                functions.mark_fired(
                    conn,
                    due.function_id,
                    fired_at=trigger.latest_at_or_before(due.now),
                    next_fire_at=trigger.next_after(due.now),
                    run_id=run_id,
                )
            if fired:
                notify_runs(conn)
        return fired

    def _fire(
        self,
        conn: Any,
        fid: str,
        trigger: CronTrigger,
        tick_at: datetime,
        watches: list[runs.CancelWatch],
    ) -> str | None:
        """Start the run of one tick, by the trigger's overlap policy; returns its id."""
        stamp = tick_at.isoformat()
        if trigger.overlap != "allow":
            active = flow.active_runs(conn, fid)
            if active and trigger.overlap == "skip":
                self.log.info(
                    "cron tick skipped: a run is still active", function_id=fid, tick=stamp
                )
                return None
            runs.cancel(conn, active, reason=f"cancelled by the cron tick of {stamp} (overlap)")
        payload = {
            "id": f"cron:{fid}:{stamp}",
            "name": CRON_EVENT_NAME,
            "data": {"scheduled_at": stamp, "cron": trigger.expr, "tz": trigger.tz},
            "ts": stamp,
        }
        keys = self.policies[fid].run_keys(payload)
        run = runs.NewRun(
            fid, [payload], idempotency_key=f"cron:{stamp}", since=tick_at, **keys.fields()
        )
        created = runs.create_many(conn, [run], watches)
        self.log.info("cron fired", function_id=fid, tick=stamp, created=bool(created))
        if created and self.watched.get(fid):
            late = met(waits.cancels_since_runs(conn, created))
            if late:
                runs.cancel(conn, late, reason=_CANCELLED)
                self.log.info("cron run cancelled by an earlier event", function_id=fid, tick=stamp)
        return created[0] if created else None


def _watched(fdef: FunctionDef) -> list[str]:
    return sorted({c.event for c in fdef.cancel_on})
