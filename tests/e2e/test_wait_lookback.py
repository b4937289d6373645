"""Waits that look back, and waits for any of several events, end to end: the real daemon,
events sent by plain SQL, `kill -9` in the middle. Step-body executions are counted in
`public.effects` (written by the body on its own connection)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import eventually
from tests.e2e.harness import count, run_of, scalar, send, sql

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.lookback:app"


def status(url: str, run_id: str) -> str:
    return str(scalar(url, "SELECT status FROM orchestrator.runs WHERE id = %s", (run_id,)))


def effects(url: str, run_id: str) -> dict[str, int]:
    rows = sql(url, "SELECT step, count(*) FROM effects WHERE run_id = %s GROUP BY step", (run_id,))
    return dict(rows)


@pytest.mark.timeout(90)
def test_lookback__two_waits_in_a_row__second_event_early__kill9_between(e2e_url, daemon_factory):
    daemon = daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "doc/submitted", {"doc": 7}))
    eventually(lambda: status(e2e_url, run_id) == "waiting", what="waiting at 'first'")
    # both approvals arrive at once (one INSERT) while the first wait is pending: the second
    # before the first wait is resolved, and before the second wait begins
    [(e1,), (e2,)] = sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) SELECT 'doc/approved', "
        "jsonb_build_object('doc', 7, 'n', n) FROM generate_series(1, 2) AS n ORDER BY n "
        "RETURNING id",
    )
    assert scalar(e2e_url, "SELECT data FROM orchestrator.events WHERE id = %s", (e1,))["n"] == 1
    eventually(lambda: effects(e2e_url, run_id).get("between") == 1, what="inside 'between'")
    assert (
        scalar(
            e2e_url,
            "SELECT event_id FROM orchestrator.steps WHERE run_id = %s AND step_id = 'first'",
            (run_id,),
        )
        == e1
    )
    daemon.kill9()  # between the two waits: 'between' never checkpointed

    daemon_factory(APP)
    eventually(lambda: effects(e2e_url, run_id).get("between") == 2, timeout=30, what="rescued")
    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (f"{run_id}:between",))
    eventually(lambda: status(e2e_url, run_id) == "completed", timeout=30, what="completed")

    output = scalar(e2e_url, "SELECT output FROM orchestrator.runs WHERE id = %s", (run_id,))
    assert output == [e1, e2]  # e1 ended the first wait and never the second
    assert effects(e2e_url, run_id) == {"one": 1, "between": 2}  # 'one' completed: ran once
    consumed = sql(
        e2e_url,
        "SELECT step_id, event_id FROM orchestrator.steps WHERE run_id = %s AND kind = 'wait' "
        "ORDER BY position",
        (run_id,),
    )
    assert consumed == [("first", e1), ("second", e2)]


@pytest.mark.timeout(90)
def test_lookback__100_runs_whose_events_came_first__each_gets_its_own(e2e_url, daemon_factory):
    n = 100
    seeds = dict(
        sql(
            e2e_url,
            "INSERT INTO orchestrator.events (name, data) "
            "SELECT 'bird/seed', jsonb_build_object('k', k) FROM generate_series(1, %s) AS k "
            "RETURNING (data ->> 'k')::int, id",
            (n,),
        )
    )
    # the events above are all received before any run exists: only a look back sees them
    daemon_factory(APP, concurrency=8)
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'bird/start', jsonb_build_object('k', k) FROM generate_series(1, %s) AS k",
        (n,),
    )
    eventually(
        lambda: (
            count(
                e2e_url,
                "SELECT count(*) FROM orchestrator.runs WHERE function_id = 'early-bird' "
                "AND status = 'completed'",
            )
            == n
        ),
        timeout=60,
        what=f"{n} early birds completed",
    )

    outputs = sql(
        e2e_url,
        "SELECT (events -> 0 -> 'data' ->> 'k')::int, output FROM orchestrator.runs "
        "WHERE function_id = 'early-bird'",
    )
    assert len(outputs) == n
    assert {k: (o["k"], o["event_id"]) for k, o in outputs} == {k: (k, seeds[k]) for k in seeds}
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.waits") == 0  # none ever stored
    assert count(e2e_url, "SELECT count(*) FROM effects WHERE step = 'before'") == n


@pytest.mark.timeout(120)
def test_wait_for_any__1000_races__each_resolved_once__kill9_midway(e2e_url, daemon_factory):
    n, timeout = 1000, 8
    daemon = daemon_factory(APP, concurrency=16)
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) SELECT 'race/start', "
        "jsonb_build_object('k', k, 'timeout', %s) FROM generate_series(1, %s) AS k",
        (timeout, n),
    )
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'waiting'") == n
        ),
        timeout=60,
        interval=0.2,
        what=f"{n} runs waiting",
    )
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.waits") == 2 * n  # one per entry
    started = time.monotonic()

    def race(ks: str) -> None:  # both events for each k (b first for even k); none for k % 10 = 0
        sql(
            e2e_url,
            "INSERT INTO orchestrator.events (name, data) "
            "SELECT CASE WHEN (k + i) %% 2 = 0 THEN 'race/a' ELSE 'race/b' END, "
            "jsonb_build_object('k', k) "
            f"FROM generate_series(1, %s) AS k, generate_series(0, 1) AS i WHERE {ks} "
            "ORDER BY k, i",
            (n,),
        )

    race("k %% 10 <> 0 AND k <= 500")
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed'")
            > 100
        ),
        timeout=30,
        interval=0.05,
        what="some races resolved",
    )
    daemon.kill9()  # while the first half is being resolved and resumed
    at_kill = count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed'")
    race("k %% 10 <> 0 AND k > 500")  # received while no daemon runs
    daemon_factory(APP, concurrency=16)
    daemon_factory(APP, concurrency=16)  # two ingests: 'race/a' and 'race/b' at once
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed'") == n
        ),
        timeout=60,
        interval=0.25,
        what=f"{n} races completed",
    )
    rescued = count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE recoveries > 0")
    print(
        f"\n{n} races resolved in {time.monotonic() - started:.1f}s after the events; "
        f"{at_kill} completed at the kill, {rescued} rescued from the dead daemon"
    )

    rows = sql(
        e2e_url,
        "SELECT (r.events -> 0 -> 'data' ->> 'k')::int, r.output, s.status, s.output, s.event_id,"
        "       (SELECT count(*) FROM orchestrator.steps x "
        "        WHERE x.run_id = r.id AND x.kind = 'wait_any') "
        "FROM orchestrator.runs r JOIN orchestrator.steps s ON s.run_id = r.id "
        "AND s.step_id = 'pick' WHERE r.function_id = 'racer'",
    )
    sent: dict[int, dict[str, str]] = {}
    for k, name, event_id in sql(
        e2e_url,
        "SELECT (data ->> 'k')::int, name, id FROM orchestrator.events "
        "WHERE name IN ('race/a', 'race/b') ORDER BY seq",
    ):
        sent.setdefault(k, {})[event_id] = name
    assert len(rows) == n
    in_order = 0
    for k, output, step_status, recorded, event_id, picks in rows:
        assert (step_status, picks) == ("completed", 1), k
        if k % 10 == 0:  # no event: the timeout won
            assert (output, recorded, event_id) == (None, None, None), k
            continue
        # one of its two events won (the first received, unless two daemons ingested them
        # at once: then the first to commit), and the run returned what the step recorded
        assert event_id in sent[k] and recorded["event"]["id"] == event_id, k
        key = ["race/a", "race/b"][recorded["index"]]
        assert sent[k][event_id] == key, k
        assert output == {"index": recorded["index"], "key": key, "event_id": event_id}, k
        in_order += event_id == next(iter(sent[k]))
    print(f"{in_order} of {n - n // 10} won by the event received first")
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.waits") == 0
    # every run's 'before' completed before the kill, and ran once
    assert sql(e2e_url, "SELECT count(*), count(DISTINCT run_id) FROM effects") == [(n, n)]
