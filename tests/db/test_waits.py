"""Waits: indexed resolution, the lock protocol that makes them race-free, cancellation."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from orchestrator.db import events, runs, waits
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import driver
from tests.conftest import eventually
from tests.db.helpers import advisory_waiters, claim, execute
from tests.db.plans import generic_plan, most_removed_by_join

pytestmark = pytest.mark.timeout(60)

OWNER = "00000000-0000-0000-0000-00000000000b"
LONG_AGO = datetime(2000, 1, 1, tzinfo=UTC)


def waiting_runs(db: Database, n: int, *, name: str = "payment/received") -> list[str]:
    """`n` runs waiting on `name` with match data.order_id = their index."""
    ids = [str(uuid.uuid4()) for _ in range(n)]
    execute(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status, due_at) "
        "SELECT unnest(CAST(:ids AS uuid[])), 'f', 'waiting', 'infinity'",
        ids=ids,
    )
    execute(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) "
        "SELECT unnest(CAST(:ids AS uuid[])), 'paid', 0, 'wait', 'waiting'",
        ids=ids,
    )
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) SELECT id, 'paid', 'event', :name, 'data.order_id', "
        "to_jsonb(n - 1), :since FROM unnest(CAST(:ids AS uuid[])) WITH ORDINALITY AS t(id, n)",
        ids=ids,
        name=name,
        since=LONG_AGO,
    )
    execute(db, "ANALYZE orchestrator.waits")
    return ids


def candidates(db: Database, datas: list[dict[str, Any]]) -> list[waits.Candidate]:
    now = datetime.now(UTC)
    with db.transaction() as conn:
        return waits.candidates(
            conn, ["payment/received"] * len(datas), datas, [now] * len(datas)
        )()


def test_candidates__index_lookup_finds_exactly_the_matching_wait(db: Database) -> None:
    ids = waiting_runs(db, 10_000)
    [found] = candidates(db, [{"order_id": 4242, "amount": 1}])
    assert (found.run_id, found.step_id, found.kind, found.event_index) == (
        ids[4242],
        "paid",
        "event",
        0,
    )
    assert candidates(db, [{"order_id": "4242"}]) == []  # JSON types differ: no match
    assert candidates(db, [{"other": 1}]) == []


def test_candidates__plan_uses_the_match_index_not_a_scan(db: Database) -> None:
    waiting_runs(db, 10_000)
    params = {
        "names": ["payment/received"],
        "datas": [json.dumps({"order_id": 17})],
        "received": [datetime.now(UTC)],
        "ids": ["e"],
    }
    with db.transaction() as conn:
        rows = driver(conn).execute("EXPLAIN " + waits._CANDIDATES, params).fetchall()
    plan = "\n".join(str(r[0]) for r in rows)
    assert "Seq Scan on waits" not in plan, plan
    # the lookup is by value, not a walk of every wait on the event name
    lookup = plan[plan.index("Index Scan using waits_match on waits w ") :]
    assert "match_value = k.match_value" in lookup.splitlines()[1], plan


def test_resolve__an_event_resolves_a_wait_once(db: Database) -> None:
    [run_id] = waiting_runs(db, 1)
    event = {"id": "e1", "name": "payment/received", "data": {"order_id": 0}, "ts": "t"}
    with db.transaction() as conn:
        assert waits.resolve(conn, [waits.Resolution(run_id, "paid", event)]).woken == [run_id]
    with db.transaction() as conn:
        again = waits.Resolution(run_id, "paid", {**event, "id": "e2"})
        assert waits.resolve(conn, [again]).woken == []
    [(status, output)] = execute(
        db,
        "SELECT status, output FROM orchestrator.steps WHERE run_id = CAST(:r AS uuid)",
        r=run_id,
    )
    assert (status, output["id"]) == ("completed", "e1")
    assert execute(db, "SELECT status FROM orchestrator.runs")[0][0] == "queued"
    assert execute(db, "SELECT count(*) FROM orchestrator.waits")[0][0] == 0


def test_resolve__leaves_a_run_that_is_no_longer_waiting(db: Database) -> None:
    [run_id] = waiting_runs(db, 1)
    execute(db, "UPDATE orchestrator.runs SET status = 'running'")
    with db.transaction() as conn:
        assert waits.resolve(conn, [waits.Resolution(run_id, "paid", {"id": "e"})]).woken == []
    assert execute(db, "SELECT status FROM orchestrator.steps")[0][0] == "waiting"


def _ingest_beside_a_wait_being_stored(
    db: Database, run_id: str, ingest: Callable[[list[list[waits.Candidate]]], None]
) -> list[list[waits.Candidate]]:
    """A worker stores a wait for `run_id` on payment/received (match data.order_id = 7)
    under the shared name lock and holds its transaction open; `ingest` (which appends what
    its lookup found) runs meanwhile and must block on the name lock until the worker
    commits. Returns what the ingest found."""
    stored = threading.Event()
    release = threading.Event()
    found: list[list[waits.Candidate]] = []

    def worker() -> None:
        with db.transaction() as conn:
            waits.lock_names(conn, ["payment/received"], shared=True)
            driver(conn).execute(
                "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
                "match_value, since) VALUES (%s, 'paid', 'event', 'payment/received', "
                "'data.order_id', '7', %s)",
                (run_id, LONG_AGO),
            )
            stored.set()
            release.wait(10)

    w = threading.Thread(target=worker)
    w.start()
    assert stored.wait(10)
    i = threading.Thread(target=ingest, args=(found,))
    i.start()
    blocked = eventually(
        lambda: advisory_waiters(db) == 1,
        what="the ingest blocked on the name lock",
    )
    assert blocked and not found
    release.set()
    w.join(10)
    i.join(10)
    assert not w.is_alive() and not i.is_alive()
    return found


def test_lock_protocol__ingest_waits_for_a_wait_being_stored_then_sees_it(db: Database) -> None:
    """The worker stores a wait under the shared name lock while an event is ingested: the
    ingest's exclusive lock waits for the worker's commit, so its lookup sees the wait."""
    [run_id] = waiting_runs(db, 1, name="other/name")  # a run row to hang the wait on
    execute(db, "DELETE FROM orchestrator.waits")

    def ingest(found: list[list[waits.Candidate]]) -> None:
        with db.transaction() as conn:
            waits.lock_names(conn, ["payment/received"], shared=False)
            now = datetime.now(UTC)
            found.append(waits.candidates(conn, ["payment/received"], [{"order_id": 7}], [now])())

    found = _ingest_beside_a_wait_being_stored(db, run_id, ingest)
    assert [c.run_id for c in found[0]] == [run_id]


def test_matching_since__sees_events_received_before_the_wait(db: Database) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data, received_at) VALUES "
        "('old', 'payment/received', '{\"order_id\": 7}', now() - interval '1 hour'), "
        "('new', 'payment/received', '{\"order_id\": 7}', now()), "
        "('other', 'payment/received', '{\"order_id\": 8}', now())",
    )
    with db.transaction() as conn:
        seen = events.matching_since(
            conn,
            "payment/received",
            since=datetime.now(UTC) - timedelta(minutes=1),
            match_path="data.order_id",
            match_value_json="7",
        )
    assert [e["id"] for e in seen] == ["new"]


def test_cancel__idle_and_running_runs_end_children_follow(db: Database) -> None:
    parent = str(uuid.uuid4())
    with db.transaction() as conn:
        runs.create_many(conn, [runs.NewRun("f", [{}], id=parent)])
    [claimed] = claim(db, OWNER)
    assert claimed.id == parent
    with db.transaction() as conn:
        child, grandchild = str(uuid.uuid4()), str(uuid.uuid4())
        runs.create_many(conn, [runs.NewRun("g", [{}], id=child, parent_run_id=parent)])
        runs.create_many(conn, [runs.NewRun("g", [{}], id=grandchild, parent_run_id=child)])
    with db.transaction() as conn:
        changed = {r.id: r.status for r in runs.cancel(conn, [parent], reason="test")}
    assert changed == {parent: "cancelled", child: "cancelled", grandchild: "cancelled"}
    rows = dict(
        execute(db, "SELECT id::text, cancel_requested_at IS NOT NULL FROM orchestrator.runs")
    )
    assert rows == {parent: True, child: True, grandchild: True}
    # the children had a parent: their end is recorded for it
    names = execute(db, "SELECT id FROM orchestrator.events ORDER BY id")
    assert [n[0] for n in names] == sorted([f"finished:{child}", f"finished:{grandchild}"])
    with db.transaction() as conn:  # again: nothing more changes
        assert runs.cancel(conn, [parent], reason="test") == []
    # a run whose cancellation was requested is never claimed again
    execute(
        db, "UPDATE orchestrator.runs SET status = 'queued', due_at = now() WHERE id = :p", p=parent
    )
    assert claim(db, OWNER) == []


def test_create_many__records_cancel_on_conditions_with_the_triggers_value(db: Database) -> None:
    watch = runs.CancelWatch("f", 0, "order/cancelled", "data.order.id", None, 60.0)
    with db.transaction() as conn:
        [run_id] = runs.create_many(
            conn,
            [runs.NewRun("f", [{"data": {"order": {"id": 9}}}], idempotency_key="k")],
            [watch],
        )
    [(step_id, kind, name, path, value, expires)] = execute(
        db,
        "SELECT step_id, kind, event_name, match_path, match_value, "
        "expires_at - since FROM orchestrator.waits WHERE run_id = CAST(:r AS uuid)",
        r=run_id,
    )
    assert (step_id, kind, name, path, value) == (
        "#cancel/0",
        "cancel",
        "order/cancelled",
        "data.order.id",
        9,
    )
    assert expires == timedelta(seconds=60)


def test_cancel_requested__ends_idle_and_running_runs_and_their_children_once(
    db: Database,
) -> None:
    parent, child, idle = (str(uuid.uuid4()) for _ in range(3))
    with db.transaction() as conn:
        runs.create_many(conn, [runs.NewRun("f", [{}], id=parent)])
    [claimed] = claim(db, OWNER)
    with db.transaction() as conn:
        runs.create_many(conn, [runs.NewRun("g", [{}], id=child, parent_run_id=parent)])
        runs.create_many(conn, [runs.NewRun("g", [{}], id=idle)])
    execute(
        db,
        "UPDATE orchestrator.runs SET cancel_requested_at = now() "
        "WHERE id IN (CAST(:p AS uuid), CAST(:i AS uuid))",
        p=claimed.id,
        i=idle,
    )
    with db.transaction() as conn:
        changed = {r.id: r.status for r in runs.cancel_requested(conn)}
    assert changed == {parent: "cancelled", child: "cancelled", idle: "cancelled"}
    with db.transaction() as conn:  # applied once
        assert runs.cancel_requested(conn) == []
    [(status, token)] = execute(
        db,
        "SELECT status, lease_token FROM orchestrator.runs WHERE id = CAST(:p AS uuid)",
        p=parent,
    )
    assert (status, token) == ("cancelled", None)


def test_resolve__its_generic_plan_joins_by_index_not_every_pair(db: Database) -> None:
    """The ingest runs its statements with generic plans, which take an array parameter of
    any length for ten rows: a join of two of the statement's CTEs was then a nested loop
    comparing every pair (250,000 comparisons for 500 events, most of the batch's time)."""
    ids = waiting_runs(db, 500)
    event = json.dumps({"id": "e", "name": "payment/received", "data": {}, "ts": "t"})
    args = {"runs": ids, "steps": ["paid"] * len(ids), "events": [event] * len(ids)}
    args |= {"branches": [0] * len(ids), "finished": "orchestrator/function.finished"}
    types = {"runs": "uuid[]", "steps": "text[]", "events": "jsonb[]", "branches": "int[]"}
    types |= {"finished": "text", "now": "timestamptz"}
    args["now"] = None
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        plan = generic_plan(conn, waits._RESOLVE, args, types)
    assert "Update on runs" in plan and "rows=500" in plan, plan
    assert most_removed_by_join(plan) < len(ids), plan


def _waiting_runs_that_consumed_events(db: Database) -> None:
    """2,000 waiting runs (`waiting_runs`), each with five completed wait steps that consumed
    events `old1`-`old5`, and run 7's first one event `e7`."""
    ids = waiting_runs(db, 2000)
    execute(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, event_id) "
        "SELECT r, 's' || k, k, 'wait', 'completed', 'old' || k "
        "FROM unnest(CAST(:ids AS uuid[])) AS r, generate_series(1, 5) AS k",
        ids=ids,
    )
    execute(
        db,
        "UPDATE orchestrator.steps SET event_id = 'e7' WHERE step_id = 's1' "
        "AND run_id = CAST(:r AS uuid)",
        r=ids[7],
    )


