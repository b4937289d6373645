"""The daemon's metrics: what it counts, where each count comes from, and the worker-side
tally of steps.

Every count is the daemon's own bookkeeping, never a scan of the tables:

- runs started: the claims the scheduler hands to workers (a run's first claim);
- runs finished, step durations, step retries, function retries and abandoned step threads
  (plain bodies left running past their timeout): counted inside each worker process by a
  `StepTally` (the engine reports every step body and every scheduled retry to it) and handed
  to the daemon as deltas riding on the messages workers already send, one per finished or
  suspended run (plus one at most every `FLUSH_EVERY` seconds during a long run), so the hot
  path sends no message of its own;
- runs finished by the daemon itself: recoveries that reached the cap, and requested
  cancellations it applied to runs not executing;
- rescues: what the rescuer and the worker-crash handler return;
- events ingested: what each ingest transaction took.

The due queue's depth and lag are read from the database in the background
(runtime/backlog.py), and the due runs no daemon serves by the leader's periodic check
(runtime/unserved.py); never by a scrape.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import orchestrator
from orchestrator.runtime.health import Health
from orchestrator.runtime.prometheus import Registry

# Seconds; a step body below 5 ms up to one of several minutes.
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
FINISHED = ("completed", "failed", "cancelled")
RESCUES = ("expired_lease", "dead_daemon", "worker_crash", "abandoned")
FLUSH_EVERY = 5.0  # seconds a worker keeps step counts before sending them without a run ending


class Ended(Protocol):
    """A run a statement ended or requeued (db.runs.RequeuedRun)."""

    @property
    def function_id(self) -> str: ...

    @property
    def status(self) -> str: ...


class Backlog(Protocol):
    """One function's due queue (db.backlog.DueBacklog)."""

    @property
    def function_id(self) -> str: ...

    @property
    def depth(self) -> int: ...

    @property
    def lag_seconds(self) -> float: ...


class Unserved(Protocol):
    """One function's due runs that no daemon serves (db.functions.UnservedBacklog)."""

    @property
    def function_id(self) -> str: ...

    @property
    def runs(self) -> int: ...


@dataclass
class TallyDelta:
    """What a worker counted since it last reported, keyed by function id."""

    steps: dict[str, tuple[list[int], float]] = field(default_factory=dict)  # buckets, sum
    retries: dict[str, int] = field(default_factory=dict)
    finished: dict[tuple[str, str], int] = field(default_factory=dict)  # (function, status)
    run_retries: dict[str, int] = field(default_factory=dict)
    abandoned: dict[str, int] = field(default_factory=dict)  # step threads abandoned
    abandoned_alive: dict[str, int] = field(default_factory=dict)  # change in those running


