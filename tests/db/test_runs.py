from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from orchestrator.db import runs, steps
from orchestrator.db.checkpoints import GroupWrite, write_group
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from tests.db.helpers import claim, claim_plan, execute, queue_runs, wait_until_blocked
from tests.db.plans import generic_plan

pytestmark = pytest.mark.timeout(60)
OWNER = str(uuid.uuid4())


def test_create_many__idempotency_key_creates_once(db: Database) -> None:
    new = [runs.NewRun("f", [{"a": 1}], event_id="e1", idempotency_key="event:e1")]
    with db.transaction() as conn:
        first = runs.create_many(conn, new)
        second = runs.create_many(conn, new + new)
    assert len(first) == 1
    assert second == []
    assert execute(db, "SELECT count(*) FROM orchestrator.runs")[0][0] == 1


def test_claim__leases_due_runs_oldest_first(db: Database) -> None:
    ids = queue_runs(db, 3)
    for age, rid in enumerate(ids):  # ids[0] has been due longest
        execute(
            db,
            "UPDATE orchestrator.runs SET due_at = now() - make_interval(secs => :s) "
            "WHERE id = CAST(:i AS uuid)",
            s=10 - age,
            i=rid,
        )
    claimed = claim(db, OWNER, limit=2)
    assert [c.id for c in claimed] == ids[:2]
    row = execute(
        db,
        "SELECT status, lease_owner::text, attempts FROM orchestrator.runs "
        "WHERE id = CAST(:i AS uuid)",
        i=claimed[0].id,
    )[0]
    assert row == ("running", OWNER, 1)
    assert all(c.lease_token for c in claimed)


def test_claim__skips_runs_not_yet_due_and_unknown_functions(db: Database) -> None:
    queue_runs(db, 1, function_id="other")
    [later] = queue_runs(db, 1)
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() + interval '1 hour' "
        "WHERE id = CAST(:i AS uuid)",
        i=later,
    )
    assert claim(db, OWNER) == []


def test_claim__two_connections_claim_disjoint_rows(db: Database) -> None:
    queue_runs(db, 10)
    with db.transaction() as a, db.transaction() as b:
        first = runs.claim_due(a, owner=OWNER, limit=6, lease_seconds=30, function_ids=["f"])
        second = runs.claim_due(b, owner=OWNER, limit=6, lease_seconds=30, function_ids=["f"])
    assert len(first) == 6
    assert len(second) == 4
    assert not {c.id for c in first} & {c.id for c in second}


def test_claim_suspects__uses_their_partial_index(db: Database) -> None:
    queue_runs(db, 500)
    execute(
        db,
        "UPDATE orchestrator.runs SET crashes = 1 "
        "WHERE id IN (SELECT id FROM orchestrator.runs LIMIT 5)",
    )
    execute(db, "ANALYZE orchestrator.runs")
    assert "runs_due_suspects" in claim_plan(db, suspects=True)
    assert len(claim(db, OWNER, suspects=True)) == 5


def test_claim__uses_the_partial_due_index(db: Database) -> None:
    queue_runs(db, 2000)
    execute(
        db,
        "UPDATE orchestrator.runs SET status = 'completed' "
        "WHERE id IN (SELECT id FROM orchestrator.runs LIMIT 1950)",
    )
    execute(db, "ANALYZE orchestrator.runs")
    text_plan = claim_plan(db)
    assert "runs_due" in text_plan, text_plan


def test_claim__walks_the_due_index_in_order_despite_stale_statistics(db: Database) -> None:
    # no statistics yet (a new table), then a burst: the planner expects few due runs
    queue_runs(db, 15000)
    text_plan = claim_plan(db, analyze=True)
    assert "Index Scan using runs_due on runs" in text_plan, text_plan
    assert "Sort" not in text_plan and "Bitmap" not in text_plan, text_plan


