"""The generic cell rate algorithm, for throttles and rate limits.

A limit of `limit` per `period` lets one run through every `interval = period / limit`, with
`burst` of them allowed at once. Its whole state per key is one time, the theoretical arrival
time `tat`: a run may pass at `now` if `tat <= now + (burst - 1) * interval`; passing moves
`tat` to `max(tat, now) + interval`. Over any window of length `period`, at most
`limit + burst - 1` runs pass; a rate limit uses `burst = limit`, so at most `limit` do.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class Rate:
    limit: int
    period: float  # seconds
    burst: int = 1

    @property
    def interval(self) -> timedelta:
        return timedelta(seconds=self.period / self.limit)

    def allows(self, tat: datetime, now: datetime) -> bool:
        return tat <= now + (self.burst - 1) * self.interval

    def passed(self, tat: datetime, now: datetime) -> datetime:
        """The state after one run passed at `now`."""
        return max(tat, now) + self.interval

    def next_at(self, tat: datetime) -> datetime:
        """When the next run may pass."""
        return tat - (self.burst - 1) * self.interval
