"""What the progress bars of the long commands are fed: bulk replay and resume report after
each batch and stop between batches; a retention pass reports its counts after each batch;
`migrate` names the migrations it will apply and reports each as it is applied."""

from __future__ import annotations

import pytest

from orchestrator.db import functions, migrate
from orchestrator.db.database import Database
from orchestrator.recovery import BATCH, Recovery
from orchestrator.runtime.retention import Cleaner, PassResult, Policy
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(60)

RUNS = 2 * BATCH + 50  # three batches, the last one short


def failed_runs(db: Database, n: int = RUNS) -> list[str]:
    """`n` failed runs of `f`, in the order a bulk command selects them."""
    with db.transaction() as conn:
        functions.upsert(conn, "f", triggers=[], options={}, version="v1")
    rows = execute(
        db,
        "INSERT INTO orchestrator.runs (function_id, status, attempts, finished_at) "
        "SELECT 'f', 'failed', 1, now() - g * interval '1 ms' FROM generate_series(1, :n) g "
        "RETURNING id::text, finished_at",
        n=n,
    )
    return [run_id for run_id, _ in sorted(rows, key=lambda r: (r[1], r[0]))]


def count(db: Database, where: str) -> int:
    [(n,)] = execute(db, f"SELECT count(*) FROM orchestrator.runs WHERE {where}")
    return int(n)


def test_resume_many__reports_after_each_batch(db: Database) -> None:
    ids = failed_runs(db)
    reports: list[tuple[int, int]] = []

    outcome = Recovery(db).resume_many(
        ids, progress=lambda done, total: reports.append((done, total))
    )

    assert reports == [(BATCH, RUNS), (2 * BATCH, RUNS), (RUNS, RUNS)]
    assert (len(outcome.done), outcome.reached, outcome.stopped) == (RUNS, RUNS, False)
    assert count(db, "status = 'queued'") == RUNS


def test_resume_many__told_to_stop__stops_between_batches_and_leaves_the_rest(
    db: Database,
) -> None:
    ids = failed_runs(db)
    reports: list[int] = []

    outcome = Recovery(db).resume_many(
        ids,
        progress=lambda done, total: reports.append(done),
        keep_going=lambda: not reports,  # as Ctrl-C during the first batch
    )

    assert reports == [BATCH]
    assert (outcome.stopped, outcome.reached, len(outcome.done)) == (True, BATCH, BATCH)
    assert sorted(outcome.done) == sorted(ids[:BATCH])
    assert count(db, "status = 'queued'") == BATCH
    assert count(db, "status = 'failed'") == RUNS - BATCH  # the runs not reached are untouched


def test_replay_many__told_to_stop__made_exactly_the_batches_it_reports(db: Database) -> None:
    ids = failed_runs(db)
    reports: list[int] = []

    outcome = Recovery(db).replay_many(
        ids, progress=lambda done, total: reports.append(done), keep_going=lambda: len(reports) < 2
    )

    assert reports == [BATCH, 2 * BATCH]
    assert (outcome.stopped, outcome.reached, len(outcome.done)) == (True, 2 * BATCH, 2 * BATCH)
    origins = execute(
        db, "SELECT origin_run_id::text FROM orchestrator.runs WHERE origin = 'replay'"
    )
    assert sorted(o for (o,) in origins) == sorted(ids[: 2 * BATCH])  # the first two batches


def test_cleaner__on_batch__counts_grow_to_what_was_deleted(db: Database, db_url: str) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.runs (function_id, status, created_at, finished_at) "
        "SELECT 'old', 'completed', now() - interval '10 days' + g * interval '1 ms', "
        "       now() - interval '10 days' + g * interval '1 ms' "
        "FROM generate_series(1, 25) g",
    )
    seen: list[int] = []

    def on_batch(result: PassResult) -> None:
        seen.append(result.completed + result.failed + result.events + result.daemons)

    policy = Policy(completed=86400.0, failed=None, events=None, batch_size=10)
    result = Cleaner(db_url, policy, pause=lambda s: None, on_batch=on_batch).run_pass()

    assert seen[:3] == [10, 20, 25]  # then the daemons' batch, which finds none
    assert seen == sorted(seen) and seen[-1] == result.completed == 25
    assert len(seen) == result.batches
    assert count(db, "function_id = 'old'") == 0


def test_migrate__pending_names_each_migration__on_step_reports_them_in_order(
    empty_database: str,
) -> None:
    db = Database(empty_database, pool_size=1)
    try:
        todo = migrate.pending(db.engine)
        applied: list[str] = []

        migrate.upgrade(db.engine, on_step=applied.append)

        assert todo[0] == "0001_initial" and len(todo) >= 17
        assert applied == [name.split("_")[0] for name in todo]
        assert applied[-1] == migrate.head_revision()
        assert migrate.pending(db.engine) == []
        migrate.upgrade(db.engine, on_step=applied.append)  # at head: nothing to report
        assert len(applied) == len(todo)
    finally:
        db.dispose()
