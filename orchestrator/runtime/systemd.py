"""systemd integration: the sd_notify(3) protocol, without libsystemd.

When systemd starts the daemon in a `Type=notify` unit, it sets `NOTIFY_SOCKET` to a Unix
datagram socket (a path, or an abstract socket written `@name`). The daemon sends newline-
separated assignments to it:

- `READY=1` once it serves (schema migrated, workers up, loop about to start);
- `STATUS=...` a one-line state that `systemctl status` shows;
- `WATCHDOG=1` from the scheduler loop, every half of `WATCHDOG_USEC` when the unit sets
  `WatchdogSec=`: a loop that hangs stops sending it, and systemd restarts the service;
- `STOPPING=1` when shutdown begins.

Without `NOTIFY_SOCKET` every call does nothing. Sending never raises: a notification that
cannot be delivered is dropped (and logged once).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, MutableMapping
from typing import Any

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def socket_address(value: str) -> str | None:
    """The address to send to: a filesystem path, or an abstract socket ('@name' becomes
    '\\0name'). None for kinds this implementation does not speak (vsock)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_seconds(environ: MutableMapping[str, str], pid: int) -> float | None:
    """The watchdog timeout systemd set for this process, in seconds (None if none)."""
    raw = environ.get("WATCHDOG_USEC", "")
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None  # meant for another process
    try:
        usec = int(raw)
    except ValueError:
        return None
    return usec / 1_000_000 if usec > 0 else None


class Notifier:
    def __init__(
        self,
        address: str | None,
        *,
        watchdog: float | None = None,
        log: Any = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.address = address
        self.pet_every = watchdog / 2 if watchdog else None
        self.log = log
        self._clock = clock
        self._sock: socket.socket | None = None
        self._next_pet = 0.0
        self._status: str | None = None
        self._warned = False

    @classmethod
    def from_environ(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = True, log: Any = None
    ) -> Notifier:
        """From `NOTIFY_SOCKET` and `WATCHDOG_USEC`/`WATCHDOG_PID`; with `unset`, removes them
        from the environment so the worker processes do not inherit them."""
        env = os.environ if environ is None else environ
        raw = env.get("NOTIFY_SOCKET", "")
        address = socket_address(raw) if raw else None
        if raw and address is None and log is not None:
            log.warning("NOTIFY_SOCKET is not a Unix socket; not notifying systemd", socket=raw)
        watchdog = watchdog_seconds(env, os.getpid()) if address else None
        if unset:
            for key in _ENV_KEYS:
                env.pop(key, None)
        return cls(address, watchdog=watchdog, log=log)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send one datagram of `KEY=value` lines; True if it was delivered to the socket."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(1.0)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            if not self._warned and self.log is not None:
                self.log.warning("could not notify systemd", error=str(exc))
            self._warned = True
            return False
        return True

    def ready(self, status: str) -> None:
        self._status = status
        self.send("READY=1", f"STATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        """Set the status line (sent only when it changes)."""
        if text != self._status:
            self._status = text
            self.send(f"STATUS={_one_line(text)}")

    def stopping(self, status: str) -> None:
        self._status = status
        self.send("STOPPING=1", f"STATUS={_one_line(status)}")

    def pet(self) -> None:
        """Tell the watchdog the loop is turning, at most every half of its timeout."""
        if self.pet_every is None:
            return
        now = self._clock()
        if now >= self._next_pet:
            self._next_pet = now + self.pet_every
            self.send("WATCHDOG=1")

    def pet_in(self) -> float | None:
        """Seconds until the watchdog wants the next `pet` (None without a watchdog)."""
        if self.pet_every is None:
            return None
        return max(0.0, self._next_pet - self._clock())

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _one_line(text: str) -> str:
    return " ".join(text.split())
