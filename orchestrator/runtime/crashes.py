"""Requeueing the runs of a worker process that died or gave up, at once.

The worker pool calls `requeue` from its supervisor thread as soon as it reaps a dead
process (or a worker abandons a run), so the runs go back without waiting for their leases to
expire: the suspects (in a step body when the process died) count a recovery and a crash,
the others a recovery or nothing (runtime/pool.py `Handback`). Suspects are then claimed into
the quarantine process (`on_suspects`), and the dispatcher is woken (`on_work`).

This service has no tick of its own: the pool's callback drives it, while it is started (from
before the pool starts until the daemon's last database work). A handback that comes while
it is stopped is left to the lease rescue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.db import runs
from orchestrator.db.database import Database, DatabaseError
from orchestrator.db.session import notify_runs
from orchestrator.errors import first_line
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.pool import Handback
from orchestrator.runtime.service import Looper


class CrashRequeue(Looper):
    name = "crash-requeue"

    def __init__(
        self,
        db: Database,
        *,
        max_recoveries: int,
        metrics: DaemonMetrics,
        on_suspects: Callable[[], None],
        on_work: Callable[[], None],
        log: Any,
    ) -> None:
        super().__init__()
        self.db = db
        self.max_recoveries = max_recoveries
        self.metrics = metrics
        self.on_suspects = on_suspects
        self.on_work = on_work
        self.log = log

    def run(self, now: float) -> None:
        pass  # driven by `requeue`

    def requeue(self, worker: int, handback: Handback) -> None:
        """A worker process died or gave up: requeue its runs at once."""
        if not self.started:
            return
        try:
            requeued = self.db.run(self._requeue(handback))
        except DatabaseError as exc:
            self.log.error(
                "could not requeue runs of a dead worker; their leases will expire",
                worker=worker,
                error=first_line(exc),
            )
            return
        self.metrics.rescued("abandoned" if handback.abandoned else "worker_crash", requeued)
        if handback.crashed:
            self.on_suspects()
        for run in requeued:
            self.log.warning(
                "run requeued after worker crash",
                run_id=run.id,
                function_id=run.function_id,
                status=run.status,
                worker=worker,
            )
        self.on_work()

    def _requeue(self, handback: Handback) -> Callable[[Any], list[runs.RequeuedRun]]:
        cap = self.max_recoveries

        def requeue(conn: Any) -> list[runs.RequeuedRun]:
            requeued = (
                runs.requeue_crashed(conn, handback.crashed, max_recoveries=cap)
                + runs.requeue_interrupted(conn, handback.interrupted, max_recoveries=cap)
                + runs.release(conn, handback.released)
            )
            if requeued:
                notify_runs(conn)
            return requeued

        return requeue
