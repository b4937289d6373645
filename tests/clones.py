"""Test databases cloned from the migrated template ahead of need.

A clone costs about a third of a second, more than most database tests take; a thread of its
own keeps the next clones ready (and drops the used ones) while the tests run, so a test waits
for a clone only when the tests before it were quicker than the cloning. Every clone is made
from the template the same way, whether made ahead or on demand.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

import psycopg


class Clones:
    def __init__(self, server_url: str, template_name: str, *, ahead: int = 2) -> None:
        self.server_url = server_url
        self.template_name = template_name
        self._ready: queue.Queue[str] = queue.Queue(maxsize=ahead)
        self._used: queue.Queue[str] = queue.Queue()
        self._failed: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="test-clones", daemon=True)
        self._thread.start()

    def take(self, timeout: float = 120.0) -> str:
        """The name of a new database, a clone of the template nobody has used."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._failed is not None:
                raise RuntimeError(f"cloning {self.template_name} failed") from self._failed
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
        raise TimeoutError(f"no clone of {self.template_name} within {timeout}s")

    def give_back(self, name: str) -> None:
        """Drop the database (on the thread, with any connection a test left open)."""
        self._used.put(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
        with self._admin() as conn:
            for q in (self._ready, self._used):
                while not q.empty():
                    drop(conn, q.get_nowait())

    def _work(self) -> None:
        try:
            with self._admin() as conn:
                while not self._stop.is_set():
                    self._drop_used(conn)
                    self._offer(conn, clone(conn, self.template_name))
                self._drop_used(conn)
        except BaseException as exc:  # raised by the next take(), in the test's thread
            self._failed = exc

    def _offer(self, conn: psycopg.Connection[Any], name: str) -> None:
        """Queue the clone once there is room, dropping used ones meanwhile."""
        while not self._stop.is_set():
            try:
                self._ready.put(name, timeout=0.05)
                return
            except queue.Full:
                self._drop_used(conn)
        drop(conn, name)

    def _drop_used(self, conn: psycopg.Connection[Any]) -> None:
        while not self._used.empty():
            drop(conn, self._used.get_nowait())

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.server_url, autocommit=True)


def clone(conn: psycopg.Connection[Any], template_name: str) -> str:
    """A new database cloned from the template; returns its name.

    WAL_LOG (the default strategy since PostgreSQL 15) copies the small template through the
    WAL; FILE_COPY forces two checkpoints per clone, which made each clone, and the drop after
    it, several times slower on a busy machine."""
    name = f"orchestrator_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_name}" STRATEGY WAL_LOG')
    return name


def drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