def test_candidates__its_generic_plan_skips_consumed_events_by_index(db: Database) -> None:
    """The check that a run did not consume the event already is a probe of `steps_event`
    per candidate, not a scan of every step."""
    _waiting_runs_that_consumed_events(db)
    execute(db, "ANALYZE orchestrator.steps")
    n = 500
    args = {
        "names": ["payment/received"] * n,
        "datas": [json.dumps({"order_id": i}) for i in range(n)],
        "received": [datetime.now(UTC)] * n,
        "ids": [f"e{i}" for i in range(n)],
    }
    types = {"names": "text[]", "datas": "jsonb[]", "received": "timestamptz[]", "ids": "text[]"}
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        plan = generic_plan(conn, waits._CANDIDATES, args, types)
    assert "steps_event" in plan and "Seq Scan on steps" not in plan, plan
    assert "hashed SubPlan" not in plan, plan  # a probe per candidate, not a read of them all
    assert "rows=499" in plan.splitlines()[0], plan  # every order but 7, consumed by its run


def _take_and_look_up(url: str, found: list[list[waits.Candidate]]) -> None:
    """The ingest's first round trip: take the pending events with their names' locks, and
    look up the waits they match, pipelined."""
    with psycopg.connect(url, autocommit=True) as conn, conn.pipeline(), conn.transaction():
        taking = events.claim_pending_sent(
            conn, 10, max_bytes=2**20, lock_class=waits.WAIT_LOCK_CLASS
        )
        finding = waits.candidates_pending(conn, max_bytes=2**20)
        taken = taking()
        found.append(finding({ev.seq: i for i, ev in enumerate(taken)}))


