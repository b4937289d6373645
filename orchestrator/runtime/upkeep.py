"""Leader duty: flow-control upkeep.

- `timeouts`: a run not started within `start` of its creation, or not finished within
  `finish` of its start, is cancelled (an executing one too: its execution stops);
- expired idempotency keys and spent throttle or rate-limit states are deleted, a batch at a
  time, every PURGE_EVERY seconds.
"""

from __future__ import annotations

import time
from typing import Any

from orchestrator.db import flow, idempotency, limiters, runs
from orchestrator.db.database import Database
from orchestrator.functions import FunctionDef

PURGE_EVERY = 60.0


class Upkeep:
    def __init__(self, db: Database, registry: dict[str, FunctionDef], log: Any) -> None:
        self.db = db
        self.timeouts = {fid: f.flow.timeouts for fid, f in registry.items() if f.flow.timeouts}
        self.log = log
        self.purged_at = time.monotonic()

    def serve(self, function_id: str, fdef: FunctionDef) -> None:
        """Take on (or update) a function's timeouts."""
        timeouts = {f: t for f, t in self.timeouts.items() if f != function_id}
        if fdef.flow.timeouts:
            timeouts[function_id] = fdef.flow.timeouts
        self.timeouts = timeouts

    def tick(self) -> list[runs.CancelledRun]:
        """Cancel the runs past their timeouts; returns those it ended."""
        cancelled: list[runs.CancelledRun] = []
        if self.timeouts:
            cancelled = self.db.run(self._cancel_late)
        if time.monotonic() - self.purged_at >= PURGE_EVERY:
            self.purged_at = time.monotonic()
            self.db.run(lambda conn: idempotency.purge(conn) + limiters.purge(conn))
        return cancelled

    def _cancel_late(self, conn: Any) -> list[runs.CancelledRun]:
        cancelled: list[runs.CancelledRun] = []
        for fid, t in sorted(self.timeouts.items()):
            late = flow.past_timeouts(conn, fid, start=_s(t.start), finish=_s(t.finish))
            for which, seconds in (("start", t.start), ("finish", t.finish)):
                ids = [run_id for run_id, w in late if w == which]
                if not ids:
                    continue
                since = "being created" if which == "start" else "starting"
                reason = (
                    f"run did not {which} within {_s(seconds):g} s of {since} (timeouts.{which})"
                )
                changed = runs.cancel(conn, ids, reason=reason)
                cancelled += changed
                for run in changed:
                    self.log.info("run timed out", run_id=run.id, function_id=fid, timeout=which)
        return cancelled


def _s(value: Any) -> float | None:
    return None if value is None else float(value)
