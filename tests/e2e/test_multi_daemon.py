"""Two daemons on one database split the work without losing or repeating any of it."""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta

import pytest

from tests.conftest import eventually
from tests.e2e.harness import count, scalar, sql, start_both

FLOWS = "tests.e2e.apps.flows:app"

pytestmark = pytest.mark.e2e

CRON_APP = "tests.e2e.apps.crons:app"
TICK = timedelta(seconds=2)


@pytest.mark.timeout(150)
def test_two_daemons__1000_runs__all_complete_no_step_twice(e2e_url, daemon_factory):
    total = 1000
    daemons = start_both(daemon_factory, FLOWS, concurrency=8)

    started = time.monotonic()
    sql(
        e2e_url,
        "INSERT INTO orchestrator.events (name, data) "
        "SELECT 'test/three', jsonb_build_object('n', g) FROM generate_series(1, %s) AS g",
        (total,),
    )
    eventually(
        lambda: (
            count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status='completed'")
            == total
        ),
        timeout=120,
        interval=0.25,
        what=f"{total} runs completed",
    )
    elapsed = time.monotonic() - started
    print(f"\n{total} runs x 3 steps on 2 daemons: {elapsed:.1f}s ({total / elapsed:.0f} runs/s)")

    assert count(e2e_url, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL") == 0
    statuses = dict(sql(e2e_url, "SELECT status, count(*) FROM orchestrator.runs GROUP BY 1"))
    assert statuses == {"completed": total}, "a run was lost or duplicated"
    assert (
        count(
            e2e_url,
            "SELECT count(*) FROM orchestrator.runs "
            """WHERE output = '{"steps": ["one", "two", "three"]}'::jsonb""",
        )
        == total
    )
    assert count(e2e_url, "SELECT count(DISTINCT event_id) FROM orchestrator.runs") == total

    assert count(e2e_url, "SELECT count(*) FROM effects") == 3 * total
    per_step = sql(
        e2e_url,
        "SELECT run_id, step, count(*) FROM effects GROUP BY 1, 2 HAVING count(*) <> 1 LIMIT 5",
    )
    assert per_step == [], f"step bodies executed more than once: {per_step}"
    assert (
        count(
            e2e_url,
            "SELECT count(*) FROM effects e JOIN orchestrator.runs r ON r.id::text = e.run_id",
        )
        == 3 * total
    )
    assert count(e2e_url, "SELECT coalesce(sum(recoveries), 0) FROM orchestrator.runs") == 0

    # both daemons took a share: each one's workers executed some step bodies
    pids = {pid for (pid,) in sql(e2e_url, "SELECT DISTINCT pid FROM effects")}
    for d in daemons:
        assert pids & set(d.worker_pids()), f"daemon {d.pid} executed nothing"


def fired_ticks(url: str) -> list[tuple[datetime, int, str]]:
    """(scheduled time, number of runs for it, idempotency key of one of them) per tick."""
    rows = sql(
        url,
        "SELECT events->0->'data'->>'scheduled_at', count(*), min(idempotency_key) "
        "FROM orchestrator.runs WHERE function_id = 'every-two-seconds' GROUP BY 1 ORDER BY 1",
    )
    return [(datetime.fromisoformat(at), n, key) for at, n, key in rows]


def assert_once_per_tick(url: str, since: datetime) -> list[datetime]:
    ticks = fired_ticks(url)
    dupes = [(at, n) for at, n, _ in ticks if n != 1]
    assert dupes == [], f"ticks fired more than once: {dupes}"
    for at, _, key in ticks:
        assert key == f"cron:{at.isoformat()}"
    return [at for at, _, _ in ticks if at > since]


def db_now(url: str) -> datetime:
    value: datetime = scalar(url, "SELECT now()")
    return value


@pytest.mark.timeout(60)
def test_cron__two_daemons__each_tick_fires_once(e2e_url, daemon_factory):
    daemons = start_both(daemon_factory, CRON_APP)
    both_serving = db_now(e2e_url)

    eventually(
        lambda: len(assert_once_per_tick(e2e_url, both_serving)) >= 4,
        timeout=30,
        interval=0.2,
        what="4 ticks fired while both daemons serve",
    )
    for d in daemons:
        assert d.proc is not None and d.proc.poll() is None, f"daemon {d.pid} exited"

    ticks = assert_once_per_tick(e2e_url, both_serving)
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert all(g == TICK for g in gaps), f"ticks skipped or doubled: {ticks}"
    assert all(t.microsecond == 0 and t.second % 2 == 0 for t in ticks), ticks

    eventually(
        lambda: _all_fired_completed(e2e_url, ticks[-1]),
        what="every fired tick's run completed",
    )
    effects = sql(e2e_url, "SELECT run_id, count(*) FROM effects GROUP BY 1 HAVING count(*) > 1")
    assert effects == [], f"a tick's step ran twice: {effects}"
    leaders = count(
        e2e_url, "SELECT count(*) FROM orchestrator.daemons WHERE status = 'running' AND is_leader"
    )
    assert leaders == 1


def _all_fired_completed(url: str, last: datetime) -> bool:
    return (
        count(
            url,
            "SELECT count(*) FROM orchestrator.runs WHERE status <> 'completed' "
            "AND (events->0->'data'->>'scheduled_at')::timestamptz <= %s",
            (last,),
        )
        == 0
    )


@pytest.mark.timeout(60)
def test_cron__leader_killed__successor_fires_each_tick_once(e2e_url, daemon_factory):
    daemons = start_both(daemon_factory, CRON_APP)
    leader_pid = eventually(
        lambda: scalar(
            e2e_url,
            "SELECT pid FROM orchestrator.daemons WHERE status = 'running' AND is_leader",
        ),
        what="a leader elected",
    )
    leader = next(d for d in daemons if d.pid == leader_pid)
    survivor = next(d for d in daemons if d is not leader)
    eventually(lambda: len(fired_ticks(e2e_url)) >= 1, what="a first tick fired")

    leader.kill9()
    killed_at = db_now(e2e_url)
    eventually(
        lambda: len(assert_once_per_tick(e2e_url, killed_at)) >= 3,
        timeout=30,
        interval=0.2,
        what="3 ticks fired by the survivor",
    )
    assert_once_per_tick(e2e_url, killed_at)
    fired_by_survivor = [
        e for e in survivor.log_events() if e.get("event") == "cron fired" and e.get("created")
    ]
    assert len(fired_by_survivor) >= 3
    # the run the dead leader may have held is rescued, so every fired tick completes
    last = fired_ticks(e2e_url)[-1][0]
    eventually(lambda: _all_fired_completed(e2e_url, last), what="fired ticks completed")