def test_lock_protocol__one_round_trip_ingest_waits_for_a_wait_being_stored_then_sees_it(
    db: Database,
) -> None:
    """The same with the lookup sent in the round trip that takes the events: it is a
    statement of its own, so its snapshot is taken after the locks were granted."""
    [run_id] = waiting_runs(db, 1, name="other/name")
    execute(db, "DELETE FROM orchestrator.waits")
    execute(
        db,
        "INSERT INTO orchestrator.events (name, data) VALUES ('payment/received', "
        "'{\"order_id\": 7}')",
    )
    url = libpq_url(db.url)
    found = _ingest_beside_a_wait_being_stored(db, run_id, lambda f: _take_and_look_up(url, f))
    assert [(c.event_index, c.run_id, c.step_id) for c in found[0]] == [(0, run_id, "paid")]


def test_candidates_pending__finds_what_candidates_finds_for_the_events_taken(
    db: Database,
) -> None:
    """The lookup by the events this transaction took gives the rows the lookup by value
    gives, by their position among the events; an oversize event is left out (it is parked
    unread), and so are events taken by no one."""
    waiting_runs(db, 20)
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data) SELECT 'e' || i, 'payment/received', "
        "jsonb_build_object('order_id', i, 'pad', repeat('x', CASE WHEN i = 3 THEN 500 "
        "ELSE 0 END)) FROM generate_series(1, 6) AS i",
    )
    url = libpq_url(db.url)
    with psycopg.connect(url, autocommit=True) as conn, conn.pipeline(), conn.transaction():
        taking = events.claim_pending_sent(conn, 4, max_bytes=200, lock_class=waits.WAIT_LOCK_CLASS)
        finding = waits.candidates_pending(conn, max_bytes=200)
        taken = taking()
        accepted = [ev for ev in taken if ev.size <= 200]
        got = finding({ev.seq: i for i, ev in enumerate(accepted)})
        expected = waits.candidates(
            conn,
            [ev.name for ev in accepted],
            [ev.data for ev in accepted],
            [ev.received_at for ev in accepted],
            [ev.id for ev in accepted],
        )()
    assert [ev.id for ev in taken] == ["e1", "e2", "e3", "e4"]
    assert [ev.data is None for ev in taken] == [False, False, True, False]
    assert got == expected and len(got) == 3, got  # orders 1, 2 and 4; not 3, 5 or 6
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        # a transaction that took nothing looks up nothing
        assert waits.candidates_pending(conn, max_bytes=200)({}) == []