class StepTally:
    """Counts steps, retries and finished runs in a worker process (thread-safe; a few
    hundred nanoseconds a step). `take()` hands over what was counted since the last call.
    When counts have waited `flush_every` seconds, the next step calls `on_stale`, which
    should take and send them."""

    def __init__(
        self,
        *,
        flush_every: float = FLUSH_EVERY,
        on_stale: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.flush_every = flush_every
        self.on_stale = on_stale
        self._clock = clock
        self._lock = threading.Lock()
        self._delta = TallyDelta()
        self._since: float | None = None  # when the oldest count not yet taken was made

    def step_ran(self, function_id: str, seconds: float) -> None:
        bucket = bisect.bisect_left(STEP_BUCKETS, seconds)
        with self._lock:
            entry = self._delta.steps.get(function_id)
            if entry is None:
                entry = self._delta.steps[function_id] = ([0] * (len(STEP_BUCKETS) + 1), 0.0)
            entry[0][bucket] += 1
            self._delta.steps[function_id] = (entry[0], entry[1] + seconds)
            stale = self._started()
        if stale and self.on_stale is not None:
            self.on_stale()

    def steps_retrying(self, function_id: str, count: int) -> None:
        with self._lock:
            self._delta.retries[function_id] = self._delta.retries.get(function_id, 0) + count
            self._started()

    def run_retrying(self, function_id: str) -> None:
        self._add(self._delta.run_retries, function_id, 1)

    def thread_abandoned(self, function_id: str) -> None:
        with self._lock:
            _bump(self._delta.abandoned, function_id, 1)
            _bump(self._delta.abandoned_alive, function_id, 1)
            self._started()

    def abandoned_thread_ended(self, function_id: str) -> None:
        self._add(self._delta.abandoned_alive, function_id, -1)

    def _add(self, counts: dict[str, int], function_id: str, by: int) -> None:
        with self._lock:
            _bump(counts, function_id, by)
            self._started()

    def run_finished(self, function_id: str, status: str) -> None:
        """A run ended here with this status (only completed, failed and cancelled count)."""
        if status not in FINISHED:
            return
        key = (function_id, status)
        with self._lock:
            self._delta.finished[key] = self._delta.finished.get(key, 0) + 1
            self._started()

    def take(self) -> TallyDelta | None:
        with self._lock:
            if self._since is None:
                return None
            delta, self._delta, self._since = self._delta, TallyDelta(), None
        return delta

    def _started(self) -> bool:
        """Note the first count since the last take; True once counts have gone stale."""
        now = self._clock()
        if self._since is None:
            self._since = now
        return now - self._since >= self.flush_every


def _bump(counts: dict[str, int], key: str, by: int) -> None:
    counts[key] = counts.get(key, 0) + by


class DaemonMetrics:
    """The `orchestrator_*` series of one daemon (see docs/metrics.md)."""

    def __init__(
        self,
        function_ids: Sequence[str],
        *,
        app_version: str,
        health: Health,
        leader: Callable[[], bool],
        executing: Callable[[], int],
        threads: int,
    ) -> None:
        r = self.registry = Registry()
        r.gauge(
            "orchestrator_build_info",
            "Always 1; the orchestrator version, and the app version the daemon records in "
            "orchestrator.daemons.version.",
            ("version", "app_version"),
            read=lambda: {(orchestrator.__version__, app_version): 1.0},
        )
        r.gauge("orchestrator_daemon_up", "1 while the daemon process serves.", read=lambda: 1.0)
        r.gauge(
            "orchestrator_daemon_leader",
            "1 while this daemon holds the leader lease, else 0.",
            read=lambda: float(leader()),
        )
        r.gauge(
            "orchestrator_daemon_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch.",
            read=lambda: health.started_unix,
        )
        r.gauge(
            "orchestrator_daemon_last_heartbeat_timestamp_seconds",
            "When the daemon's last successful heartbeat transaction committed (Unix time; "
            "0 before the first).",
            read=lambda: health.last_heartbeat_unix,
        )
        r.gauge(
            "orchestrator_daemon_last_tick_timestamp_seconds",
            "When the scheduler loop last turned (Unix time; 0 before the first pass).",
            read=lambda: health.last_tick_unix,
        )
        r.gauge(
            "orchestrator_worker_threads",
            "Runs the daemon's worker processes can execute at once (workers x concurrency, "
            "plus the quarantine process's one).",
            read=lambda: float(threads),
        )
        r.gauge(
            "orchestrator_runs_executing",
            "Runs handed to this daemon's worker processes and not yet given back.",
            read=lambda: float(executing()),
        )
        self.started = r.counter(
            "orchestrator_runs_started_total",
            "Runs claimed by this daemon for their first execution.",
            ("function",),
        )
        self.finished = r.counter(
            "orchestrator_runs_finished_total",
            "Runs this daemon ended: executions that completed, failed or were cancelled, "
            "recoveries past the cap (failed), and requested cancellations it applied.",
            ("function", "status"),
        )
        self.step_seconds = r.histogram(
            "orchestrator_step_duration_seconds",
            "Step body executions (every attempt, result encoding included), by duration.",
            ("function",),
            buckets=STEP_BUCKETS,
        )
        self.retries = r.counter(
            "orchestrator_step_retries_total",
            "Failed step attempts this daemon's workers scheduled to run again.",
            ("function",),
        )
        self.run_retries = r.counter(
            "orchestrator_run_retries_total",
            "Runs whose function raised outside any step and that this daemon's workers "
            "scheduled to run again (function-level retries).",
            ("function",),
        )
        self.abandoned = r.counter(
            "orchestrator_step_threads_abandoned_total",
            "Plain step bodies that outlived their step's timeout and were left to finish "
            "on their own thread (their results are dropped).",
            ("function",),
        )
        self._abandoned_alive: dict[tuple[str, ...], float] = {}
        r.gauge(
            "orchestrator_step_threads_abandoned",
            "Abandoned step body threads still running in this daemon's worker processes, as "
            "of the workers' latest reports.",
            ("function",),
            read=lambda: dict(self._abandoned_alive),
        )
        self.rescues = r.counter(
            "orchestrator_runs_rescued_total",
            "Runs this daemon put back in the queue (or failed at the recovery cap) after an "
            "expired lease, a dead daemon, a worker process crash, or a worker giving up.",
            ("reason",),
        )
        self.events = r.counter(
            "orchestrator_events_ingested_total",
            "Events this daemon ingested (including events parked with an error).",
        )
        self.due = r.gauge(
            "orchestrator_due_runs",
            "Runs due and waiting to be claimed, by function, counted up to the cap (10000).",
            ("function",),
        )
        self.lag = r.gauge(
            "orchestrator_due_lag_seconds",
            "How long the oldest due run of the function has been due (0 when none is).",
            ("function",),
        )
        self.probed = r.gauge(
            "orchestrator_due_probe_timestamp_seconds",
            "When orchestrator_due_runs and orchestrator_due_lag_seconds were last measured "
            "(Unix time; 0 before the first).",
        )
        self.probed.set(0.0)
        self._unserved: dict[tuple[str, ...], float] = {}
        r.gauge(
            "orchestrator_unserved_runs",
            "Due runs of functions that no running daemon serves, by function, counted up to "
            "the cap (10000). Measured by the leader only; the other daemons show no series.",
            ("function",),
            read=lambda: self._unserved if leader() else {},
        )
        for fid in function_ids:
            self.started.touch(fid)
            self.retries.touch(fid)
            self.run_retries.touch(fid)
            self.abandoned.touch(fid)
            self._abandoned_alive[(fid,)] = 0.0
            self.step_seconds.touch(fid)
            for status in FINISHED:
                self.finished.touch(fid, status)
        for reason in RESCUES:
            self.rescues.touch(reason)
        self.events.touch()

    def run_started(self, function_id: str) -> None:
        self.started.inc(function_id)

    def runs_ended(self, runs: Iterable[Ended]) -> None:
        """Count the runs of a statement's result that it ended (the others were requeued)."""
        for run in runs:
            if run.status in FINISHED:
                self.finished.inc(run.function_id, run.status)

    def rescued(self, reason: str, runs: Sequence[Ended]) -> None:
        if runs:
            self.rescues.inc(reason, by=len(runs))
            self.runs_ended(runs)

    def events_ingested(self, count: int) -> None:
        if count:
            self.events.inc(by=count)

    def merge(self, delta: TallyDelta) -> None:
        """Add what a worker counted."""
        for fid, (counts, total) in delta.steps.items():
            self.step_seconds.merge((fid,), counts, total)
        for fid, n in delta.retries.items():
            self.retries.inc(fid, by=n)
        for (fid, status), n in delta.finished.items():
            self.finished.inc(fid, status, by=n)
        for fid, n in delta.run_retries.items():
            self.run_retries.inc(fid, by=n)
        for fid, n in delta.abandoned.items():
            self.abandoned.inc(fid, by=n)
        for fid, n in delta.abandoned_alive.items():
            alive = self._abandoned_alive.get((fid,), 0.0) + n
            self._abandoned_alive[(fid,)] = max(alive, 0.0)

    def set_backlog(self, backlog: Sequence[Backlog], at_unix: float) -> None:
        self.due.replace({(b.function_id,): b.depth for b in backlog})
        self.lag.replace({(b.function_id,): b.lag_seconds for b in backlog})
        self.probed.set(at_unix)

    def set_unserved(self, unserved: Sequence[Unserved]) -> None:
        """The leader's latest count (functions served again drop out)."""
        self._unserved = {(u.function_id,): float(u.runs) for u in unserved}

    def render(self) -> str:
        return self.registry.render()
