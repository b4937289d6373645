"""Applying requested cancellations, every `poll_interval`.

A cancellation is requested by setting `runs.cancel_requested_at` (with an UPDATE, the CLI,
`app.cancel`, or by another daemon). Idle runs (queued, sleeping, waiting) end here at once;
the workers executing runs of this daemon whose cancellation was requested are told, and stop
them at their next step boundary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.db import runs
from orchestrator.db.database import Database
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.service import Looper


class Cancellations(Looper):
    name = "cancellations"

    def __init__(
        self,
        db: Database,
        *,
        owner: str,
        interval: float,
        stop_runs: Callable[[set[str]], None],
        metrics: DaemonMetrics,
        log: Any,
    ) -> None:
        super().__init__()
        self.db = db
        self.owner = owner
        self.interval = interval
        self.stop_runs = stop_runs  # tells the workers executing these runs
        self.metrics = metrics
        self.log = log

    def run(self, now: float) -> None:
        changed, running = self.db.run(self._apply)
        self.metrics.runs_ended(changed)  # the idle ones end here; the others at a boundary
        if running:
            self.stop_runs(running)
        for run in changed:
            if run.status == "cancelled":
                self.log.info("run cancelled", run_id=run.id, function_id=run.function_id)

    def _apply(self, conn: Any) -> tuple[list[runs.RequeuedRun], set[str]]:
        return runs.cancel_requested(conn), runs.cancelling(conn, owner=self.owner)
