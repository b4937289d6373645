"""The daemon's long-lived database session: LISTEN wake-ups and the liveness lock.

One raw psycopg connection per daemon. While it is open, the daemon's liveness advisory lock is
held, so other daemons can tell at once that a daemon whose process died is gone (its
connection closed and the lock with it).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
from psycopg.conninfo import make_conninfo

from orchestrator.db.connect import libpq_url
from orchestrator.db.daemons import DAEMON_LOCK_CLASS
from orchestrator.db.direct import Conn, driver

CHANNELS = (
    "orchestrator_events",
    "orchestrator_runs",
    "orchestrator_functions",
    "orchestrator_cancels",  # a running run was cancelled (db/runs.py CANCEL_CHANNEL)
    "orchestrator_apps",  # an Inngest SDK app synced (db/apps.py CHANNEL)
)
_KEEPALIVE = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
}


def notify_runs(conn: Conn) -> None:
    """Hint every daemon that runs became due; delivered when the transaction commits.
    `conn` may be a psycopg or an SQLAlchemy connection."""
    driver(conn).execute("SELECT pg_notify('orchestrator_runs', '')")


class Session:
    def __init__(
        self,
        url: str,
        *,
        lock_key: int,
        on_wake: Callable[[str], None],
        on_error: Callable[[Exception], None],
        application_name: str = "orchestrator-session",
    ) -> None:
        self._url = make_conninfo(libpq_url(url), **_KEEPALIVE)
        self._lock_key = lock_key
        self._on_wake = on_wake
        self._on_error = on_error
        self._app_name = application_name
        self._connected = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="orchestrator-session", daemon=True)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def _loop(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with psycopg.connect(
                    self._url,
                    autocommit=True,
                    application_name=self._app_name,
                    connect_timeout=5,
                ) as conn:
                    self._serve(conn)
                    return
            except psycopg.Error as exc:
                self._connected.clear()
                self._on_error(exc)
                self._stop.wait(delay)
                delay = min(delay * 2, 2.0)

    def _serve(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        conn.execute("SELECT pg_advisory_lock(%s, %s)", (DAEMON_LOCK_CLASS, self._lock_key))
        for channel in CHANNELS:
            conn.execute(f"LISTEN {channel}")
        self._connected.set()
        for channel in CHANNELS:  # anything that arrived while we were disconnected
            self._on_wake(channel)
        while not self._stop.is_set():
            for notify in conn.notifies(timeout=0.25, stop_after=1000):
                self._on_wake(notify.channel)
            conn.execute("SELECT 1")  # notices a dead server even when nothing is notified
        self._connected.clear()
