from __future__ import annotations

import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from orchestrator.db import checkpoints, runs
from orchestrator.db.checkpoints import GroupWrite, write_group
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.db.steps import StepRecord
from tests.conftest import eventually
from tests.db.helpers import claim, execute, queue_runs
from tests.db.plans import generic_plan

pytestmark = pytest.mark.timeout(60)
OWNER = str(uuid.uuid4())
APP = "test"


@pytest.fixture
def direct(db: Database) -> Iterator[Direct]:
    conn = Direct(db.url, application_name=APP)
    yield conn
    conn.close()


def write(direct: Direct, writes: list[GroupWrite]) -> set[str]:
    return set(direct.run(lambda c: write_group(c, writes), retry_for=0))


def step_rows(db: Database, run_id: str) -> list[Any]:
    return execute(
        db,
        "SELECT step_id, position, kind, status, attempt, output, error, duration_ms "
        "FROM orchestrator.steps WHERE run_id = CAST(:i AS uuid) ORDER BY step_id",
        i=run_id,
    )


def run_row(db: Database, run_id: str) -> Any:
    [row] = execute(
        db,
        "SELECT status, output, error, finished_at, lease_owner::text, lease_token::text, "
        "lease_expires_at FROM orchestrator.runs WHERE id = CAST(:i AS uuid)",
        i=run_id,
    )
    return row


RESCUE = (
    "UPDATE orchestrator.runs SET status = 'queued', lease_token = NULL, lease_owner = NULL, "
    "lease_expires_at = NULL WHERE id = CAST(:i AS uuid)"
)


def test_write_group__writes_steps_and_terminal_status_of_many_runs(
    db: Database, direct: Direct
) -> None:
    queue_runs(db, 3)
    first, second, third = claim(db, OWNER)
    writes = [
        GroupWrite(
            first.id,
            first.lease_token,
            step=StepRecord(
                "fetch", 0, "run", "completed", 1, output_json='{"x": 1}', duration_ms=7
            ),
        ),
        GroupWrite(
            second.id,
            second.lease_token,
            step=StepRecord("nap", 3, "sleep", "sleeping", 2, output_json="[1, 2]"),
        ),
        GroupWrite(third.id, third.lease_token, final_status="completed", output_json='{"a": 1}'),
    ]

    assert write(direct, writes) == {first.id, second.id, third.id}

    assert step_rows(db, first.id) == [("fetch", 0, "run", "completed", 1, {"x": 1}, None, 7)]
    assert step_rows(db, second.id) == [("nap", 3, "sleep", "sleeping", 2, [1, 2], None, None)]
    assert step_rows(db, third.id) == []
    status, output, error, finished_at, owner, token, expires = run_row(db, third.id)
    assert (status, output, error) == ("completed", {"a": 1}, None)
    assert finished_at is not None
    assert (owner, token, expires) == (None, None, None)
    for run in (first, second):  # a step record leaves the run running under its lease
        status, _, _, finished_at, owner, token, _ = run_row(db, run.id)
        assert (status, finished_at, owner, token) == ("running", None, OWNER, run.lease_token)


def test_write_group__drops_writes_whose_lease_does_not_hold(db: Database, direct: Direct) -> None:
    queue_runs(db, 3)
    stale_step, stale_finish, valid = claim(db, OWNER)
    [queued] = queue_runs(db, 1)  # never claimed: not running
    record = StepRecord("s", 0, "run", "completed", 1, output_json='{"x": 1}')
    writes = [
        GroupWrite(stale_step.id, str(uuid.uuid4()), step=record),
        GroupWrite(queued, str(uuid.uuid4()), step=record),
        GroupWrite(stale_finish.id, str(uuid.uuid4()), final_status="completed", output_json="1"),
        GroupWrite(valid.id, valid.lease_token, step=record),
    ]

    assert write(direct, writes) == {valid.id}

    for run_id in (stale_step.id, queued, stale_finish.id):
        assert step_rows(db, run_id) == []
    assert step_rows(db, valid.id) == [("s", 0, "run", "completed", 1, {"x": 1}, None, None)]
    assert run_row(db, queued)[:4] == ("queued", None, None, None)
    for run in (stale_step, stale_finish):
        status, output, _, finished_at, owner, token, _ = run_row(db, run.id)
        assert (status, output, finished_at, owner, token) == (
            "running",
            None,
            None,
            OWNER,
            run.lease_token,
        )


def test_write_group__upserts_a_step_written_again(db: Database, direct: Direct) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    retrying = StepRecord("s", 2, "run", "retrying", 1, error_json='{"type": "Boom"}')
    completed = StepRecord("s", 2, "run", "completed", 2, output_json='"done"', duration_ms=5)

    assert write(direct, [GroupWrite(run.id, run.lease_token, step=retrying)]) == {run.id}
    assert step_rows(db, run.id) == [("s", 2, "run", "retrying", 1, None, {"type": "Boom"}, None)]
    assert write(direct, [GroupWrite(run.id, run.lease_token, step=completed)]) == {run.id}

    assert step_rows(db, run.id) == [("s", 2, "run", "completed", 2, "done", None, 5)]


