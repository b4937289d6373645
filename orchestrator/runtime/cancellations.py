"""Applying requested cancellations, and stopping the executions of cancelled runs.

A cancellation ends a run at once, a running one too (db/runs.py): `app.cancel`, the CLI, a
`cancel_on` event, a timeout. One requested by hand (`UPDATE runs SET cancel_requested_at =
now()`) is applied here, every `poll_interval`. Then the runs this daemon's workers execute
that a cancellation ended are looked up, and their workers told: an async run's task is
cancelled at once, a plain one stops at its next step boundary. A statement that ends a
running run notifies `orchestrator_cancels`, which makes this service due at once (the
daemon's `_on_notify`), so its worker learns within a pass of the loop.
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
        interval: float,
        executing: Callable[[], set[str]],
        stop_runs: Callable[[set[str]], None],
        metrics: DaemonMetrics,
        log: Any,
    ) -> None:
        super().__init__()
        self.db = db
        self.interval = interval
        self.executing = executing  # the runs this daemon's workers execute (not told yet)
        self.stop_runs = stop_runs  # tells the workers executing these runs
        self.metrics = metrics
        self.log = log

    def run(self, now: float) -> None:
        changed, ended = self.db.run(self._apply)
        self.metrics.runs_ended(changed)
        if ended:
            self.stop_runs(ended)
        for run in changed:
            self.log.info("run cancelled", run_id=run.id, function_id=run.function_id)

    def _apply(self, conn: Any) -> tuple[list[runs.CancelledRun], set[str]]:
        changed = runs.cancel_requested(conn)
        return changed, runs.cancelled_among(conn, self.executing())
