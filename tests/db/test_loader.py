"""The loader of resumed runs' memos (engine/loader.py): concurrent loads share a statement,
each caller gets its own run's steps, and an error fails every load of its batch."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import psycopg
import pytest

from orchestrator.db import steps
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.engine.loader import Memo, StepLoader
from orchestrator.engine.store import RunStore
from tests.conftest import eventually
from tests.db.helpers import execute, queue_runs

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def loader(db: Database) -> Iterator[StepLoader]:
    made = StepLoader(Direct(db.url, application_name="test-loader"), retry_for=0.0)
    yield made
    made.close()


def record_steps(db: Database, run_id: str, n: int) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, output) "
        "SELECT CAST(:r AS uuid), 's' || i, i, 'run', 'completed', to_jsonb(i) "
        "FROM generate_series(0, :n - 1) AS i",
        r=run_id,
        n=n,
    )


class Batches:
    """Counts the batches a loader serves, and holds the first one until `release`."""

    def __init__(self, loader: StepLoader) -> None:
        self.sizes: list[int] = []
        self.held = threading.Event()
        self.released = threading.Event()
        serve = loader.batcher.serve

        def counted(conn: Any, run_ids: list[str]) -> list[Memo]:
            self.sizes.append(len(run_ids))
            if len(self.sizes) == 1:
                self.held.set()
                assert self.released.wait(20)
            return serve(conn, run_ids)

        loader.batcher.serve = counted

    def release(self) -> None:
        self.released.set()


def test_load__concurrent_loads_are_one_statement_each_gets_its_own_steps(
    db: Database, loader: StepLoader
) -> None:
    first, *others = queue_runs(db, 6)
    for n, run_id in enumerate(others, start=1):
        record_steps(db, run_id, n)
    batches = Batches(loader)
    held = loader.load(first)
    assert batches.held.wait(10)
    loading = {run_id: loader.load(run_id) for run_id in others}  # while the first is served
    batches.release()

    assert held.result(10) == {}
    assert batches.sizes == [1, len(others)]
    with db.transaction() as conn:
        for run_id, memo in loading.items():
            expected = steps.load(conn, run_id)  # what a run's own query reads
            assert memo.result(10) == {row.step_id: row for row in expected}
            assert {row.run_id for row in memo.result().values()} == {run_id}


def test_load__a_run_without_steps_gets_an_empty_memo(db: Database, loader: StepLoader) -> None:
    bare, recorded = queue_runs(db, 2)
    record_steps(db, recorded, 2)
    assert loader.load(bare).result(10) == {}
    assert sorted(loader.load(recorded).result(10)) == ["s0", "s1"]


def test_load__an_error_fails_every_load_of_its_batch(db: Database, loader: StepLoader) -> None:
    first, good = queue_runs(db, 2)
    record_steps(db, good, 1)
    batches = Batches(loader)
    held = loader.load(first)
    assert batches.held.wait(10)
    failing: list[Future[Memo]] = [loader.load(good), loader.load("not-a-run-id")]
    batches.release()

    assert held.result(10) == {}
    for load in failing:
        with pytest.raises(psycopg.errors.InvalidTextRepresentation):
            load.result(10)
    assert batches.sizes == [1, 2]
    assert loader.load(good).result(10).keys() == {"s0"}  # the loader serves on


def test_store_load__reads_through_the_loader_what_it_read_before(db: Database) -> None:
    store = RunStore(db, retry_for=5.0)
    try:
        [run_id] = queue_runs(db, 1)
        record_steps(db, run_id, 3)
        with db.transaction() as conn:
            expected = {row.step_id: row for row in steps.load(conn, run_id)}
        assert store.load(run_id) == expected
        loaders = eventually(
            lambda: execute(
                db,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :n "
                "AND datname = current_database()",
                n=f"{db.application_name}-load",
            )[0][0],
            what="the store's loader connection",
        )
        assert loaders == 1
    finally:
        store.close()
