"""The daemon's own view of its health, behind /healthz and /readyz.

- **Live**: the scheduler loop is turning. It marks every pass, failed or not (a database
  outage is retried with back-off of at most 5 s, so the loop keeps turning through one). A
  loop that stopped turning (a hung pass, a deadlock) is what a restart can cure.
- **Ready**: live, serving (start-up is over, shutdown has not begun), and the database was
  reached recently: the last successful heartbeat transaction is younger than
  `heartbeat_within`. Heartbeats run on every pass that reaches the database, every
  `heartbeat_interval`; when the database is down no pass gets that far.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# Above the 10 s connect timeout: a pass blocked on a connection attempt during a network
# partition is slow, not stuck.
MIN_TICK_WITHIN = 15.0
MIN_HEARTBEAT_WITHIN = 5.0


class Health:
    def __init__(
        self,
        *,
        tick_within: float,
        heartbeat_within: float,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.tick_within = tick_within
        self.heartbeat_within = heartbeat_within
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self.phase = "starting"  # starting | serving | stopping
        self.started_unix = wall()
        self._tick: tuple[float, float] | None = None  # (monotonic, unix)
        self._heartbeat: tuple[float, float] | None = None
        self._db_error: str | None = None

    @classmethod
    def for_intervals(cls, *, poll_interval: float, heartbeat_interval: float) -> Health:
        return cls(
            tick_within=max(MIN_TICK_WITHIN, 3 * poll_interval),
            heartbeat_within=max(MIN_HEARTBEAT_WITHIN, 3 * heartbeat_interval),
        )

    # -- what the daemon reports ---------------------------------------------------------

    def ticked(self) -> None:
        """The scheduler loop turned (called once per pass, on the hot path)."""
        self._tick = (self._clock(), self._wall())

    def heartbeat_ok(self) -> None:
        with self._lock:
            self._heartbeat = (self._clock(), self._wall())
            self._db_error = None

    def database_error(self, message: str) -> None:
        with self._lock:
            self._db_error = message

    def serving(self) -> None:
        self.phase = "serving"

    def stopping(self) -> None:
        self.phase = "stopping"

    # -- what the endpoints and metrics read ---------------------------------------------

    @property
    def last_tick_unix(self) -> float:
        tick = self._tick
        return tick[1] if tick else 0.0

    @property
    def last_heartbeat_unix(self) -> float:
        with self._lock:
            return self._heartbeat[1] if self._heartbeat else 0.0

    def live(self) -> tuple[bool, str]:
        """(alive, why): the scheduler loop turned within `tick_within` seconds."""
        tick = self._tick
        if tick is None:
            return False, f"{self.phase}: the scheduler loop has not run yet"
        age = self._clock() - tick[0]
        if age > self.tick_within:
            return False, (
                f"the scheduler loop last turned {age:.1f} s ago (limit {self.tick_within:g} s)"
            )
        return True, f"{self.phase}: the scheduler loop turned {age:.1f} s ago"

    def ready(self) -> tuple[bool, str]:
        """(ready, why): live, serving, and the database reached within `heartbeat_within`."""
        if self.phase != "serving":
            return False, f"{self.phase}: not taking work"
        alive, why = self.live()
        if not alive:
            return False, why
        with self._lock:
            heartbeat, error = self._heartbeat, self._db_error
        if heartbeat is None:
            suffix = f"; last error: {error}" if error else ""
            return False, "no successful heartbeat yet" + suffix
        age = self._clock() - heartbeat[0]
        if age > self.heartbeat_within:
            reason = (
                f"database not reached: last successful heartbeat {age:.1f} s ago "
                f"(limit {self.heartbeat_within:g} s)"
            )
            return False, reason + (f"; last error: {error}" if error else "")
        return True, f"serving: last successful heartbeat {age:.1f} s ago"
