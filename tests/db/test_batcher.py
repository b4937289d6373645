"""The batcher under the loader and the waiter (engine/batcher.py): concurrent requests are
served together, and no error, bad request or abandoned caller stops it or leaves a caller
waiting."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.batcher import Batcher

pytestmark = pytest.mark.timeout(60)


class Doubler:
    """Serves numbers doubled, in one round trip per batch; a negative number is a bad
    request. Holds its first batch until `release` is set."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.held = threading.Event()
        self.release = threading.Event()

    def __call__(self, conn: Any, numbers: list[int]) -> list[int]:
        self.batches.append(numbers)
        if len(self.batches) == 1:
            self.held.set()
            assert self.release.wait(20)
        if any(n < 0 for n in numbers):
            raise ValueError(f"bad request in {numbers}")
        row = conn.execute("SELECT array_agg(n * 2) FROM unnest(%s::int[]) AS n", (numbers,))
        return list(row.fetchone()[0])


@pytest.fixture
def direct(db: Database) -> Iterator[Direct]:
    made = Direct(db.url, application_name="test-batcher")
    yield made
    made.close()


@pytest.mark.parametrize("isolate", [True, False])
def test_batcher__a_bad_request_fails_alone_only_when_isolated(
    direct: Direct, isolate: bool
) -> None:
    doubler = Doubler()
    batcher = Batcher(direct, doubler, name="test", retry_for=0.0, isolate=isolate)
    first = batcher.submit(1)
    assert doubler.held.wait(10)
    good, bad, other = batcher.submit(2), batcher.submit(-1), batcher.submit(3)
    doubler.release.set()

    assert first.result(10) == 2
    with pytest.raises(ValueError, match="bad request"):
        bad.result(10)
    if isolate:
        assert (good.result(10), other.result(10)) == (4, 6)
        assert doubler.batches == [[1], [2, -1, 3], [2], [-1], [3]]
    else:
        for failed in (good, other):
            with pytest.raises(ValueError, match="bad request"):
                failed.result(10)
        assert doubler.batches == [[1], [2, -1, 3]]
    assert batcher.submit(5).result(10) == 10  # it serves on


def test_batcher__a_request_its_caller_cancelled_stops_nothing(direct: Direct) -> None:
    doubler = Doubler()
    batcher = Batcher(direct, doubler, name="test", retry_for=0.0)
    first = batcher.submit(1)
    assert doubler.held.wait(10)
    abandoned, kept = batcher.submit(2), batcher.submit(3)
    assert abandoned.cancel()
    doubler.release.set()

    assert (first.result(10), kept.result(10)) == (2, 6)
    assert batcher.submit(4).result(10) == 8


def test_batcher__requests_with_one_key_go_to_separate_batches(direct: Direct) -> None:
    doubler = Doubler()
    batcher = Batcher(direct, doubler, name="test", retry_for=0.0, key=lambda n: n % 10)
    first = batcher.submit(0)
    assert doubler.held.wait(10)
    later = [batcher.submit(n) for n in (1, 11, 2, 21, 12)]
    doubler.release.set()

    assert first.result(10) == 0
    assert [f.result(10) for f in later] == [2, 22, 4, 42, 24]
    assert doubler.batches == [[0], [1, 2], [11, 12], [21]]