def test_claim__its_generic_plan_with_the_now_parameter_walks_the_due_index(
    db: Database,
) -> None:
    # the claim is prepared: its generic plan bounds the index walk by coalesce($n, now())
    queue_runs(db, 2000)
    execute(db, "ANALYZE orchestrator.runs")
    args = {"owner": OWNER, "limit": 10, "lease": 30.0, "fids": ["f"], "now": None}
    types = {"owner": "uuid", "limit": "int", "lease": "float8", "fids": "text[]"}
    types["now"] = "timestamptz"
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        for name, value in runs.CLAIM_SETTINGS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (name, value))
        plan = generic_plan(conn, runs._CLAIM, args, types)
    assert "Index Scan using runs_due on runs" in plan, plan
    assert "Index Cond: (due_at <= COALESCE(" in plan, plan
    assert "Sort" not in plan and "Bitmap" not in plan, plan
    # ten claimed, at the walk's head (Postgres 18 prints actual rows as "10.00")
    assert re.search(r"actual time=\S+ rows=10(\.00)? ", plan.splitlines()[0]), plan


def test_checkpoint__fenced_by_lease_token(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    record = steps.StepRecord("s", 0, "run", "completed", 1, output_json=json.dumps({"x": 1}))
    with db.transaction() as conn:
        assert not write_group(conn, [GroupWrite(run.id, str(uuid.uuid4()), step=record)])
    with db.transaction() as conn:
        assert write_group(conn, [GroupWrite(run.id, run.lease_token, step=record)]) == {
            run.id: True
        }
    with db.transaction() as conn:
        [row] = steps.load(conn, run.id)
    assert (row.step_id, row.status, row.output) == ("s", "completed", {"x": 1})


def test_finish__rejected_after_rescue(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER, lease=0.001)
    execute(db, "SELECT pg_sleep(0.01)")
    with db.transaction() as conn:
        rescued = runs.rescue_expired(conn, max_recoveries=5)
    assert [r.id for r in rescued] == [run.id]
    with db.transaction() as conn:
        finish = GroupWrite(run.id, run.lease_token, final_status="completed", output_json="1")
        assert not write_group(conn, [finish])
    row = execute(db, "SELECT status, recoveries, lease_token FROM orchestrator.runs")[0]
    assert row == ("queued", 1, None)


def test_rescue__fails_run_past_recovery_cap(db: Database) -> None:
    queue_runs(db, 1)
    execute(db, "UPDATE orchestrator.runs SET recoveries = 2")
    claim(db, OWNER, lease=0.001)
    execute(db, "SELECT pg_sleep(0.01)")
    with db.transaction() as conn:
        [rescued] = runs.rescue_expired(conn, max_recoveries=2)
    assert rescued.status == "failed"
    status, error = execute(db, "SELECT status, error FROM orchestrator.runs")[0]
    assert status == "failed"
    assert error["code"] == "recovery_cap"
    assert "3 times" in error["message"]


def test_rescue__leaves_live_leases_alone(db: Database) -> None:
    queue_runs(db, 1)
    claim(db, OWNER, lease=60)
    with db.transaction() as conn:
        assert runs.rescue_expired(conn, max_recoveries=5) == []


def test_requeue_crashed__makes_a_suspect_for_the_quarantine(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    with db.transaction() as conn:
        runs.requeue_crashed(conn, [(run.id, run.lease_token)], max_recoveries=5)
    assert execute(db, "SELECT recoveries, crashes FROM orchestrator.runs")[0] == (1, 1)
    assert claim(db, OWNER) == []  # a suspect only runs in the quarantine process
    assert [c.id for c in claim(db, OWNER, suspects=True)] == [run.id]


def test_requeue_crashed__matches_token_not_just_id(db: Database) -> None:
    queue_runs(db, 2)
    a, b = claim(db, OWNER)
    with db.transaction() as conn:
        requeued = runs.requeue_crashed(
            conn, [(a.id, a.lease_token), (b.id, str(uuid.uuid4()))], max_recoveries=5
        )
    assert [r.id for r in requeued] == [a.id]
    statuses = dict(execute(db, "SELECT id::text, status FROM orchestrator.runs"))
    assert statuses == {a.id: "queued", b.id: "running"}


def test_release__does_not_count_a_recovery(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    with db.transaction() as conn:
        runs.release(conn, [(run.id, run.lease_token)])
    assert execute(db, "SELECT status, recoveries FROM orchestrator.runs")[0] == ("queued", 0)


def test_rescue_owner__requeues_only_that_daemons_runs(db: Database) -> None:
    queue_runs(db, 2)
    other = str(uuid.uuid4())
    [mine] = claim(db, OWNER, limit=1)
    [theirs] = claim(db, other, limit=1)
    with db.transaction() as conn:
        requeued = runs.rescue_owner(conn, owner=other, max_recoveries=5)
    assert [r.id for r in requeued] == [theirs.id]
    statuses = dict(
        execute(db, "SELECT id::text, (status, lease_owner::text) FROM orchestrator.runs")
    )
    assert statuses == {mine.id: ("running", OWNER), theirs.id: ("queued", None)}


def test_suspend__releases_lease_and_sets_due_time(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    with db.transaction() as conn:
        due = runs.suspend(conn, run.id, run.lease_token, status="sleeping", delay_seconds=3600)
    assert due is not None
    row = execute(
        db, "SELECT status, lease_owner, extract(epoch FROM due_at - now()) FROM orchestrator.runs"
    )[0]
    assert row[0] == "sleeping"
    assert row[1] is None
    assert 3500 < float(row[2]) <= 3600
    with db.transaction() as conn:
        assert runs.suspend(conn, run.id, run.lease_token, status="sleeping") is None


def test_seconds_until_next_due__of_the_earliest_due_run(db: Database) -> None:
    with db.transaction() as conn:
        assert runs.seconds_until_next_due(conn, ["f"]) is None
    later, _ = queue_runs(db, 2)
    queue_runs(db, 1, function_id="g")
    with db.transaction() as conn:  # one transaction: now() is the same in every statement
        conn.execute(
            text(
                "UPDATE orchestrator.runs SET due_at = now() + make_interval(secs => CASE "
                "WHEN function_id = 'g' THEN 3 WHEN id = CAST(:later AS uuid) THEN 20 ELSE 10 END)"
            ),
            {"later": later},
        )
        assert runs.seconds_until_next_due(conn, ["f"]) == 10.0
        assert runs.seconds_until_next_due(conn, ["f", "g"]) == 3.0


def test_seconds_until_next_due__reads_one_row_per_function_however_many_sleep(
    db: Database,
) -> None:
    queue_runs(db, 1, function_id="g")
    execute(
        db,
        "INSERT INTO orchestrator.runs (function_id, status, due_at) SELECT 'f', 'sleeping', "
        "now() + interval '1 year' + make_interval(secs => g) FROM generate_series(1, 5000) g",
    )
    execute(db, "ANALYZE orchestrator.runs")
    with db.transaction() as conn:
        for sql in (runs._NEXT_DUE, runs._NEXT_FUTURE):
            (plan,) = conn.execute(
                text(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}"), {"p_fids": ["f", "g"], "p_now": None}
            ).scalar()
            scans = list(_scans_of_runs(plan["Plan"]))
            assert scans, plan
            assert all(node["Index Name"] == "runs_function_due" for node in scans), scans
            # at most one row read per function: the sleeping runs of 'f' are not walked
            assert sum(n["Actual Rows"] * n["Actual Loops"] for n in scans) <= 2, scans
        assert 3e7 < runs.seconds_until_next_due(conn, ["f"]) < 3.3e7  # about a year


def _scans_of_runs(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if node.get("Relation Name") == "runs":
        yield node
    for child in node.get("Plans", ()):
        yield from _scans_of_runs(child)


def test_get__by_id_and_unambiguous_prefix(db: Database) -> None:
    [rid] = queue_runs(db, 1)
    with db.transaction() as conn:
        assert runs.get(conn, rid).id == rid
        assert runs.get(conn, rid[:8]).id == rid
        assert runs.get(conn, "not-hex'; DROP TABLE x; --") is None
        assert runs.get(conn, str(uuid.uuid4())) is None


def test_list_runs__filters(db: Database) -> None:
    queue_runs(db, 3)
    queue_runs(db, 2, function_id="g")
    with db.transaction() as conn:
        assert len(runs.list_runs(conn)) == 5
        assert len(runs.list_runs(conn, function_id="g")) == 2
        assert len(runs.list_runs(conn, status="completed")) == 0
        assert len(runs.list_runs(conn, limit=1)) == 1


def test_rescue__interrupted_run_keeps_its_place_in_line(db: Database) -> None:
    [old] = queue_runs(db, 1)
    [claimed] = claim(db, OWNER, lease=0.001)
    newer = queue_runs(db, 5)  # a backlog that arrived while the old run was executing
    execute(db, "SELECT pg_sleep(0.01)")
    with db.transaction() as conn:
        runs.rescue_expired(conn, max_recoveries=5)
    assert [c.id for c in claim(db, OWNER, limit=1)] == [old]
    assert claimed.id == old and old not in newer


def test_requeue_interrupted__counts_a_recovery_but_no_crash(db: Database) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    with db.transaction() as conn:
        [requeued] = runs.requeue_interrupted(conn, [(run.id, run.lease_token)], max_recoveries=5)
    assert requeued.status == "queued"
    assert execute(db, "SELECT recoveries, crashes FROM orchestrator.runs")[0] == (1, 0)
    assert [c.id for c in claim(db, OWNER)] == [run.id]  # not a suspect


def test_release__waits_for_a_briefly_locked_row_instead_of_skipping_it(
    db: Database, db_url: str
) -> None:
    queue_runs(db, 1)
    [run] = claim(db, OWNER)
    released: list[runs.RequeuedRun] = []

    def release() -> None:
        with db.transaction() as conn:
            released.extend(runs.release(conn, [(run.id, run.lease_token)]))

    releaser = threading.Thread(target=release, daemon=True)
    with psycopg.connect(db_url) as holder:
        holder.execute("SELECT 1 FROM orchestrator.runs FOR SHARE")  # as a lease renewal would
        releaser.start()
        wait_until_blocked(db, holder.info.backend_pid, "the release waiting for the row lock")
        assert released == []
        holder.commit()
        releaser.join(10)
    assert not releaser.is_alive()
    assert [r.id for r in released] == [run.id]
    assert execute(db, "SELECT status FROM orchestrator.runs")[0][0] == "queued"


def test_notify_if_queued__notifies_only_for_runs_of_those_events_left_queued(
    db: Database,
) -> None:
    with db.transaction() as conn:
        runs.create_many(
            conn, [runs.NewRun("f", [{}], event_id=e, idempotency_key=e) for e in ("e1", "e2")]
        )
    execute(db, "UPDATE orchestrator.runs SET status = 'running' WHERE event_id = 'e1'")
    url = libpq_url(db.url)
    with psycopg.connect(url, autocommit=True) as listener:
        listener.execute("LISTEN orchestrator_runs")
        with psycopg.connect(url, autocommit=True) as conn:
            for eids in (["e1"], ["nope"], ["e1", "e2"]):
                with conn.transaction():
                    runs.notify_if_queued(conn, eids)
        got = list(listener.notifies(timeout=1, stop_after=2))
    assert len(got) == 1  # only the third: e2's run is queued


def test_notify_if_queued__its_generic_plan_probes_runs_by_event(db: Database) -> None:
    """Many queued runs, no statistics: the runs of each event by `runs_event`, never a read
    of every queued run."""
    execute(
        db,
        "INSERT INTO orchestrator.runs (function_id, status, event_id) "
        "SELECT 'f', 'queued', 'x' || g FROM generate_series(1, 20000) g",
    )
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        args = {"eids": ["x5", "x6"]}
        plan = generic_plan(conn, runs._NOTIFY_QUEUED, args, {"eids": "text[]"})
    assert "runs_event" in plan and "runs_status_created" not in plan, plan
    assert "Seq Scan on runs" not in plan, plan
