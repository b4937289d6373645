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

The daemon feeds all of it into prometheus_client's Counter and Gauge objects in a registry
of its own (runtime/collectors.py holds the few series that take a custom collector), and
serves it in the text format 0.0.4 or in OpenMetrics. The workers do not use
prometheus_client's multiprocess mode: their counts already ride on messages the daemon
reads, whereas that mode needs a shared directory of memory-mapped files per process, files
to clean up after each dead worker, and has no room for callback gauges or custom collectors.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import choose_encoder

import orchestrator
from orchestrator.runtime.collectors import (
    AbandonedThreads,
    DaemonRegistry,
    DueQueue,
    OpenMetricsView,
    StepDurations,
)
from orchestrator.runtime.health import Health

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
    """The `orchestrator_*` series of one daemon (see docs/metrics.md), in a registry of its
    own: several daemons may live in one process (the tests), and the process-wide default
    registry belongs to the user's app."""

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
        r = self.registry = DaemonRegistry()
        Gauge(
            "orchestrator_build_info",
            "Always 1; the orchestrator version, and the app version the daemon records in "
            "orchestrator.daemons.version.",
            ("version", "app_version"),
            registry=r,
        ).labels(orchestrator.__version__, app_version).set(1)
        _read(r, "orchestrator_daemon_up", "1 while the daemon process serves.", lambda: 1.0)
        _read(
            r,
            "orchestrator_daemon_leader",
            "1 while this daemon holds the leader lease, else 0.",
            lambda: float(leader()),
        )
        _read(
            r,
            "orchestrator_daemon_start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch.",
            lambda: health.started_unix,
        )
        _read(
            r,
            "orchestrator_daemon_last_heartbeat_timestamp_seconds",
            "When the daemon's last successful heartbeat transaction committed (Unix time; "
            "0 before the first).",
            lambda: health.last_heartbeat_unix,
        )
        _read(
            r,
            "orchestrator_daemon_last_tick_timestamp_seconds",
            "When the scheduler loop last turned (Unix time; 0 before the first pass).",
            lambda: health.last_tick_unix,
        )
        _read(
            r,
            "orchestrator_worker_threads",
            "Runs the daemon's worker processes can execute at once (workers x concurrency, "
            "plus the quarantine process's one).",
            lambda: float(threads),
        )
        _read(
            r,
            "orchestrator_runs_executing",
            "Runs handed to this daemon's worker processes and not yet given back.",
            lambda: float(executing()),
        )
        self.started = Counter(
            "orchestrator_runs_started_total",
            "Runs claimed by this daemon for their first execution.",
            ("function",),
            registry=r,
        )
        self.finished = Counter(
            "orchestrator_runs_finished_total",
            "Runs this daemon ended: executions that completed, failed or were cancelled, "
            "recoveries past the cap (failed), and requested cancellations it applied.",
            ("function", "status"),
            registry=r,
        )
        self.step_seconds = StepDurations(STEP_BUCKETS)
        r.register(self.step_seconds)
        self.retries = Counter(
            "orchestrator_step_retries_total",
            "Failed step attempts this daemon's workers scheduled to run again.",
            ("function",),
            registry=r,
        )
        self.run_retries = Counter(
            "orchestrator_run_retries_total",
            "Runs whose function raised outside any step and that this daemon's workers "
            "scheduled to run again (function-level retries).",
            ("function",),
            registry=r,
        )
        self.abandoned = Counter(
            "orchestrator_step_threads_abandoned_total",
            "Plain step bodies that outlived their step's timeout and were left to finish "
            "on their own thread (their results are dropped).",
            ("function",),
            registry=r,
        )
        self.abandoned_alive = AbandonedThreads()
        r.register(self.abandoned_alive)
        self.rescues = Counter(
            "orchestrator_runs_rescued_total",
            "Runs this daemon put back in the queue (or failed at the recovery cap) after an "
            "expired lease, a dead daemon, a worker process crash, or a worker giving up.",
            ("reason",),
            registry=r,
        )
        self.events = Counter(
            "orchestrator_events_ingested_total",
            "Events this daemon ingested (including events parked with an error).",
            registry=r,
        )
        self.due = DueQueue(leader)
        r.register(self.due)
        self._touch(function_ids)

    def _touch(self, function_ids: Sequence[str]) -> None:
        """Every registered function's series exist from the start, at zero."""
        for fid in function_ids:
            for counter in (self.started, self.retries, self.run_retries, self.abandoned):
                counter.labels(fid)
            self.abandoned_alive.add(fid, 0)
            self.step_seconds.touch(fid)
            for status in FINISHED:
                self.finished.labels(fid, status)
        for reason in RESCUES:
            self.rescues.labels(reason)

    def run_started(self, function_id: str) -> None:
        self.started.labels(function_id).inc()

    def runs_ended(self, runs: Iterable[Ended]) -> None:
        """Count the runs of a statement's result that it ended (the others were requeued)."""
        for run in runs:
            if run.status in FINISHED:
                self.finished.labels(run.function_id, run.status).inc()

    def rescued(self, reason: str, runs: Sequence[Ended]) -> None:
        if runs:
            self.rescues.labels(reason).inc(len(runs))
            self.runs_ended(runs)

    def events_ingested(self, count: int) -> None:
        if count:
            self.events.inc(count)

    def merge(self, delta: TallyDelta) -> None:
        """Add what a worker counted."""
        for fid, (counts, total) in delta.steps.items():
            self.step_seconds.merge(fid, counts, total)
        for fid, n in delta.retries.items():
            self.retries.labels(fid).inc(n)
        for (fid, status), n in delta.finished.items():
            self.finished.labels(fid, status).inc(n)
        for fid, n in delta.run_retries.items():
            self.run_retries.labels(fid).inc(n)
        for fid, n in delta.abandoned.items():
            self.abandoned.labels(fid).inc(n)
        for fid, n in delta.abandoned_alive.items():
            self.abandoned_alive.add(fid, n)

    def set_backlog(self, backlog: Sequence[Backlog], at_unix: float) -> None:
        depth = {b.function_id: float(b.depth) for b in backlog}
        lag = {b.function_id: b.lag_seconds for b in backlog}
        self.due.measured(depth, lag, at_unix)

    def set_unserved(self, unserved: Sequence[Unserved]) -> None:
        """The leader's latest count (functions served again drop out)."""
        self.due.unserved({u.function_id: float(u.runs) for u in unserved})

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """The series and their content type, in the format the `Accept` header asks for
        (prometheus_client's negotiation): OpenMetrics 1.0.0 for
        `application/openmetrics-text`, else the Prometheus text format (0.0.4, or 1.0.0 when
        asked for by version, the same text for these names)."""
        encode, content_type = choose_encoder(accept)
        if content_type.startswith("application/openmetrics-text"):
            return encode(OpenMetricsView(self.registry)), content_type
        return encode(self.registry), content_type


def _read(registry: CollectorRegistry, name: str, help: str, read: Callable[[], float]) -> None:
    """A gauge read from the daemon's memory when scraped."""
    Gauge(name, help, registry=registry).set_function(read)
