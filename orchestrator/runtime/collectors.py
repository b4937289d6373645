"""The parts of the daemon's metrics that prometheus_client's own Counter, Gauge and Histogram
cannot hold, as custom collectors, and the registry they are served from.

- `DaemonRegistry`: a `CollectorRegistry` that leaves out the `_created` series
  prometheus_client adds to every counter and histogram. The exposition stays the documented
  set of series (docs/metrics.md); every counter of a daemon starts with it, at
  `orchestrator_daemon_start_time_seconds`. It is per registry, not the library's
  process-wide switch, so the rest of the process (the user's app) keeps its own setting.
- `StepDurations`: `orchestrator_step_duration_seconds`. Workers count their step bodies into
  the buckets themselves and hand over counts and sums (metrics.StepTally); a Histogram
  takes only one observation at a time, so this collector keeps the merged counts.
- `DueQueue`: the background probe's latest measurement of the due queue and the leader's
  count of unserved runs, swapped in whole, so a scrape never sees half of a measurement
  and series of functions that dropped out disappear.
- `AbandonedThreads` and `openmetrics_families`: the gauge `orchestrator_step_threads_abandoned`
  shares its name with the family of the counter `orchestrator_step_threads_abandoned_total`
  (OpenMetrics names a counter's family without `_total`). The text format 0.0.4 tells them
  apart; OpenMetrics does not, so there the counter goes out as a family of type `unknown`
  named with its `_total`, and every series keeps its name in both formats.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

STEP_DURATION = "orchestrator_step_duration_seconds"
DUE_RUNS = "orchestrator_due_runs"
DUE_LAG = "orchestrator_due_lag_seconds"
DUE_PROBED = "orchestrator_due_probe_timestamp_seconds"
UNSERVED = "orchestrator_unserved_runs"
ABANDONED = "orchestrator_step_threads_abandoned"


class DaemonRegistry(CollectorRegistry):
    """A registry of one daemon's series, without the `_created` series."""

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            created = metric.name + "_created"
            metric.samples = [s for s in metric.samples if s.name != created]
            yield metric


class StepDurations:
    """A histogram by function, fed with bucket counts made elsewhere (`merge`)."""

    help = "Step body executions (every attempt, result encoding included), by duration."

    def __init__(self, buckets: Sequence[float]) -> None:
        self.buckets = tuple(buckets)
        self._le = [_le(b) for b in (*self.buckets, math.inf)]
        self._lock = threading.Lock()
        # per function: observations in each bucket (not cumulative; the last is +Inf), sum
        self._series: dict[str, tuple[list[int], float]] = {}

    def touch(self, function_id: str) -> None:
        """Make the series exist at zero, so that a rate over it starts at the first scrape."""
        self.merge(function_id, [0] * len(self._le), 0.0)

    def merge(self, function_id: str, counts: Sequence[int], total: float) -> None:
        """Add observations counted elsewhere: `counts[i]` fell in bucket i (the last one is
        +Inf), and their values summed to `total`."""
        if len(counts) != len(self._le):
            raise ValueError(
                f"{STEP_DURATION}: expected {len(self._le)} bucket counts, got {len(counts)}"
            )
        with self._lock:
            held, held_total = self._series.get(function_id, ([0] * len(self._le), 0.0))
            merged = [a + b for a, b in zip(held, counts, strict=True)]
            self._series[function_id] = (merged, held_total + total)

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(STEP_DURATION, self.help, labels=["function"])]

    def collect(self) -> list[Metric]:
        family = HistogramMetricFamily(STEP_DURATION, self.help, labels=["function"])
        with self._lock:
            series = list(self._series.items())
        for function_id, (counts, total) in series:
            cumulative = itertools.accumulate(counts)
            buckets = [(le, float(n)) for le, n in zip(self._le, cumulative, strict=True)]
            family.add_metric([function_id], buckets, sum_value=total)
        return [family]


@dataclass(frozen=True)
class _Backlog:
    depth: dict[str, float]
    lag: dict[str, float]
    at_unix: float


class DueQueue:
    """The due queue as last measured, and the leader's unserved runs."""

    def __init__(self, leader: Callable[[], bool]) -> None:
        self._leader = leader
        self._backlog = _Backlog({}, {}, 0.0)
        self._unserved: dict[str, float] = {}

    def measured(self, depth: dict[str, float], lag: dict[str, float], at_unix: float) -> None:
        self._backlog = _Backlog(depth, lag, at_unix)  # one reference swapped: atomic

    def unserved(self, runs: dict[str, float]) -> None:
        self._unserved = runs

    def describe(self) -> list[Metric]:
        return self._families(_Backlog({}, {}, 0.0), {})

    def collect(self) -> list[Metric]:
        return self._families(self._backlog, self._unserved if self._leader() else {})

    @staticmethod
    def _families(backlog: _Backlog, unserved: dict[str, float]) -> list[Metric]:
        return [
            _by_function(
                DUE_RUNS,
                "Runs due and waiting to be claimed, by function, counted up to the cap (10000).",
                backlog.depth,
            ),
            _by_function(
                DUE_LAG,
                "How long the oldest due run of the function has been due (0 when none is).",
                backlog.lag,
            ),
            GaugeMetricFamily(
                DUE_PROBED,
                f"When {DUE_RUNS} and {DUE_LAG} were last measured (Unix time; 0 before the "
                "first).",
                value=backlog.at_unix,
            ),
            _by_function(
                UNSERVED,
                "Due runs of functions that no running daemon serves, by function, counted up "
                "to the cap (10000). Measured by the leader only; the other daemons show no "
                "series.",
                unserved,
            ),
        ]


class AbandonedThreads:
    """Abandoned step threads still running, by function, as the workers last reported.

    It has no `describe()`, so the registry does not hold its name against the counter
    family of the same name (see `openmetrics_families`)."""

    help = (
        "Abandoned step body threads still running in this daemon's worker processes, as "
        "of the workers' latest reports."
    )

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._alive: dict[str, float] = {}

    def add(self, function_id: str, change: int) -> None:
        """Add a worker's change (never below zero: a report may outrun the one it follows)."""
        with self._lock:
            self._alive[function_id] = max(self._alive.get(function_id, 0.0) + change, 0.0)

    def collect(self) -> list[Metric]:
        with self._lock:
            alive = dict(self._alive)
        return [_by_function(ABANDONED, self.help, alive)]


class OpenMetricsView:
    """A registry's families as OpenMetrics can hold them: a counter whose family name is
    also another family's name goes out as an `unknown` family named with its `_total`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> list[Metric]:
        return openmetrics_families(self.registry.collect())


def openmetrics_families(metrics: Iterable[Metric]) -> list[Metric]:
    families = list(metrics)
    others = {m.name for m in families if m.type != "counter"}
    return [_as_unknown(m) if m.type == "counter" and m.name in others else m for m in families]


def _as_unknown(counter: Metric) -> Metric:
    total = Metric(counter.name + "_total", counter.documentation, "unknown")
    total.samples = [s for s in counter.samples if s.name == total.name]
    return total


def _le(bound: float) -> str:
    # the library's own formatting of `le`, as its Histogram writes it ("1.0", "+Inf")
    return str(floatToGoString(bound))  # type: ignore[no-untyped-call]  # untyped there


def _by_function(name: str, help: str, values: dict[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help, labels=["function"])
    for function_id, value in values.items():
        family.add_metric([function_id], value)
    return family
