"""Databases for tests: a migrated template per schema version, and fresh clones of it made
ahead of need (`orchestrator.testing`, and this project's own suite).

The template is made once per server and schema: its name carries the head revision and a
digest of the migration files, so a changed migration makes a new one. It is built under a
name of its own and renamed into place, so processes that race to make it (pytest-xdist
workers) never see a half-migrated template; the loser drops its copy.

A clone costs about 80 ms on a quiet machine and several times that under load, more than most
tests take; a thread of its own keeps the next clones ready while the tests run, so a test
waits for a clone only when the tests before it were quicker than the cloning. Another thread
drops the used ones: a DROP DATABASE waits for a checkpoint of the whole server (PostgreSQL 15
waits on CheckpointStart and CheckpointDone there), seconds on a busy server, and must not hold
up the next clone.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import time
import uuid
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from orchestrator.db import migrate
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database

TEMPLATE_PREFIX = "orchestrator_template_"
CLONE_PREFIX = "orchestrator_test_"


def with_database(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    return libpq_url(make_url(url).set(database=name).render_as_string(hide_password=False))


def admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_url(server_url), autocommit=True)


def template_name() -> str:
    """The template's name for this code's schema: head revision and migrations' digest."""
    digest = hashlib.sha256()
    for path in sorted(migrate.migrations_dir().rglob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return f"{TEMPLATE_PREFIX}{migrate.head_revision()}_{digest.hexdigest()[:10]}"


def ensure_template(server_url: str) -> str:
    """Make the migrated template on this server unless it exists; returns its name."""
    name = template_name()
    with admin(server_url) as conn:
        if _exists(conn, name):
            return name
        building = f"{TEMPLATE_PREFIX}building_{uuid.uuid4().hex[:12]}"
        conn.execute(f'CREATE DATABASE "{building}"')
    try:
        db = Database(with_database(server_url, building), pool_size=1)
        try:
            migrate.upgrade(db.engine)
        finally:
            db.dispose()
        with admin(server_url) as conn:
            if not _exists(conn, name):
                try:
                    conn.execute(f'ALTER DATABASE "{building}" RENAME TO "{name}"')
                    return name
                except psycopg.errors.DuplicateDatabase:
                    pass  # another process renamed its copy first
    except BaseException:
        with admin(server_url) as conn:
            drop(conn, building)
        raise
    with admin(server_url) as conn:
        drop(conn, building)
    return name


def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return row is not None


def clone(conn: psycopg.Connection[Any], template: str) -> str:
    """A new database cloned from the template; returns its name.

    WAL_LOG (the default strategy since PostgreSQL 15) copies the small template through the
    WAL; FILE_COPY forces two checkpoints per clone, which made each clone, and the drop after
    it, several times slower on a busy machine."""
    name = f"{CLONE_PREFIX}{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY WAL_LOG')
    return name


def drop(conn: psycopg.Connection[Any], name: str) -> None:
    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Clones:
    """Clones of `template` on `server_url`, `ahead` of them kept ready by a thread."""

    def __init__(self, server_url: str, template: str, *, ahead: int = 2) -> None:
        self.server_url = server_url
        self.template = template
        self._ready: queue.Queue[str] = queue.Queue(maxsize=ahead)
        self._used: queue.Queue[str] = queue.Queue()
        self._failed: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, name="test-clones", daemon=True)
        self._dropper = threading.Thread(target=self._drop_used, name="test-drops", daemon=True)
        self._thread.start()
        self._dropper.start()

    def take(self, timeout: float = 120.0) -> str:
        """The name of a new database, a clone of the template nobody has used."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._failed is not None:
                raise RuntimeError(f"cloning {self.template} failed") from self._failed
            try:
                return self._ready.get(timeout=0.1)
            except queue.Empty:
                continue
        raise TimeoutError(f"no clone of {self.template} within {timeout}s")

    def give_back(self, name: str) -> None:
        """Drop the database (on the thread, with any connection a test left open)."""
        self._used.put(name)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(60)
        self._dropper.join(60)
        with admin(self.server_url) as conn:
            for q in (self._ready, self._used):
                while not q.empty():
                    drop(conn, q.get_nowait())

    def _work(self) -> None:
        try:
            with admin(self.server_url) as conn:
                while not self._stop.is_set():
                    self._offer(conn, clone(conn, self.template))
        except BaseException as exc:  # raised by the next take(), in the test's thread
            self._failed = exc

    def _offer(self, conn: psycopg.Connection[Any], name: str) -> None:
        """Queue the clone once there is room."""
        while not self._stop.is_set():
            try:
                self._ready.put(name, timeout=0.05)
                return
            except queue.Full:
                continue
        drop(conn, name)

    def _drop_used(self) -> None:
        try:
            with admin(self.server_url) as conn:
                while not self._stop.is_set():
                    try:
                        drop(conn, self._used.get(timeout=0.05))
                    except queue.Empty:
                        continue
        except BaseException as exc:
            self._failed = exc
