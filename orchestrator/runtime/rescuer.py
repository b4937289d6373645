"""Give back runs whose daemon died or stalled, and park runs nothing can execute.

- Expired leases (the owner stopped renewing: paused, partitioned, dead): every daemon checks,
  so a stalled leader cannot hold up rescues. The statement is atomic and conditional, so two
  daemons rescuing at once requeue each run once.
- Dead daemons (leader only): a daemon whose liveness lock is free and whose heartbeat is stale
  is gone; its runs are requeued without waiting for their leases.
- Runs of functions no daemon ever registered (leader only): failed with a reason.

A requeue counts a recovery; past `max_recoveries` the run fails instead.
"""

from __future__ import annotations

from typing import Any

from orchestrator.db import daemons, runs
from orchestrator.db.database import Database
from orchestrator.db.session import notify_runs


class Rescuer:
    def __init__(
        self, db: Database, *, daemon_id: str, max_recoveries: int, dead_after: float, log: Any
    ) -> None:
        self.db = db
        self.daemon_id = daemon_id
        self.max_recoveries = max_recoveries
        self.dead_after = dead_after
        self.log = log

    def rescue_expired(self) -> list[runs.RequeuedRun]:
        """Requeue (or fail, at the recovery cap) runs whose lease expired; returns them."""
        with self.db.transaction() as conn:
            expired = runs.rescue_expired(conn, max_recoveries=self.max_recoveries)
            if expired:
                notify_runs(conn)
        for run in expired:
            self.log.warning(
                "lease expired; run requeued",
                run_id=run.id,
                function_id=run.function_id,
                status=run.status,
            )
        return expired

    def rescue_dead_daemons(self) -> list[runs.RequeuedRun]:
        """Declare dead the daemons that are gone, and requeue their runs; returns them."""
        rescued: list[runs.RequeuedRun] = []
        with self.db.transaction() as conn:
            candidates = [
                d
                for d in daemons.list_live(conn)
                if d.id != self.daemon_id and d.heartbeat_age > self.dead_after
            ]
        for daemon in candidates:
            with self.db.transaction() as conn:
                if not daemons.is_lock_free(conn, daemon.lock_key):
                    continue
                daemons.mark_dead(conn, daemon.id)
                requeued = runs.rescue_owner(
                    conn, owner=daemon.id, max_recoveries=self.max_recoveries
                )
                if requeued:
                    notify_runs(conn)
            rescued += requeued
            self.log.warning(
                "daemon is gone; its runs were requeued",
                dead_daemon=daemon.id,
                hostname=daemon.hostname,
                pid=daemon.pid,
                runs=len(requeued),
            )
        return rescued

    def park_unknown_functions(self) -> int:
        with self.db.transaction() as conn:
            failed = runs.fail_unknown_functions(conn)
        for run in failed:
            self.log.warning(
                "run of an unregistered function failed", run_id=run.id, function_id=run.function_id
            )
        return len(failed)
