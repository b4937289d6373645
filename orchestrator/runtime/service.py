"""The one shape of the daemon's background concerns, and what ticks them.

A service has a `name`, an `interval` (seconds between ticks, or None for one driven only by
the loop's wake-ups: it is ticked on every pass), `start()`, `stop()` and `tick(now)`, `now`
being `time.monotonic()`. Starting twice or stopping a stopped service is harmless, and a
tick of a stopped service does nothing, so the daemon can start, stop and tick services in
any order while it starts up and shuts down.

`Looper` gives a service that shape: it subclasses it and writes `run(now)`. `OwnThread`
ticks itself every `interval` on a thread of its own, for a duty that must never hold up the
scheduler loop (retention). `Ticker` is what the loop calls on each pass.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Protocol


class Service(Protocol):
    name: str
    interval: float | None

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def tick(self, now: float) -> None: ...


class Looper:
    """A service whose `tick` runs `run(now)` while started (start and stop may come from any
    thread)."""

    name = "service"
    interval: float | None = None

    def __init__(self) -> None:
        self.stopped = threading.Event()
        self.stopped.set()

    @property
    def started(self) -> bool:
        return not self.stopped.is_set()

    def start(self) -> None:
        self.stopped.clear()

    def stop(self) -> None:
        self.stopped.set()

    def tick(self, now: float) -> None:
        if self.started:
            self.run(now)

    def run(self, now: float) -> None:
        raise NotImplementedError


class OwnThread(Looper):
    """A looper that ticks itself on a thread of its own, every `interval` seconds from its
    start; `stop` waits for the tick in progress, up to `timeout` seconds."""

    interval: float

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        super().start()
        self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        super().stop()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _loop(self) -> None:
        while not self.stopped.wait(self.interval):
            self.tick(time.monotonic())


class Ticker:
    """Ticks services in order: one with an interval when it is due (the first time at once),
    one without on every call. An error raised by a tick propagates and skips the services
    after it until the next call; the failed one waits for its next interval."""

    def __init__(
        self, services: Sequence[Service], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.services = list(services)
        self.clock = clock
        self.next_at = [0.0] * len(self.services)

    def tick(self, only: Collection[Service] | None = None) -> None:
        for i, service in enumerate(self.services):
            if only is not None and service not in only:
                continue
            now = self.clock()
            if service.interval is None:
                service.tick(now)
            elif now >= self.next_at[i]:
                self.next_at[i] = now + service.interval
                service.tick(now)

    def due_now(self, service: Service) -> None:
        """Tick `service` at the next call, whatever its interval says."""
        self.next_at[self.services.index(service)] = 0.0
