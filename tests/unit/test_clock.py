"""The virtual clock of the process (db/clock.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest

from orchestrator.db import clock

pytestmark = pytest.mark.timeout(30)

AT = datetime(2031, 3, 4, 2, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def real_clock() -> Iterator[None]:
    clock.reset()
    yield
    clock.reset()


def test_clock__none_by_default_so_statements_use_the_database_clock() -> None:
    assert clock.current() is None
    assert clock.pick(None) is None
    assert clock.pick(AT) == AT


def test_clock__set_advance_reset() -> None:
    assert clock.set(AT) == AT
    assert clock.current() == AT
    assert clock.advance(timedelta(hours=1)) == AT + timedelta(hours=1)
    assert clock.pick(None) == AT + timedelta(hours=1)
    assert clock.pick(AT) == AT  # an explicit time wins
    clock.reset()
    assert clock.current() is None


def test_clock__naive_means_utc_and_other_zones_keep_their_instant() -> None:
    assert clock.set(datetime(2031, 3, 4, 2, 0)) == AT
    plus_two = timezone(timedelta(hours=2))
    clock.set(datetime(2031, 3, 4, 4, 0, tzinfo=plus_two))
    assert clock.current() == AT


def test_clock__advance_without_a_time_starts_from_the_real_one() -> None:
    before = datetime.now(UTC)
    moved = clock.advance(timedelta(days=1))
    assert before + timedelta(days=1) <= moved <= datetime.now(UTC) + timedelta(days=1)


def test_clock__advances_from_many_threads_all_count() -> None:
    clock.set(AT)

    def advance() -> None:
        for _ in range(1000):
            clock.advance(timedelta(microseconds=1))

    threads = [threading.Thread(target=advance) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.current() == AT + timedelta(microseconds=8000)
