"""Leader duty: give back runs whose daemon died or stalled.

Two signals: a lease that expired (the owner stopped renewing: paused, partitioned, dead), and
a daemon whose liveness lock is free and whose heartbeat is stale (its process is gone; no need
to wait for the lease). Either way the run is requeued with a recovery counted, or failed once
it passes `max_recoveries`.
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

    def tick(self) -> int:
        rescued = self.rescue_dead_daemons()
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
        return rescued + len(expired)

    def rescue_dead_daemons(self) -> int:
        total = 0
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
            total += len(requeued)
            self.log.warning(
                "daemon is gone; its runs were requeued",
                dead_daemon=daemon.id,
                hostname=daemon.hostname,
                pid=daemon.pid,
                runs=len(requeued),
            )
        return total
