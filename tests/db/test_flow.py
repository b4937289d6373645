"""Flow control against the database: claims counted under the function's lock, the claim's
plan, the rate state's row locks, idempotency keys across transactions, buffered events,
and the ingest's admission (rate limit, singleton, idempotency)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
import structlog

from orchestrator import Batch, Concurrency, Orchestrator, RateLimit, Singleton, cron, event
from orchestrator.db import buffers, flow, functions, idempotency, limiters, runs
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct, driver, set_local
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.flow import FlowClaimer
from orchestrator.runtime.ingest import Ingester
from tests.db.helpers import execute, wait_until_blocked

pytestmark = pytest.mark.timeout(60)

OWNERS = ("00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b")
LOG = structlog.get_logger()


def _app() -> Orchestrator:
    app = Orchestrator(database_url="postgresql://unused/x")
    noop = lambda ctx: None  # noqa: E731 (bodies never run here)
    app.function("limited", trigger=event("l"), concurrency=Concurrency(3))(noop)
    app.function("keyed", trigger=event("k"), concurrency=Concurrency(1, key="event.data.k"))(noop)
    app.function("rated", trigger=event("r"), rate_limit=RateLimit(5, timedelta(minutes=1)))(noop)
    app.function("single", trigger=event("s"), singleton=Singleton(key="event.data.u"))(noop)
    app.function("once", trigger=event("o"), idempotency="event.data.order")(noop)
    app.function("batched", trigger=event("b"), batch_events=Batch(100, timedelta(hours=1)))(noop)
    return app


@pytest.fixture
def claimers(db: Database) -> Iterator[list[FlowClaimer]]:
    registry = _app().functions
    directs = [
        Direct(db.url, application_name="test-flow", settings=runs.CLAIM_SETTINGS) for _ in OWNERS
    ]
    yield [
        FlowClaimer(d, registry, owner=o, lease_seconds=30, poll_interval=0.5, log=LOG)
        for d, o in zip(directs, OWNERS, strict=True)
    ]
    for d in directs:
        d.close()


def _queue(db: Database, fid: str, keys: list[str | None]) -> list[str]:
    with db.transaction() as conn:
        new = [
            runs.NewRun(fid, [{"i": i}], concurrency_keys=None if k is None else [k], flow_key=k)
            for i, k in enumerate(keys)
        ]
        return runs.create_many(conn, new)


def _running(db: Database, fid: str) -> int:
    rows = execute(
        db,
        "SELECT count(*) FROM orchestrator.runs WHERE function_id = :f AND status = 'running'",
        f=fid,
    )
    return int(rows[0][0])


def test_flow_claim__two_daemons_at_once_take_the_limit_together(
    db: Database, claimers: list[FlowClaimer]
) -> None:
    _queue(db, "limited", [None] * 40)

    def claim(c: FlowClaimer, barrier: threading.Barrier) -> None:
        barrier.wait()
        c.claim({False: 10})
        c.poke()

    for _ in range(5):
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=claim, args=(c, barrier)) for c in claimers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert _running(db, "limited") == 3
        # one ends; the next round may take exactly one more
        execute(
            db,
            "UPDATE orchestrator.runs SET status = 'completed', finished_at = now() WHERE id = "
            "(SELECT id FROM orchestrator.runs WHERE function_id = 'limited' AND "
            "status = 'running' LIMIT 1)",
        )


def test_flow_claim__keys_take_turns(db: Database, claimers: list[FlowClaimer]) -> None:
    _queue(db, "keyed", ["busy"] * 30 + ["a", "b", "c"])
    claimed = claimers[0].claim({False: 10})
    assert sorted(
        execute(db, "SELECT concurrency_keys[1] FROM orchestrator.runs WHERE status = 'running'")
    ) == [("a",), ("b",), ("busy",), ("c",)]
    assert len(claimed) == 4


def test_flow_claim__runs_without_a_flow_key_are_not_left_behind(
    db: Database, claimers: list[FlowClaimer]
) -> None:
    _queue(db, "keyed", ["a"])
    execute(db, "INSERT INTO orchestrator.runs (function_id) VALUES ('keyed')")  # older code
    assert len(claimers[0].claim({False: 10})) == 2  # "a", and the empty key


def test_flow_claim__keyed_candidates_skip_scan_the_keys(db: Database) -> None:
    _queue(db, "keyed", [f"k{i % 20:02}" for i in range(400)])
    execute(db, "ANALYZE orchestrator.runs")
    with db.transaction() as conn:
        set_local(conn, runs.CLAIM_SETTINGS)
        params = {"fid": "keyed", "suspects": False, "per_key": 1, "keys": 256, "after": None}
        params["now"] = None
        plan = (
            driver(conn)
            .execute("EXPLAIN (FORMAT JSON) " + flow._heads_sql(False, after=False), params)
            .fetchone()
        )
        got, last = flow.fair_candidates(conn, "keyed", after=None, keys=256, per_key=1)
    assert "runs_flow_key" in json.dumps(plan)
    assert "Seq Scan" not in json.dumps(plan)
    assert sorted(c.concurrency_keys[0] for c in got if c.concurrency_keys) == [
        f"k{i:02}" for i in range(20)
    ]  # one run of each key
    assert last is None  # every key was read: the next claim starts from the first again


def test_flow_claim__keyed_candidates_go_round_the_keys(db: Database) -> None:
    _queue(db, "keyed", [f"k{i:02}" for i in range(30)])
    seen: list[str] = []
    after = None
    with db.transaction() as conn:
        for _ in range(4):
            got, after = flow.fair_candidates(conn, "keyed", after=after, keys=8, per_key=1)
            assert len(got) == 8
            seen += [c.concurrency_keys[0] for c in got if c.concurrency_keys]
    assert set(seen) == {f"k{i:02}" for i in range(30)}  # 4 claims of 8 keys: all 30, wrapped


def test_flow_claim__candidates_walk_the_function_due_index(db: Database) -> None:
    _queue(db, "limited", [None] * 50)
    execute(db, "ANALYZE orchestrator.runs")
    with db.transaction() as conn:
        raw = driver(conn)
        set_local(conn, runs.CLAIM_SETTINGS)  # as on the daemon's claim connection
        sql = flow._candidates_sql(False)
        params = {"fid": "limited", "suspects": False, "n": 10, "now": None}
        plan = "\n".join(r[0] for r in raw.execute("EXPLAIN " + sql, params).fetchall())
    assert "runs_function_due" in plan


def test_limiters__rate_state_rows_are_locked_until_commit(db: Database) -> None:
    url = libpq_url(db.url)
    with psycopg.connect(url) as first, psycopg.connect(url) as second:
        limiters.load(first, "rated", "rate_limit", ["k"], lock=True)
        second.execute("SET lock_timeout = '200ms'")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            limiters.load(second, "rated", "rate_limit", ["k"], lock=True)
        second.rollback()
        first.commit()
        now, state = limiters.load(second, "rated", "rate_limit", ["k"], lock=True)
        assert state["k"] == limiters.NEVER and now > limiters.NEVER


def test_idempotency__a_key_is_new_once_until_it_expires(db: Database) -> None:
    url = libpq_url(db.url)
    with psycopg.connect(url) as first, psycopg.connect(url) as second:
        assert idempotency.claim(first, [("once", "7", "e1", 3600.0)]) == {("once", "7")}
        result: list[set[tuple[str, str]]] = []
        waiter = threading.Thread(
            target=lambda: result.append(idempotency.claim(second, [("once", "7", "e2", 3600)]))
        )
        waiter.start()
        # it waits for the first transaction to decide
        [waiting] = wait_until_blocked(db, first.info.backend_pid, "the second claim waiting")
        assert waiting == second.info.backend_pid and result == []
        first.commit()
        waiter.join(5)
        assert result == [set()]
        second.commit()
    execute(db, "UPDATE orchestrator.idempotency_keys SET expires_at = now() - interval '1s'")
    with db.transaction() as conn:
        assert idempotency.claim(conn, [("once", "7", "e3", 60.0)]) == {("once", "7")}


def test_buffers__taken_oldest_first_and_deleted(db: Database) -> None:
    with db.transaction() as conn:
        now = functions.db_now(conn)
        buffers.add(
            conn,
            [buffers.Buffered("b", "k", f"e{i}", 100 - i, {"i": i}, now) for i in range(5)],
        )
        _, groups = buffers.groups(conn, "b")
        assert [(g.key, g.count) for g in groups] == [("k", 5)]
        taken = buffers.take(conn, "b", "k", 3)
        assert [t.event["i"] for t in taken] == [4, 3, 2]  # by seq, oldest first
        assert buffers.groups(conn, "b")[1][0].count == 2


@pytest.fixture
def ingester(db: Database) -> Iterator[Ingester]:
    with db.transaction() as conn:
        for fid, fdef in _app().functions.items():
            desc = fdef.describe()
            functions.upsert(conn, fid, triggers=desc.pop("triggers"), options=desc, version="1")
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    yield Ingester(db, direct, batch_size=100, max_event_bytes=1024, log=LOG)
    direct.close()


def _send(db: Database, name: str, datas: list[dict[str, Any]]) -> None:
    for data in datas:
        execute(
            db,
            "INSERT INTO orchestrator.events (name, data) VALUES (:n, CAST(:d AS jsonb))",
            n=name,
            d=json.dumps(data),
        )


def _statuses(db: Database, fid: str) -> dict[str, int]:
    rows = execute(
        db,
        "SELECT status, count(*) FROM orchestrator.runs WHERE function_id = :f GROUP BY status",
        f=fid,
    )
    return {row[0]: int(row[1]) for row in rows}


def test_admission__rate_limit_skips_with_the_reason(db: Database, ingester: Ingester) -> None:
    _send(db, "r", [{"i": i} for i in range(8)])
    ingester.tick()
    _send(db, "r", [{"i": i} for i in range(8, 20)])
    ingester.tick()
    assert _statuses(db, "rated") == {"queued": 5, "skipped": 15}
    codes = execute(
        db, "SELECT DISTINCT error->>'code' FROM orchestrator.runs WHERE status = 'skipped'"
    )
    assert codes == [("rate_limited",)]


def test_admission__singleton_and_idempotency(db: Database, ingester: Ingester) -> None:
    _send(db, "s", [{"u": "a"}, {"u": "a"}, {"u": "b"}])
    _send(db, "o", [{"order": 1}, {"order": 1}, {"order": 2}])
    ingester.tick()
    _send(db, "s", [{"u": "a"}])
    _send(db, "o", [{"order": 1}])
    ingester.tick()
    assert _statuses(db, "single") == {"queued": 2, "skipped": 2}
    assert _statuses(db, "once") == {"queued": 2}
    # the database refuses a second active run of a key, whatever the ingest believed
    with pytest.raises(sqlalchemy.exc.IntegrityError, match="runs_singleton") as refused:
        execute(
            db,
            "INSERT INTO orchestrator.runs (function_id, singleton_key) VALUES ('single', 'a')",
        )
    assert isinstance(refused.value.orig, psycopg.errors.UniqueViolation)


def _batches(db: Database) -> list[list[int]]:
    rows = execute(
        db,
        "SELECT ARRAY(SELECT (e->'data'->>'n')::int FROM jsonb_array_elements(events) AS e) "
        "FROM orchestrator.runs WHERE function_id = 'batched' ORDER BY created_at",
    )
    return [list(row[0]) for row in rows]


def test_batch__full_batches_are_made_at_once__the_rest_waits_for_the_timeout(
    db: Database, ingester: Ingester, claimers: list[FlowClaimer]
) -> None:
    _send(db, "b", [{"n": n} for n in range(250)])
    while ingester.tick():
        pass
    claimer = claimers[0]
    assert len(claimer.claim({False: 10})) == 2  # the first claim after the ingest: no waiting
    assert _batches(db) == [list(range(100)), list(range(100, 200))]
    claimer.poke()
    assert claimer.claim({False: 10}) == []  # the other 50 wait for the batch timeout (an hour)
    buffered = "SELECT count(*) FROM orchestrator.buffered_events"
    assert execute(db, buffered)[0][0] == 50
    execute(db, "UPDATE orchestrator.buffered_events SET received_at = received_at - interval '1h'")
    claimer.poke()
    assert len(claimer.claim({False: 10})) == 1
    assert _batches(db)[2:] == [list(range(200, 250))]
    assert execute(db, buffered)[0][0] == 0


def _cron_app(**options: Any) -> dict[str, Any]:
    app = Orchestrator(database_url="postgresql://unused/x")
    app.function("tick", trigger=cron("* * * * *", **options))(lambda ctx: None)
    return app.functions


def _missed_minutes(db: Database, registry: dict[str, Any], minutes: int) -> CronScheduler:
    with db.transaction() as conn:
        fdef = registry["tick"]
        desc = fdef.describe()
        functions.upsert(conn, "tick", triggers=desc.pop("triggers"), options=desc, version="1")
    scheduler = CronScheduler(db, registry, LOG)
    scheduler.register()
    execute(
        db,
        "UPDATE orchestrator.schedules SET next_fire_at = date_trunc('minute', now()) "
        "- make_interval(mins => :m)",
        m=minutes,
    )
    return scheduler


def test_cron__catch_up_all_fires_each_missed_tick(db: Database) -> None:
    scheduler = _missed_minutes(db, _cron_app(catch_up="all"), 5)
    assert scheduler.tick() == 6  # the 5 missed minutes and the current one
    ticks = execute(db, "SELECT events->0->'data'->>'scheduled_at' FROM orchestrator.runs")
    assert len({t[0] for t in ticks}) == 6
    assert scheduler.tick() == 0  # nothing is due again until the next minute


def test_cron__overlap_skip_starts_nothing_while_a_run_is_active(db: Database) -> None:
    scheduler = _missed_minutes(db, _cron_app(catch_up="all", overlap="skip"), 3)
    assert scheduler.tick() == 1  # the first missed tick; the others meet it still active
    assert _statuses(db, "tick") == {"queued": 1}


def test_cron__overlap_cancel_previous_replaces_the_active_run(db: Database) -> None:
    scheduler = _missed_minutes(db, _cron_app(catch_up="all", overlap="cancel_previous"), 2)
    assert scheduler.tick() == 3
    assert _statuses(db, "tick") == {"cancelled": 2, "queued": 1}


def test_admission__singleton_made_meanwhile_elsewhere_is_recorded_skipped(
    db: Database, ingester: Ingester
) -> None:
    _send(db, "s", [{"u": "a"}])
    with psycopg.connect(libpq_url(db.url)) as other:  # a run of key "a", not yet committed
        other.execute(
            "INSERT INTO orchestrator.runs (function_id, singleton_key) VALUES ('single', 'a')"
        )
        ingest = threading.Thread(target=ingester.tick)
        ingest.start()
        # its insert waits on the unique index for the other transaction to decide
        wait_until_blocked(db, other.info.backend_pid, "the ingest waiting on runs_singleton")
        assert ingest.is_alive()
        other.commit()
        ingest.join(10)
        assert not ingest.is_alive()
    assert _statuses(db, "single") == {"queued": 1, "skipped": 1}
    message = execute(
        db, "SELECT error->>'message' FROM orchestrator.runs WHERE status = 'skipped'"
    )
    assert "at the same moment" in message[0][0]


def test_past_timeouts__start_counts_from_when_a_delayed_run_falls_due(db: Database) -> None:
    with db.transaction() as conn:
        made = runs.create_many(
            conn,
            [
                runs.NewRun("timed", [{"id": f"e{i}", "name": "x", "data": {}, "ts": ""}])
                for i in range(2)
            ],
        )
    # both made ten minutes ago; the second was started with a delay and falls due in an hour
    execute(
        db,
        "UPDATE orchestrator.runs SET created_at = now() - interval '10 minutes', "
        "due_at = now() - interval '10 minutes'",
    )
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() + interval '1 hour' WHERE id = :id",
        id=made[1],
    )
    with db.transaction() as conn:
        late = flow.past_timeouts(conn, "timed", start=60.0, finish=None)
    assert late == [(made[0], "start")]
