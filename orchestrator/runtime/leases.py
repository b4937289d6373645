"""Lease renewal, every third of `lease_duration`: the leases of the runs this daemon's
workers execute are extended, so that no other daemon rescues them.

Only the runs the pool holds are renewed: one this daemon never heard of (its claim committed
but the answer was lost with the connection) is left to expire and be rescued. A lease held
by the pool both before and after the renewal, yet not renewed, is lost: its run's writes
will be refused (fenced), and a warning says so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.db import runs
from orchestrator.db.database import Database
from orchestrator.runtime.service import Looper


class LeaseRenewer(Looper):
    name = "leases"

    def __init__(
        self,
        db: Database,
        *,
        owner: str,
        lease_seconds: float,
        held: Callable[[], set[str]],
        log: Any,
    ) -> None:
        super().__init__()
        self.db = db
        self.owner = owner
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self.held = held  # the ids of the runs the pool executes
        self.log = log

    def run(self, now: float) -> None:
        before = self.held()
        with self.db.transaction() as conn:
            renewed = runs.renew_leases(
                conn, owner=self.owner, run_ids=before, lease_seconds=self.lease_seconds
            )
        # a run that finished or was handed over meanwhile is not lost
        lost = (before & self.held()) - renewed
        if lost:
            self.log.warning("leases lost; their runs will be fenced", runs=len(lost))