def test_write_group__records_a_failed_finish(db: Database, direct: Direct) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    failed = GroupWrite(run.id, run.lease_token, final_status="failed", error_json='{"type": "X"}')

    assert write(direct, [failed]) == {run.id}

    status, output, error, finished_at, owner, token, expires = run_row(db, run.id)
    assert (status, output, error) == ("failed", None, {"type": "X"})
    assert finished_at is not None
    assert (owner, token, expires) == (None, None, None)


def test_write_group__rescue_committed_first_wins(db: Database, direct: Direct) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    execute(db, RESCUE, i=run.id)
    record = StepRecord("s", 0, "run", "completed", 1, output_json="1")

    assert write(direct, [GroupWrite(run.id, run.lease_token, step=record)]) == set()

    assert step_rows(db, run.id) == []
    assert run_row(db, run.id)[0] == "queued"


def test_write_group__waits_for_a_locked_run_and_rechecks_its_lease(
    db: Database, direct: Direct
) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    record = StepRecord("s", 0, "run", "completed", 1, output_json="1")
    done = threading.Event()
    result: dict[str, Any] = {}

    def writer() -> None:
        try:
            result["ids"] = write(direct, [GroupWrite(run.id, run.lease_token, step=record)])
        except BaseException as exc:  # reported by the main thread
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=writer, daemon=True)
    try:
        with db.transaction() as holder:
            holder.execute(
                text("SELECT 1 FROM orchestrator.runs WHERE id = CAST(:i AS uuid) FOR UPDATE"),
                {"i": run.id},
            )
            thread.start()
            eventually(
                lambda: (
                    execute(
                        db,
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND application_name = :app AND wait_event_type = 'Lock'",
                        app=APP,
                    )[0][0]
                    == 1
                ),
                timeout=20,
                what="write_group waiting on the run's row lock",
            )
            assert not done.is_set()
            holder.execute(text(RESCUE), {"i": run.id})  # as a rescue would, then commit
    finally:
        if thread.ident is not None:  # started
            thread.join(timeout=30)

    assert done.is_set(), "write_group did not return after the lock was released"
    assert "error" not in result, result.get("error")
    assert result["ids"] == set()
    assert step_rows(db, run.id) == []
    assert run_row(db, run.id)[0] == "queued"


def test_write_group__empty_input_touches_nothing() -> None:
    class Untouchable:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"write_group used the connection: {name}")

    assert write_group(Untouchable(), []) == {}


def test_write_group__refuses_and_reports_the_writes_of_a_cancelled_run(
    db: Database, direct: Direct
) -> None:
    queue_runs(db, 3)
    first, second, third = claim(db, OWNER)
    with db.transaction() as conn:
        runs.cancel(conn, [second.id], reason="stop")
    execute(
        db,
        "UPDATE orchestrator.runs SET lease_token = NULL WHERE id = CAST(:r AS uuid)",
        r=third.id,
    )  # lost otherwise (rescued)
    record = StepRecord("s", 0, "run", "completed", 1, output_json="1")
    writes = [
        GroupWrite(first.id, first.lease_token, step=record),
        GroupWrite(second.id, second.lease_token, step=record),
        GroupWrite(third.id, third.lease_token, final_status="completed", output_json="1"),
    ]
    made = direct.run(lambda c: write_group(c, writes), retry_for=0)
    assert made == {first.id: True, second.id: False}  # the third's lease was lost
    assert step_rows(db, second.id) == []
    status = execute(
        db,
        "SELECT status, error->>'message' FROM orchestrator.runs WHERE id = CAST(:r AS uuid)",
        r=second.id,
    )
    assert status == [("cancelled", "stop")]


def test_write_group__finish_with_effects_notifies_parent_and_removes_waits(
    db: Database, direct: Direct
) -> None:
    queue_runs(db, 2)
    plain, failing = claim(db, OWNER)
    writes = [
        GroupWrite(plain.id, plain.lease_token, final_status="completed", output_json="1"),
        GroupWrite(
            failing.id,
            failing.lease_token,
            final_status="failed",
            error_json='{"type": "Boom", "message": "m"}',
            effects=True,
        ),
    ]
    assert set(direct.run(lambda c: write_group(c, writes), retry_for=0)) == {
        plain.id,
        failing.id,
    }
    names = execute(db, "SELECT id, name, data->>'run_id' FROM orchestrator.events")
    assert names == [(f"failed:{failing.id}", "orchestrator/function.failed", failing.id)]


