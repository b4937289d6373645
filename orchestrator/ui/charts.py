"""The geometry of the dashboard's two charts, computed on the server.

The CSP allows no inline style, so nothing is positioned by a `style` attribute: a chart is an
inline SVG whose `<rect>` coordinates (attributes, not styles) are computed here in a fixed
`viewBox` that the SVG stretches to its box (`preserveAspectRatio="none"`).

- `gantt(bars)`: the run detail's timeline, one row per label (a step, or the run's own
  queued/running phases) and one rect per attempt or phase, across 0..1000 units of the
  run's whole span.
- `throughput(per_minute)`: completions per minute as bars.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

WIDTH = 1000.0  # the Gantt's viewBox width
MIN_BAR = 2.0  # a bar narrower than this (an instant step) is drawn this wide, to be seen
KINDS = ("queued", "running", "sleeping", "waiting", "retrying", "failed", "completed")


class Bar(Protocol):
    @property
    def label(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def start(self) -> datetime: ...
    @property
    def end(self) -> datetime | None: ...
    @property
    def note(self) -> str: ...


@dataclass(frozen=True)
class Rect:
    kind: str
    x: float
    w: float
    ms: float
    open: bool  # still going: drawn up to now
    note: str = ""


@dataclass
class GanttRow:
    label: str
    bars: list[Rect] = field(default_factory=list)
    ms: float = 0.0


@dataclass(frozen=True)
class Gantt:
    rows: list[GanttRow]
    kinds: list[str]  # the kinds present, for the legend
    start: datetime | None
    end: datetime | None
    span_ms: float


def gantt(bars: Sequence[Bar], now: datetime | None = None) -> Gantt:
    """Rows in the order their labels first appear; x and width in 0..WIDTH."""
    if not bars:
        return Gantt([], [], None, None, 0.0)
    now = now or datetime.now(UTC)
    t0 = min(b.start for b in bars)
    t1 = max(max(b.end or now, b.start) for b in bars)
    span = max((t1 - t0).total_seconds(), 1e-3)
    rows: dict[str, GanttRow] = {}
    for b in bars:
        end = max(b.end or now, b.start)
        x = (b.start - t0).total_seconds() / span * WIDTH
        w = max((end - b.start).total_seconds() / span * WIDTH, MIN_BAR)
        ms = (end - b.start).total_seconds() * 1000
        row = rows.setdefault(b.label, GanttRow(b.label))
        x = round(min(x, WIDTH - MIN_BAR), 2)
        row.bars.append(Rect(b.kind, x, round(w, 2), ms, b.end is None, b.note))
        row.ms += ms
    kinds = [k for k in KINDS if any(b.kind == k for b in bars)]
    kinds += sorted({b.kind for b in bars} - set(KINDS))
    return Gantt(list(rows.values()), kinds, t0, t1, span * 1000)


@dataclass(frozen=True)
class Column:
    x: float
    y: float
    w: float
    h: float
    n: int
    label: str


@dataclass(frozen=True)
class Chart:
    bars: list[Column]
    width: int
    height: int
    peak: int
    first: str
    last: str


def throughput(per_minute: Sequence[tuple[datetime, int]], *, width: int = 600) -> Chart:
    """One column per minute, scaled to the busiest minute; an empty minute has no column."""
    height = 120
    peak = max((n for _, n in per_minute), default=0)
    step = width / max(len(per_minute), 1)
    columns = []
    for i, (minute, n) in enumerate(per_minute):
        h = n / peak * (height - 4) if peak else 0.0
        if n:
            columns.append(
                Column(
                    round(i * step + 0.5, 2),
                    round(height - h, 2),
                    round(max(step - 1, 0.5), 2),
                    round(h, 2),
                    n,
                    minute.strftime("%H:%M"),
                )
            )
    first = per_minute[0][0].strftime("%H:%M UTC") if per_minute else ""
    last = per_minute[-1][0].strftime("%H:%M UTC") if per_minute else ""
    return Chart(columns, width, height, peak, first, last)
