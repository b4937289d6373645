"""Giving back what nobody executes, and the leader's periodic duties.

- `Rescue`, every `rescue_interval`: every daemon requeues the runs whose lease expired
  (runtime/rescuer.py), so that a stalled leader cannot hold rescues up; the leader also
  requeues the runs of dead daemons, fires cron (runtime/cron.py), cancels runs past their
  timeouts (runtime/upkeep.py) and watches for runs of functions nobody serves
  (runtime/unserved.py). Anything requeued or fired calls `on_work`, which wakes the
  dispatcher.
- `Parking`, every ten rescue intervals (at least five seconds), leader only: runs of
  functions that no daemon ever registered fail with a reason.
"""

from __future__ import annotations

from collections.abc import Callable

from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.rescuer import Rescuer
from orchestrator.runtime.service import Looper
from orchestrator.runtime.unserved import UnservedWatch
from orchestrator.runtime.upkeep import Upkeep


class Rescue(Looper):
    name = "rescue"

    def __init__(
        self,
        rescuer: Rescuer,
        *,
        interval: float,
        is_leader: Callable[[], bool],
        cron: CronScheduler,
        upkeep: Upkeep,
        unserved: UnservedWatch,
        metrics: DaemonMetrics,
        on_work: Callable[[], None],
    ) -> None:
        super().__init__()
        self.rescuer = rescuer
        self.interval = interval
        self.is_leader = is_leader
        self.cron = cron
        self.upkeep = upkeep
        self.unserved = unserved
        self.metrics = metrics
        self.on_work = on_work

    def run(self, now: float) -> None:
        expired = self.rescuer.rescue_expired()
        self.metrics.rescued("expired_lease", expired)
        rescued = len(expired)
        if self.is_leader():
            dead = self.rescuer.rescue_dead_daemons()
            self.metrics.rescued("dead_daemon", dead)
            rescued += len(dead) + self.cron.tick()
            self.metrics.runs_ended(self.upkeep.tick())  # an executing one too
            self.unserved.tick()
        if rescued:
            self.on_work()


class Parking(Looper):
    name = "parking"

    def __init__(self, rescuer: Rescuer, *, interval: float, is_leader: Callable[[], bool]) -> None:
        super().__init__()
        self.rescuer = rescuer
        self.interval = interval
        self.is_leader = is_leader

    def run(self, now: float) -> None:
        if self.is_leader():
            self.rescuer.park_unknown_functions()