def test_write_group__a_lost_leases_write_beside_the_current_ones__is_refused(
    db: Database, direct: Direct
) -> None:
    # a run claimed again by the same worker after its lease was lost: its old execution's
    # late write and the new one's can share a group
    queue_runs(db, 1)
    (run,) = claim(db, str(uuid.uuid4()), limit=1)
    late = StepRecord("late", 0, "run", "completed", 1, output_json='"late"', duration_ms=1)
    current = StepRecord("b", 1, "run", "completed", 1, output_json="2", duration_ms=1)
    made = write(
        direct,
        [
            GroupWrite(
                run.id, str(uuid.uuid4()), step=late, final_status="completed", output_json="0"
            ),
            GroupWrite(run.id, run.lease_token, step=current),
        ],
    )
    assert made == {run.id}
    assert execute(db, "SELECT step_id FROM orchestrator.steps") == [("b",)]
    assert execute(db, "SELECT status, output FROM orchestrator.runs") == [("running", None)]


_GROUP_TYPES = {
    "runs": "uuid[]",
    "tokens": "uuid[]",
    "steps": "text[]",
    "positions": "int[]",
    "kinds": "text[]",
    "step_statuses": "text[]",
    "attempts": "int[]",
    "outputs": "text[]",
    "errors": "text[]",
    "wakes": "timestamptz[]",
    "durations": "int[]",
    "finals": "text[]",
    "run_outputs": "text[]",
    "run_errors": "text[]",
    "states": "text[]",
    "event_ids": "text[]",
    "starts": "timestamptz[]",
    "now": "timestamptz",
}


def _actual_rows(line: str) -> float:
    """The rows a plan node returned per loop (`rows=2` up to Postgres 17, `rows=2.00` after)."""
    found = re.search(r"actual time=[\d.]+\.\.[\d.]+ rows=([\d.]+)", line)
    assert found is not None, line
    return float(found.group(1))


@pytest.mark.parametrize("statistics", ["none", "analyzed"])
def test_write_group__its_generic_plan_reads_runs_by_id_however_many_run_or_were_cancelled(
    db: Database, db_url: str, statistics: str
) -> None:
    """Thousands of runs running elsewhere or cancelled before: a group of three reads its own
    by id, with no statistics (a new table), and with statistics of a few dozen running among
    1,000,000 asleep (where `runs_running` is the smallest index to look a running run up in)."""
    queue_runs(db, 1)
    [mine] = claim(db, OWNER)
    others = (
        "INSERT INTO orchestrator.runs (id, function_id, events, status, lease_owner, "
        "lease_token, lease_expires_at) SELECT gen_random_uuid(), 'f', '[]', %s, "
        "CASE WHEN %s = 'running' THEN gen_random_uuid() END, "
        "CASE WHEN %s = 'running' THEN gen_random_uuid() END, "
        "CASE WHEN %s = 'running' THEN now() + interval '1 minute' END "
        "FROM generate_series(1, 3000)"
    )
    gone = str(uuid.uuid4())
    with psycopg.connect(db_url, autocommit=True) as conn:
        for status in ("running", "cancelled"):
            conn.execute(others, (status, status, status, status))
        if statistics == "analyzed":  # a few dozen running among 1,000,000 asleep
            conn.execute(
                "DELETE FROM orchestrator.runs WHERE id IN (SELECT id FROM orchestrator.runs "
                "WHERE status = 'running' AND id <> %s LIMIT 2950)",
                (mine.id,),
            )
            conn.execute(
                "INSERT INTO orchestrator.runs (function_id, events, status, due_at) "
                "SELECT 'f', '[]', 'sleeping', now() + interval '1 day' "
                "FROM generate_series(1, 1000000)"
            )
            conn.execute("VACUUM ANALYZE orchestrator.runs")
        conn.execute(
            "INSERT INTO orchestrator.runs (id, function_id, events, status) "
            "VALUES (%s, 'f', '[]', 'cancelled')",
            (gone,),
        )
        step = {"steps": "s", "positions": 0, "kinds": "run", "step_statuses": "completed"}
        writes = [(mine.id, mine.lease_token), (gone, str(uuid.uuid4())), (str(uuid.uuid4()),) * 2]
        args: dict[str, Any] = {name: [None] * len(writes) for name in _GROUP_TYPES}
        args.update(
            runs=[w[0] for w in writes],
            tokens=[w[1] for w in writes],
            **{name: [value] * len(writes) for name, value in step.items()},
            attempts=[1] * len(writes),
            outputs=["1"] * len(writes),
            finals=["completed"] * len(writes),
            run_outputs=["1"] * len(writes),
            now=None,
        )
        plan = generic_plan(conn, checkpoints._WRITE_GROUP, args, _GROUP_TYPES)
    read = [line for line in plan.splitlines() if "Scan" in line and " on runs " in line]
    assert read and all("runs_pkey" in line for line in read), plan
    assert all(_actual_rows(line) <= 1 for line in read if "actual" in line), plan
    # and it did what it does: held the claimed run, refused the cancelled one's write
    assert _actual_rows(plan.splitlines()[0]) == 2, plan
    assert run_row(db, mine.id)[0] == "running"  # the plan's transaction was rolled back
