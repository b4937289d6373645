"""Shared fixtures: a real Postgres (ORCHESTRATOR_TEST_DATABASE_URL or the embedded server),
a migrated template database, and a fresh database cloned from it for each test (cloned ahead
of need, orchestrator/db/clones.py, which orchestrator.testing uses too)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.db import clones
from orchestrator.db.connect import embedded_url, libpq_url
from orchestrator.db.database import Database

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


with_database = clones.with_database
admin = clones.admin


def eventually(
    check: Callable[[], T], *, timeout: float = 20.0, interval: float = 0.05, what: str = ""
) -> T:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout}s waiting for {what or check}: last value {last!r}")


@pytest.fixture(scope="session")
def server_url() -> str:
    url = os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    if url:
        return libpq_url(url)
    return embedded_url(str(ROOT / ".orchestrator" / "test-pgdata"))


@pytest.fixture(scope="session")
def template_name(server_url: str) -> str:
    """A database migrated to head, cloned by every test (made once per schema version)."""
    return clones.ensure_template(server_url)


def clone_template(server_url: str, template_name: str) -> str:
    """A new database cloned from the template, made now; returns its name."""
    with admin(server_url) as conn:
        return clones.clone(conn, template_name)


def drop_database(server_url: str, name: str) -> None:
    with admin(server_url) as conn:
        clones.drop(conn, name)


@pytest.fixture(scope="session")
def clone_pool(server_url: str, template_name: str) -> Iterator[clones.Clones]:
    pool = clones.Clones(server_url, template_name)
    yield pool
    pool.close()


@pytest.fixture
def db_url(server_url: str, clone_pool: clones.Clones) -> Iterator[str]:
    name = clone_pool.take()
    yield with_database(server_url, name)
    clone_pool.give_back(name)


@pytest.fixture
def empty_database(server_url: str) -> Iterator[str]:
    """A new, empty database with a name of its own (so nothing left over from an earlier
    run can be connected to it); dropped afterwards, with any connection still open."""
    name = f"orchestrator_test_empty_{uuid.uuid4().hex[:12]}"
    with admin(server_url) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield with_database(server_url, name)
    with admin(server_url) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(db_url: str) -> Iterator[Database]:
    database = Database(db_url, pool_size=4)
    yield database
    database.dispose()
