"""Retention statements (db/retention.py), one batch at a time, with time pinned by `now`;
then a whole paced pass (runtime/retention.py), and the daemon's retention thread."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from orchestrator.db import retention
from orchestrator.db.database import Database
from orchestrator.runtime.retention import Cleaner, Policy, Retention
from tests.conftest import eventually
from tests.db.helpers import execute

pytestmark = pytest.mark.timeout(60)

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)
DAY = 86400.0
WEEK, MONTH = 7 * DAY, 30 * DAY


def days_ago(days: float) -> datetime:
    return NOW - timedelta(days=days)


def add_run(
    db: Database,
    status: str,
    *,
    created: float,
    finished: float | None = None,
    steps: int = 2,
    parent: str | None = None,
    origin: str | None = None,
    event_id: str | None = None,
) -> str:
    """A run created `created` days before NOW, finished `finished` days before NOW (default:
    a minute after its creation if its status is final), with `steps` completed steps."""
    run_id = str(uuid.uuid4())
    final = status in ("completed", "skipped", "failed", "cancelled")
    if finished is None and final:
        finished = created - 1 / 1440
    execute(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status, created_at, finished_at, "
        "parent_run_id, origin_run_id, event_id) VALUES (CAST(:i AS uuid), 'f', :s, :c, :fin, "
        "CAST(:p AS uuid), CAST(:o AS uuid), :e)",
        i=run_id,
        s=status,
        c=days_ago(created),
        fin=None if finished is None else days_ago(finished),
        p=parent,
        o=origin,
        e=event_id,
    )
    for n in range(steps):
        execute(
            db,
            "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) "
            "VALUES (CAST(:i AS uuid), :s, :n, 'run', 'completed')",
            i=run_id,
            s=f"s{n}",
            n=n,
        )
    return run_id


def add_wait(db: Database, run_id: str) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, since) "
        "VALUES (CAST(:i AS uuid), '#cancel/0', 'cancel', 'x', :t)",
        i=run_id,
        t=NOW,
    )


def run_ids(db: Database) -> set[str]:
    return {row[0] for row in execute(db, "SELECT id::text FROM orchestrator.runs")}


def count(db: Database, table: str) -> int:
    return int(execute(db, f"SELECT count(*) FROM orchestrator.{table}")[0][0])


def delete_runs(
    db: Database,
    *,
    completed: float | None = WEEK,
    failed: float | None = MONTH,
    after: retention.RunCursor | None = None,
    limit: int = 100,
) -> retention.RunBatch:
    with db.transaction() as conn:
        return retention.delete_runs(
            conn, completed_age=completed, failed_age=failed, after=after, limit=limit, now=NOW
        )


def delete_all_runs(db: Database, **kwargs: Any) -> list[retention.RunBatch]:
    batches = [delete_runs(db, **kwargs)]
    while not batches[-1].exhausted:
        batches.append(delete_runs(db, after=batches[-1].cursor, **kwargs))
    return batches


# -- runs ---------------------------------------------------------------------------------------


def test_delete_runs__old_finished_runs_go_with_their_steps_and_waits(db: Database) -> None:
    gone = [
        add_run(db, "completed", created=8),
        add_run(db, "skipped", created=9, steps=0),
        add_run(db, "failed", created=31),
        add_run(db, "cancelled", created=40),
    ]
    add_wait(db, gone[3])
    kept = {
        add_run(db, "completed", created=6),  # younger than retain_completed
        add_run(db, "failed", created=10),  # younger than retain_failed
        add_run(db, "cancelled", created=29),
        add_run(db, "completed", created=20, finished=1),  # created long ago, finished lately
    }

    [batch] = delete_all_runs(db)

    assert run_ids(db) == kept
    assert (batch.completed, batch.failed, batch.steps, batch.waits) == (2, 2, 6, 1)
    assert batch.scanned == 7  # every run created before the later cutoff is read
    assert count(db, "steps") == 2 * len(kept)
    assert count(db, "waits") == 0


def test_delete_runs__active_runs_are_kept_however_old(db: Database) -> None:
    active = {add_run(db, s, created=365) for s in ("queued", "running", "sleeping", "waiting")}
    for run_id in active:
        add_wait(db, run_id)

    [batch] = delete_all_runs(db)

    assert batch.runs == 0 and batch.scanned == 4
    assert run_ids(db) == active
    assert count(db, "steps") == 8 and count(db, "waits") == 4


def test_delete_runs__runs_an_active_run_refers_to_are_kept(db: Database) -> None:
    invoker = add_run(db, "completed", created=60)
    add_run(db, "running", created=1, parent=invoker)  # its active child
    handler_of = add_run(db, "failed", created=60)
    add_run(db, "queued", created=1, parent=handler_of)  # an on_failure handler not yet run
    replayed = add_run(db, "failed", created=60)
    add_run(db, "waiting", created=1, origin=replayed)  # an active replay of it
    waiting_parent = add_run(db, "waiting", created=60)
    child = add_run(db, "completed", created=59, parent=waiting_parent)
    # the same references from finished runs keep nothing
    done_parent = add_run(db, "completed", created=60)
    add_run(db, "completed", created=59, parent=done_parent)
    done_origin = add_run(db, "cancelled", created=60)
    add_run(db, "completed", created=59, origin=done_origin)

    delete_all_runs(db)

    left = run_ids(db)
    assert {invoker, handler_of, replayed, waiting_parent, child} <= left
    assert not {done_parent, done_origin} & left
    assert len(left) == 8  # the five above and the three active runs


def test_delete_runs__an_age_of_none_keeps_that_class_forever(db: Database) -> None:
    completed = add_run(db, "completed", created=400)
    add_run(db, "failed", created=400)

    delete_all_runs(db, completed=None)
    assert run_ids(db) == {completed}

    delete_all_runs(db, completed=None, failed=None)
    assert run_ids(db) == {completed}


def test_delete_runs__batch_size_is_honoured_and_the_cursor_steps_over_kept_runs(
    db: Database,
) -> None:
    expired = [add_run(db, "completed", created=100 - i) for i in range(7)]
    kept = [add_run(db, "failed", created=20 - i) for i in range(5)]  # between the two ages

    batches = delete_all_runs(db, limit=3)

    assert [b.scanned for b in batches] == [3, 3, 3, 3, 0]
    assert [b.runs for b in batches] == [3, 3, 1, 0, 0]
    assert run_ids(db) == set(kept)
    assert sum(b.runs for b in batches) == len(expired)
    assert batches[-1].exhausted and batches[-1].cursor is None


def test_delete_runs__runs_created_at_the_same_time_are_each_read_once(db: Database) -> None:
    ids = [add_run(db, "completed", created=30, steps=0) for _ in range(5)]
    execute(db, "UPDATE orchestrator.runs SET created_at = :t", t=days_ago(30))

    batches = delete_all_runs(db, limit=2)

    assert sum(b.runs for b in batches) == len(ids)
    assert [b.scanned for b in batches] == [2, 2, 1]
    assert run_ids(db) == set()


def test_delete_runs__skips_a_run_locked_by_another_transaction(db: Database, db_url: str) -> None:
    locked = add_run(db, "completed", created=30)
    add_run(db, "completed", created=31)  # free: deleted
    with psycopg.connect(db_url) as other:
        other.execute("SELECT 1 FROM orchestrator.runs WHERE id = %s FOR UPDATE", (locked,))
        with db.transaction() as conn:
            # a wait for the locked row would end in LockNotAvailable: skipped, not waited for
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            batch = retention.delete_runs(
                conn, completed_age=WEEK, failed_age=MONTH, after=None, limit=10, now=NOW
            )
        assert batch.runs == 1 and batch.scanned == 2
        assert run_ids(db) == {locked}
        other.rollback()
    delete_all_runs(db)
    assert run_ids(db) == set()


def test_delete_runs__a_run_that_became_active_is_not_deleted(db: Database, db_url: str) -> None:
    """A run being resumed by another transaction is skipped while that transaction holds it,
    and kept once the resume commits (it is active again)."""
    run_id = add_run(db, "failed", created=60)
    with psycopg.connect(db_url) as other:
        other.execute(
            "UPDATE orchestrator.runs SET status = 'queued', finished_at = NULL WHERE id = %s",
            (run_id,),
        )
        batch = delete_runs(db)  # the row is locked: skipped
        other.commit()
    assert batch.runs == 0
    assert delete_all_runs(db)[0].runs == 0
    assert run_ids(db) == {run_id}


# -- events -------------------------------------------------------------------------------------


def add_event(
    db: Database, event_id: str, *, received: float, ingested: bool = True, name: str = "e"
) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, received_at, ingested_at) "
        "VALUES (:i, :n, :r, :g)",
        i=event_id,
        n=name,
        r=days_ago(received),
        g=days_ago(received) if ingested else None,
    )


def event_ids(db: Database) -> set[str]:
    return {row[0] for row in execute(db, "SELECT id FROM orchestrator.events")}


def delete_events(
    db: Database, *, after: int | None = None, limit: int = 100
) -> retention.EventBatch:
    with db.transaction() as conn:
        return retention.delete_events(conn, age=WEEK, after=after, limit=limit, now=NOW)


def test_delete_events__old_ingested_events_go__pending_and_referenced_ones_stay(
    db: Database,
) -> None:
    add_event(db, "old", received=30)
    add_event(db, "old-pending", received=30, ingested=False)
    add_event(db, "old-trigger-of-active", received=30)
    add_run(db, "sleeping", created=30, event_id="old-trigger-of-active")
    add_event(db, "old-trigger-of-finished", received=30)
    add_run(db, "completed", created=1, event_id="old-trigger-of-finished")
    add_event(db, "recent", received=6)

    batch = delete_events(db)

    assert batch.deleted == 2 and batch.exhausted
    assert event_ids(db) == {"old-pending", "old-trigger-of-active", "recent"}


def test_delete_events__batches_go_on_from_the_last_seq_and_stop_at_the_cutoff(
    db: Database,
) -> None:
    for i in range(5):
        add_event(db, f"old-{i}", received=30 - i)
    add_event(db, "recent", received=1)
    add_event(db, "late-old", received=30)  # received long ago, yet ingested in a later seq

    first = delete_events(db, limit=2)
    second = delete_events(db, after=first.last_seq, limit=2)
    third = delete_events(db, after=second.last_seq, limit=2)

    assert [(b.scanned, b.deleted, b.exhausted) for b in (first, second, third)] == [
        (2, 2, False),
        (2, 2, False),
        (2, 1, True),  # old-4, then `recent`: the walk is past the cutoff
    ]
    recent_seq = execute(db, "SELECT seq FROM orchestrator.events WHERE id = 'recent'")[0][0]
    assert third.last_seq == recent_seq - 1  # a walk goes on from before the first recent event
    assert event_ids(db) == {"recent", "late-old"}
    assert delete_events(db).deleted == 1  # a full sweep from the start finds it
    assert event_ids(db) == {"recent"}


def test_delete_events__skips_an_event_locked_by_another_transaction(
    db: Database, db_url: str
) -> None:
    add_event(db, "locked", received=30)
    add_event(db, "free", received=30)
    with psycopg.connect(db_url) as other:
        other.execute("SELECT 1 FROM orchestrator.events WHERE id = 'locked' FOR UPDATE")
        with db.transaction() as conn:
            # a wait for the locked row would end in LockNotAvailable: skipped, not waited for
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            batch = retention.delete_events(conn, age=WEEK, after=None, limit=10, now=NOW)
        assert batch.deleted == 1
        other.rollback()
    assert event_ids(db) == {"locked"}


# -- daemons ------------------------------------------------------------------------------------


def add_daemon(db: Database, status: str, *, stopped: float | None, heartbeat: float) -> str:
    daemon_id = str(uuid.uuid4())
    execute(
        db,
        "INSERT INTO orchestrator.daemons (id, hostname, pid, workers, concurrency, status, "
        "heartbeat_at, stopped_at) VALUES (CAST(:i AS uuid), 'h', 1, 1, 1, :s, :h, :t)",
        i=daemon_id,
        s=status,
        h=days_ago(heartbeat),
        t=None if stopped is None else days_ago(stopped),
    )
    return daemon_id


def test_delete_daemons__old_stopped_and_dead_rows_go__live_and_busy_ones_stay(
    db: Database,
) -> None:
    add_daemon(db, "stopped", stopped=2, heartbeat=2)
    add_daemon(db, "dead", stopped=3, heartbeat=3)
    kept = {
        add_daemon(db, "running", stopped=None, heartbeat=10),  # stale, but not declared dead
        add_daemon(db, "stopping", stopped=None, heartbeat=10),
        add_daemon(db, "stopped", stopped=0.5, heartbeat=0.5),  # stopped lately
    }
    leader = add_daemon(db, "dead", stopped=3, heartbeat=3)
    execute(
        db,
        "INSERT INTO orchestrator.leader (daemon_id, expires_at) VALUES (CAST(:i AS uuid), :t)",
        i=leader,
        t=days_ago(3),
    )
    leasing = add_daemon(db, "dead", stopped=3, heartbeat=3)
    run_id = add_run(db, "running", created=3)
    execute(
        db,
        "UPDATE orchestrator.runs SET lease_owner = CAST(:d AS uuid) WHERE id = CAST(:r AS uuid)",
        d=leasing,
        r=run_id,
    )

    with db.transaction() as conn:
        assert retention.delete_daemons(conn, age=DAY, limit=1, now=NOW) == 1
        assert retention.delete_daemons(conn, age=DAY, limit=10, now=NOW) == 1
        assert retention.delete_daemons(conn, age=DAY, limit=10, now=NOW) == 0

    left = {row[0] for row in execute(db, "SELECT id::text FROM orchestrator.daemons")}
    assert left == kept | {leader, leasing}


# -- a dry run ----------------------------------------------------------------------------------


def test_backlog__counts_what_a_pass_deletes(db: Database) -> None:
    add_run(db, "completed", created=8)
    add_run(db, "cancelled", created=40, steps=1)
    add_wait(db, add_run(db, "failed", created=35, steps=0))
    add_run(db, "failed", created=10)
    add_run(db, "sleeping", created=100)
    add_event(db, "old", received=30)
    add_event(db, "pending", received=30, ingested=False)
    add_daemon(db, "stopped", stopped=2, heartbeat=2)

    with db.transaction() as conn:
        found = retention.backlog(
            conn, completed_age=WEEK, failed_age=MONTH, event_age=WEEK, daemon_age=DAY, now=NOW
        )
    assert found == retention.Backlog(completed=1, failed=2, steps=3, waits=1, events=1, daemons=1)
    assert count(db, "runs") == 5  # nothing was deleted

    [batch] = delete_all_runs(db)
    assert (batch.completed, batch.failed, batch.steps, batch.waits) == (1, 2, 3, 1)


# -- a whole pass, paced --------------------------------------------------------------------------


def backdate(db: Database, days: float) -> None:
    """Move every run and event `days` further into the past of the real clock."""
    shift = timedelta(days=days) + (datetime.now(UTC) - NOW)
    execute(
        db,
        "UPDATE orchestrator.runs SET created_at = created_at + :s, finished_at = finished_at + :s",
        s=shift,
    )
    execute(
        db,
        "UPDATE orchestrator.events SET received_at = received_at + :s, "
        "ingested_at = ingested_at + :s",
        s=shift,
    )


def test_cleaner__a_pass_deletes_in_paced_batches_and_reports_counts(
    db: Database, db_url: str
) -> None:
    for i in range(5):
        add_run(db, "completed", created=10 + i)
    live = add_run(db, "waiting", created=10)
    for i in range(3):
        add_event(db, f"e{i}", received=10)
    backdate(db, 0)
    pauses: list[float] = []
    policy = Policy(completed=WEEK, failed=MONTH, events=WEEK, batch_size=2)

    result = Cleaner(db_url, policy, pause=pauses.append).run_pass()

    assert (result.completed, result.steps, result.events, result.interrupted) == (5, 10, 3, False)
    assert run_ids(db) == {live}
    assert event_ids(db) == set()
    # runs: 2 + 2 + 2 (one kept) + 0; events: 2 + 1; daemons: 1
    assert result.batches == len(pauses) == 7
    assert all(p >= 0.01 for p in pauses)


def test_cleaner__stops_between_batches_when_told_to(db: Database, db_url: str) -> None:
    for i in range(5):
        add_run(db, "completed", created=10 + i)
    backdate(db, 0)
    answers = iter([True, True, False])
    policy = Policy(completed=WEEK, failed=None, events=None, batch_size=2)

    result = Cleaner(
        db_url, policy, keep_going=lambda: next(answers), pause=lambda s: None
    ).run_pass()

    assert result.interrupted and result.batches == 2 and result.completed == 4
    assert count(db, "runs") == 1


def test_cleaner__a_batch_that_times_out_is_tried_again_smaller(
    db: Database, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for i in range(4):
        add_run(db, "completed", created=10 + i)
    backdate(db, 0)
    real = retention.delete_runs

    def slow_when_big(conn: Any, **kwargs: Any) -> retention.RunBatch:
        if kwargs["limit"] > 1:
            conn.execute("SELECT pg_sleep(1)")  # past the statement timeout below
        return real(conn, **kwargs)

    monkeypatch.setattr(retention, "delete_runs", slow_when_big)
    monkeypatch.setattr("orchestrator.runtime.retention.STATEMENT_TIMEOUT", 0.2)
    policy = Policy(completed=WEEK, failed=None, events=None, batch_size=4)

    result = Cleaner(db_url, policy, pause=lambda s: None).run_pass()

    assert result.completed == 4 and not result.interrupted
    assert count(db, "runs") == 0


def test_cleaner__goes_on_from_where_it_stopped__a_full_sweep_reads_all_again(
    db: Database, db_url: str
) -> None:
    waiting = add_run(db, "waiting", created=20)
    add_run(db, "completed", created=10)
    add_event(db, "pending", received=10, ingested=False)
    backdate(db, 0)
    policy = Policy(completed=WEEK, failed=MONTH, events=WEEK, batch_size=10)
    cleaner = Cleaner(db_url, policy, pause=lambda s: None, sweep_every=3600)

    first = cleaner.run_pass()
    # what the walks went past and kept ends meanwhile
    execute(
        db,
        "UPDATE orchestrator.runs SET status = 'completed', finished_at = created_at "
        "WHERE id = CAST(:i AS uuid)",
        i=waiting,
    )
    execute(db, "UPDATE orchestrator.events SET ingested_at = received_at")
    second = cleaner.run_pass()
    cleaner.sweep_every = 0
    third = cleaner.run_pass()

    assert (first.completed, first.events) == (1, 0)
    assert (second.completed, second.events) == (0, 0)  # only what is new since the first
    assert (third.completed, third.events) == (1, 1)  # the full sweep
    assert count(db, "runs") == count(db, "events") == 0


def test_retention_thread__passes_while_leading__starts_and_stops_repeatedly(
    db: Database, db_url: str
) -> None:
    leading = threading.Event()
    asked = [0]  # how often the thread asked whether this daemon leads

    def is_leader() -> bool:
        asked[0] += 1
        return leading.is_set()

    policy = Policy(completed=WEEK, failed=MONTH, events=WEEK, batch_size=100)
    service = Retention(db_url, policy, interval=0.05, is_leader=is_leader, log=_NullLog())
    add_run(db, "completed", created=10)
    backdate(db, 0)
    for _ in range(3):
        before = asked[0]
        service.start()
        eventually(lambda b=before: asked[0] >= b + 2, timeout=10, what="two looks at the lead")
        service.stop()
    assert count(db, "runs") == 1  # not the leader: nothing deleted

    leading.set()
    service.start()
    try:
        eventually(lambda: count(db, "runs") == 0, timeout=10, what="the old run deleted")
    finally:
        service.stop()
    assert service._thread is None


class _NullLog:
    def __getattr__(self, name: str) -> Any:
        return lambda *args, **kwargs: None


# -- plans ----------------------------------------------------------------------------------------


def generic_plan(db_url: str, statement: str, names: list[str], types: list[str]) -> str:
    """EXPLAIN of the generic plan of a statement (as the retention connection runs it)."""
    for i, name in enumerate(names, 1):
        statement = statement.replace(f"%({name})s", f"${i}")
    values = ", ".join("NULL" if t in ("timestamptz", "uuid") else "100" for t in types)
    with psycopg.connect(db_url) as conn:
        conn.execute("SET plan_cache_mode = force_generic_plan")
        conn.execute(f"PREPARE q({', '.join(types)}) AS {statement}")
        plan = "\n".join(row[0] for row in conn.execute(f"EXPLAIN EXECUTE q({values})"))
        conn.rollback()
    return plan


def test_plans__batches_walk_their_index_and_probe_by_key(db: Database, db_url: str) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.runs (function_id, status, event_id, created_at, finished_at) "
        "SELECT 'f', 'completed', 'e' || g, now() - g * interval '1 minute', now() "
        "FROM generate_series(1, 5000) g",
    )
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, ingested_at) "
        "SELECT 'e' || g, 'x', now() FROM generate_series(1, 5000) g",
    )
    execute(  # each run has a step, so that the table's statistics are those of a used one
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) "
        "SELECT id, 'a', 0, 'run', 'completed' FROM orchestrator.runs",
    )
    for table in ("runs", "events", "steps"):
        execute(db, f"ANALYZE orchestrator.{table}")

    runs_plan = generic_plan(
        db_url,
        retention._DELETE_RUNS,
        ["now", "completed_age", "failed_age", "after_at", "after_id", "limit"],
        ["timestamptz", "float8", "float8", "timestamptz", "uuid", "int"],
    )
    events_plan = generic_plan(
        db_url,
        retention._DELETE_EVENTS,
        ["now", "age", "after", "limit"],
        ["timestamptz", "float8", "bigint", "int"],
    )

    assert "Index Scan using runs_created on runs" in runs_plan
    assert "Index Scan using events_seq on events" in events_plan
    for plan in (runs_plan, events_plan):
        assert "Seq Scan" not in plan, plan
