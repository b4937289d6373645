"""A small Prometheus registry and its text exposition format (version 0.0.4).

Counters, gauges and histograms, each a family of series told apart by label values. Every
family takes its own lock, so the threads that count (the scheduler loop, the pool's
supervisor) and the threads that render (HTTP requests) never wait long on each other. A gauge
may instead be read through a callback at render time, for values the daemon already keeps.

    registry = Registry()
    started = registry.counter("jobs_started_total", "Jobs started.", ("queue",))
    started.inc("default")
    registry.render()   # '# HELP jobs_started_total Jobs started.\\n# TYPE ...'
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[str, ...]
Reading = float | Mapping[Labels, float]

_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")


class _Family:
    kind = "untyped"
    reserved: tuple[str, ...] = ()

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.fullmatch(name):
            raise ValueError(f"metric name {name!r} is invalid; use [a-zA-Z_:][a-zA-Z0-9_:]*")
        for label in labels:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"label name {label!r} of {name} is invalid")
            if label in self.reserved:
                raise ValueError(f"label name {label!r} is reserved in a {self.kind}")
        if len(set(labels)) != len(labels):
            raise ValueError(f"label names of {name} repeat: {labels!r}")
        self.name = name
        self.help = help
        self.labels = tuple(labels)
        self._lock = threading.Lock()

    def _key(self, values: Sequence[str]) -> Labels:
        if len(values) != len(self.labels):
            raise ValueError(
                f"{self.name} takes {len(self.labels)} label values {self.labels!r}, "
                f"got {len(values)}"
            )
        return tuple(str(v) for v in values)

    def samples(self) -> list[tuple[str, Labels, tuple[str, ...], float]]:
        """(name suffix, label names, label values, value) for each sample line."""
        raise NotImplementedError

    def render(self) -> str:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        for suffix, names, values, value in self.samples():
            lines.append(f"{self.name}{suffix}{_labels(names, values)} {_number(value)}")
        return "\n".join(lines) + "\n"


class Counter(_Family):
    """A count that only goes up (it restarts at zero with the process)."""

    kind = "counter"

    def __init__(self, name: str, help: str, labels: Sequence[str] = ()) -> None:
        super().__init__(name, help, labels)
        self._values: dict[Labels, float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        if by < 0:
            raise ValueError(f"{self.name}: a counter cannot go down (by={by!r})")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + by

    def touch(self, *labels: str) -> None:
        """Make the series exist at zero, so that a rate over it starts at the first scrape."""
        self.inc(*labels, by=0.0)

    def value(self, *labels: str) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def samples(self) -> list[tuple[str, Labels, tuple[str, ...], float]]:
        with self._lock:
            items = sorted(self._values.items())
        return [("", self.labels, key, value) for key, value in items]


class Gauge(_Family):
    """A value that goes up and down: set directly, or read from `read` at render time
    (a number for a gauge without labels, else a mapping of label values to numbers)."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        read: Callable[[], Reading] | None = None,
    ) -> None:
        super().__init__(name, help, labels)
        self._values: dict[Labels, float] = {}
        self._read = read

    def set(self, value: float, *labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def replace(self, values: Mapping[Labels, float]) -> None:
        """Swap in a whole new set of series (series not in `values` disappear)."""
        fresh = {self._key(key): float(value) for key, value in values.items()}
        with self._lock:
            self._values = fresh

    def value(self, *labels: str) -> float | None:
        key = self._key(labels)
        return dict(self._current()).get(key)

    def _current(self) -> Iterable[tuple[Labels, float]]:
        if self._read is None:
            with self._lock:
                return list(self._values.items())
        reading = self._read()
        if isinstance(reading, Mapping):
            return [(self._key(key), float(value)) for key, value in reading.items()]
        return [(self._key(()), float(reading))]

    def samples(self) -> list[tuple[str, Labels, tuple[str, ...], float]]:
        return [("", self.labels, key, value) for key, value in sorted(self._current())]


class Histogram(_Family):
    """Observations counted into buckets by upper bound, with their sum and count.

    Observations may also arrive pre-counted (`merge`): a worker process counts its own into
    the same buckets and hands the daemon the counts, so no message is sent per observation.
    """

    kind = "histogram"
    reserved = ("le",)

    def __init__(
        self, name: str, help: str, labels: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> None:
        super().__init__(name, help, labels)
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty: {buckets!r}")
        self.buckets = tuple(bounds)
        # per series: [count in each bucket (not cumulative), the last one being +Inf], sum
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def bucket_of(self, value: float) -> int:
        """The index of the bucket `value` falls in (len(buckets) for +Inf)."""
        return bisect.bisect_left(self.buckets, value)

    def observe(self, value: float, *labels: str) -> None:
        counts = [0] * (len(self.buckets) + 1)
        counts[self.bucket_of(value)] = 1
        self.merge(labels, counts, value)

    def touch(self, *labels: str) -> None:
        self.merge(labels, [0] * (len(self.buckets) + 1), 0.0)

    def merge(self, labels: Sequence[str], counts: Sequence[int], total: float) -> None:
        """Add observations counted elsewhere into the same buckets: `counts[i]` fell in
        bucket i (not cumulative; the last is +Inf), and their values summed to `total`."""
        if len(counts) != len(self.buckets) + 1:
            raise ValueError(
                f"{self.name}: expected {len(self.buckets) + 1} bucket counts, got {len(counts)}"
            )
        key = self._key(labels)
        with self._lock:
            series = self._series.get(key)
            if series is None:
                series = self._series[key] = ([0] * len(counts), [0.0])
            for i, n in enumerate(counts):
                series[0][i] += n
            series[1][0] += total

    def count(self, *labels: str) -> int:
        key = self._key(labels)
        with self._lock:
            series = self._series.get(key)
            return sum(series[0]) if series else 0

    def samples(self) -> list[tuple[str, Labels, tuple[str, ...], float]]:
        with self._lock:
            items = sorted((key, (list(c), s[0])) for key, (c, s) in self._series.items())
        names = (*self.labels, "le")
        out: list[tuple[str, Labels, tuple[str, ...], float]] = []
        for key, (counts, total) in items:
            running = 0
            for bound, n in zip((*self.buckets, math.inf), counts, strict=True):
                running += n
                out.append(("_bucket", names, (*key, _number(bound)), running))
            out.append(("_sum", self.labels, key, total))
            out.append(("_count", self.labels, key, running))
        return out


F = TypeVar("F", bound=_Family)


class Registry:
    """The families a process exposes, rendered in the order they were made."""

    def __init__(self) -> None:
        self._families: dict[str, _Family] = {}
        self._lock = threading.Lock()

    def counter(self, name: str, help: str, labels: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labels))

    def gauge(
        self,
        name: str,
        help: str,
        labels: Sequence[str] = (),
        *,
        read: Callable[[], Reading] | None = None,
    ) -> Gauge:
        return self._add(Gauge(name, help, labels, read=read))

    def histogram(
        self, name: str, help: str, labels: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> Histogram:
        return self._add(Histogram(name, help, labels, buckets=buckets))

    def _add(self, family: F) -> F:
        with self._lock:
            if family.name in self._families:
                raise ValueError(f"metric {family.name} is already registered")
            self._families[family.name] = family
        return family

    def render(self) -> str:
        with self._lock:
            families = list(self._families.values())
        return "".join(family.render() for family in families)


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{_escape_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"