def test_candidates_pending__its_generic_plan_reads_the_events_and_waits_by_index(
    db: Database,
) -> None:
    """The events by `events_seq`, the consumption check a probe of `steps_event` per
    candidate (as `candidates`)."""
    _waiting_runs_that_consumed_events(db)
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data, ingested_at) SELECT 'e' || i, "
        "'payment/received', jsonb_build_object('order_id', i), now() "
        "FROM generate_series(0, 9999) AS i",
    )
    execute(db, "ANALYZE orchestrator.steps")
    (seqs,) = execute(
        db, "SELECT array_agg(seq)::text FROM orchestrator.events WHERE id ~ '^e[0-9]{1,3}$'"
    )[0]
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        conn.execute("SELECT set_config('orchestrator.ingesting', %s, false)", (seqs,))
        plan = generic_plan(
            conn, waits._CANDIDATES_PENDING, {"max_bytes": 2**20}, {"max_bytes": "int"}
        )
    assert "events_seq" in plan and "Seq Scan on events" not in plan, plan
    assert "steps_event" in plan and "Seq Scan on steps" not in plan, plan
    assert "hashed SubPlan" not in plan, plan
    assert "rows=999" in plan.splitlines()[0], plan  # orders 0-999 but 7, consumed by its run


def test_cancels_since__its_generic_plan_probes_by_index(db: Database) -> None:
    """The look back of new runs' cancel_on conditions at events already ingested: the runs
    by `runs_event`, their conditions by `waits_pkey`, the events by `events_name_received`,
    never a scan."""
    execute(
        db,
        "INSERT INTO orchestrator.runs (function_id, event_id, events, status) "
        "SELECT 'f', 't' || i, jsonb_build_array(jsonb_build_object('data', "
        "jsonb_build_object('id', i))), 'queued' FROM generate_series(0, 1999) AS i",
    )
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) SELECT id, '#cancel/0', 'cancel', 'order/cancelled', 'data.id', "
        "events -> 0 -> 'data' -> 'id', now() - interval '1 hour' FROM orchestrator.runs",
    )
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data, ingested_at) SELECT 'c' || i, "
        "'order/cancelled', jsonb_build_object('id', i), now() FROM generate_series(0, 9999) i",
    )
    execute(db, "ANALYZE orchestrator.runs")
    execute(db, "ANALYZE orchestrator.events")
    execute(db, "ANALYZE orchestrator.waits")
    eids = [f"t{i}" for i in range(100)]
    with psycopg.connect(libpq_url(db.url), autocommit=True) as conn:
        plan = generic_plan(conn, waits._CANCELS_SINCE, {"eids": eids}, {"eids": "text[]"})
        with conn.transaction():
            found = waits.cancels_since(conn, eids)()
    assert "runs_event" in plan and "Seq Scan on runs" not in plan, plan
    assert "events_name_received" in plan and "Seq Scan on events" not in plan, plan
    assert "waits_pkey" in plan and "Seq Scan on waits" not in plan, plan
    assert "rows=100" in plan.splitlines()[0], plan
    assert len(found) == 100
    assert {(f.event["id"], f.event["data"]["id"]) for f in found} == {
        (f"c{i}", i) for i in range(100)
    }
