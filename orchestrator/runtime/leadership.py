"""Heartbeat and leader election, every `heartbeat_interval`.

Each tick records the daemon's heartbeat (status `running`, or `stopping` once it shuts down)
and, unless stopping, takes or extends the leader term (`leader_ttl`) in the same
transaction. The term is measured on this process's monotonic clock from before the
statement ran, with a margin, so a daemon paused past its term sees it expired and stops
acting as leader before another daemon can have taken over. The leader-only duties (rescue of
dead daemons, cron, upkeep, retention) ask `is_leader`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchestrator.db import daemons
from orchestrator.db.database import Database
from orchestrator.runtime.service import Looper

TERM_MARGIN = 0.8  # of the term this daemon counts on


class Leadership(Looper):
    name = "heartbeat"

    def __init__(
        self,
        db: Database,
        *,
        daemon_id: str,
        interval: float,
        ttl: float,
        stopping: Callable[[], bool],
        on_beat: Callable[[], None],
        log: Any,
    ) -> None:
        super().__init__()
        self.db = db
        self.daemon_id = daemon_id
        self.interval = interval
        self.ttl = ttl
        self.stopping = stopping
        self.on_beat = on_beat  # the database answered: /readyz
        self.log = log
        self.leader_until = 0.0  # monotonic time until which this daemon's term surely holds

    @property
    def is_leader(self) -> bool:
        return time.monotonic() < self.leader_until

    def stop(self) -> None:
        super().stop()
        self.leader_until = 0.0

    def run(self, now: float) -> None:
        """Heartbeat, and take or extend leadership (not while stopping)."""
        stopping = self.stopping()
        started = time.monotonic()
        status = "stopping" if stopping else "running"
        with self.db.transaction() as conn:
            leading = not stopping and daemons.elect(conn, self.daemon_id, ttl=self.ttl)
            previous = daemons.heartbeat(conn, self.daemon_id, is_leader=leading, status=status)
        self.leader_until = started + self.ttl * TERM_MARGIN if leading else 0.0
        self.on_beat()
        if previous == "dead":
            self.log.error(
                "this daemon was declared dead (stalled or cut off); its runs were "
                "requeued and its late writes are refused; serving again"
            )
