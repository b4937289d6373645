"""The dashboard's reads walk indexes, never the whole runs table (EXPLAIN ANALYZE of the very
statements db/ui.py sends, with their parameters).

The tables hold representative rows, analysed: 60,000 runs of 20 functions over 30 days,
statuses as a busy system has them (mostly completed, a few in every other status), one
function of 40 runs, and each run's trigger event and one step (a wait for the waiting ones
and the newest third); and a run of 1,000 steps. Each statement
is explained as sent (custom plan) and, for the runs list, also as its generic plan (the
driver prepares a statement it sees five times, and Postgres may then keep a generic plan).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Connection, event, text

from orchestrator.db import clones, ui
from orchestrator.db.database import Database
from orchestrator.db.direct import driver
from tests.conftest import with_database

pytestmark = pytest.mark.timeout(180)

RUNS = 60_000
BIG_RUN = "00000000-0000-4000-8000-00000000b16e"

_FILL = [
    "INSERT INTO orchestrator.functions (id, options) SELECT 'fn-' || lpad(g::text, 2, '0'), "
    '\'{"concurrency": [{"limit": 5}]}\' FROM generate_series(0, 19) g',
    "INSERT INTO orchestrator.runs (function_id, status, event_id, events, attempts, "
    "created_at, started_at, finished_at, updated_at, due_at) "
    "SELECT CASE WHEN i <= 40 THEN 'rare' ELSE 'fn-' || lpad((i %% 20)::text, 2, '0') END, "
    "s.status, 'ev-' || i, jsonb_build_array(jsonb_build_object('id', 'ev-' || i, 'name', "
    "'shop/order.' || (i %% 50), 'data', jsonb_build_object('user_id', i %% 1000))), 1, t, "
    "t + interval '10 ms', CASE WHEN s.status IN ('completed', 'failed', 'cancelled') "
    "THEN t + interval '1 s' END, t, t "
    "FROM (SELECT i, now() - interval '30 days' + i * (interval '30 days' / %(n)s) AS t "
    "      FROM generate_series(1, %(n)s) i) g "
    "CROSS JOIN LATERAL (SELECT CASE WHEN i %% 1000 = 0 THEN 'queued' "
    "WHEN i %% 1000 = 1 THEN 'running' WHEN i %% 1000 = 2 THEN 'sleeping' "
    "WHEN i %% 1000 = 3 THEN 'waiting' WHEN i %% 1000 < 24 THEN 'failed' "
    "WHEN i %% 1000 < 26 THEN 'cancelled' ELSE 'completed' END AS status) s",
    "INSERT INTO orchestrator.events (id, name, data, ts, received_at, ingested_at, error) "
    "SELECT 'ev-' || i, 'shop/order.' || (i %% 50), '{}', now(), now(), now(), "
    "CASE WHEN i %% 1000 = 500 THEN 'no function' END FROM generate_series(1, %(n)s) i",
    "INSERT INTO orchestrator.runs (id, function_id, status, attempts, created_at, due_at) "
    "VALUES (%(big)s, 'fn-00', 'running', 1, now(), now())",
    "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, output, "
    "duration_ms) SELECT %(big)s, 'step-' || p, p, 'run', 'completed', '{\"n\": 1}', 5 "
    "FROM generate_series(0, 999) p",
    "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) "
    "SELECT id, 'only', 0, 'run', 'completed' FROM orchestrator.runs WHERE id <> %(big)s",
    "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, since) "
    "SELECT id, 'only', 'event', 'shop/approved', now() FROM orchestrator.runs "
    "WHERE status = 'waiting' OR id = %(big)s OR created_at > now() - interval '10 days'",
    "INSERT INTO orchestrator.ui_actions (actor, via, action, run_id) "
    "SELECT 'ada', 'cli', 'replay', id FROM orchestrator.runs LIMIT 1000",
]


@pytest.fixture(scope="module")
def filled(module_db_url: str) -> Iterator[Database]:
    """One database for the module: the rows take seconds to write, and nothing here writes."""
    database = Database(module_db_url, pool_size=2)
    with database.transaction() as conn:
        raw = driver(conn)
        for statement in _FILL:
            raw.execute(statement, {"n": RUNS, "big": BIG_RUN})
    with database.engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE"))
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def module_db_url(server_url: str, clone_pool: clones.Clones) -> Iterator[str]:
    name = clone_pool.take()
    yield with_database(server_url, name)
    clone_pool.give_back(name)


Sent = tuple[str, dict[str, Any]]


def statements(db: Database, read: Callable[[Connection], Any]) -> list[Sent]:
    """The statements `read` sends (but the JIT setting and the path check's savepoint)."""
    sent: list[Sent] = []

    def capture(_c: Any, _cur: Any, stmt: str, params: Any, _ctx: Any, _many: bool) -> None:
        if "set_config(" not in stmt and "AS jsonpath)\n" not in stmt + "\n":
            sent.append((stmt, dict(params or {})))

    event.listen(db.engine, "before_cursor_execute", capture)
    try:
        with db.transaction() as conn:
            read(conn)
    finally:
        event.remove(db.engine, "before_cursor_execute", capture)
    return [(s, p) for s, p in sent if not s.lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))]


def plans(db: Database, read: Callable[[Connection], Any]) -> list[str]:
    found = []
    for stmt, params in statements(db, read):
        with db.transaction() as conn:
            rows = driver(conn).execute("EXPLAIN (ANALYZE, COSTS OFF) " + stmt, params)
            found.append("\n".join(str(row[0]) for row in rows))
    return found


def removed(plan: str) -> int:
    """The most rows a node read and threw away."""
    counts = [int(n) for n in re.findall(r"Rows Removed by (?:Filter|Index Recheck): (\d+)", plan)]
    return max(counts, default=0)


def most_rows(plan: str) -> int:
    """The most rows a node of the plan produced (per loop)."""
    return max(map(int, re.findall(r"actual time=\S+ rows=(\d+)", plan)), default=0)


def assert_indexed(plan: str, *indexes: str, most_read: int = 5_000) -> None:
    """These indexes used, and no node producing or throwing away more than `most_read`
    rows: the work is bounded whatever the tables' size (a sequential scan stopped by a
    LIMIT after a few rows is bounded too)."""
    for index in indexes:
        assert re.search(rf"(Index|Index Only) Scan(?: Backward)? using {index} ", plan) or (
            f"Bitmap Index Scan on {index} " in plan
        ), f"{index} not used:\n{plan}"
    assert removed(plan) <= most_read, plan
    assert most_rows(plan) <= most_read, plan


def newest(db: Database) -> ui.RunPage:
    with db.transaction() as conn:
        return ui.list_runs(conn, ui.RunFilter(limit=500))


LIST_CASES: dict[str, tuple[Callable[[ui.RunPage], ui.RunFilter], tuple[str, ...]]] = {
    "no filter": (lambda p: ui.RunFilter(), ("runs_created",)),
    "cursor": (lambda p: ui.RunFilter(before=p.next_cursor), ("runs_created",)),
    "a rare function": (lambda p: ui.RunFilter(function_id="rare"), ()),
    "a common function": (lambda p: ui.RunFilter(function_id="fn-07"), ()),
    "a rare status": (lambda p: ui.RunFilter(status="queued"), ("runs_status_created",)),
    "a common status": (lambda p: ui.RunFilter(status="completed"), ()),
    "function and status": (lambda p: ui.RunFilter(function_id="fn-03", status="failed"), ()),
    "time range": (
        lambda p: ui.RunFilter(
            since=p.runs[-1].created_at - timedelta(days=9),
            until=p.runs[-1].created_at - timedelta(days=8),
        ),
        ("runs_created",),
    ),
    "event name": (
        lambda p: ui.RunFilter(event_name="shop/order.7"),
        ("runs_event_name_created",),
    ),
    "event name and cursor": (
        lambda p: ui.RunFilter(event_name="shop/order.7", before=p.next_cursor),
        ("runs_event_name_created",),
    ),
    "run id prefix": (lambda p: ui.RunFilter(id_prefix=p.runs[9].id[:5]), ("runs_pkey",)),
    "event id prefix": (lambda p: ui.RunFilter(id_prefix="ev-1234"), ("runs_event",)),
    "data path": (lambda p: ui.RunFilter(data_path="$.user_id == 7"), ("runs_created",)),
}


@pytest.mark.parametrize("case", LIST_CASES)
def test_list_runs__walks_an_index(filled: Database, case: str) -> None:
    make, indexes = LIST_CASES[case]
    f = make(newest(filled))
    [plan] = plans(filled, lambda conn: ui.list_runs(conn, f))
    # a data path examines SCAN_WINDOW runs; anything else a page and what filters drop
    assert_indexed(plan, *indexes, most_read=ui.SCAN_WINDOW + 1 if f.data_path else 5_000)


def test_reads__plan_each_statement_with_its_values_and_without_jit(filled: Database) -> None:
    # Why (db/ui.py): a generic plan of `status = $1` walks runs_created and filters, since
    # the average status is common, reading every run to find the rare queued ones; and JIT
    # compiles the run_queue view's expressions for a second.
    with filled.transaction() as conn:
        ui.list_runs(conn, ui.RunFilter(status="queued"))
        settings = {name: conn.execute(text(f"SHOW {name}")).scalar() for name in ui.READ_SETTINGS}
    assert settings == ui.READ_SETTINGS


COUNT_CASES: dict[str, ui.RunFilter] = {
    "no filter": ui.RunFilter(),
    "a function": ui.RunFilter(function_id="fn-07"),
    "a rare function": ui.RunFilter(function_id="rare"),
    "event name": ui.RunFilter(event_name="shop/order.7"),
}


@pytest.mark.parametrize("case", COUNT_CASES)
def test_status_counts__each_status_by_an_index(filled: Database, case: str) -> None:
    [plan] = plans(filled, lambda conn: ui.status_counts(conn, COUNT_CASES[case]))
    # one capped count per status, none reading more than the cap and what filters drop
    assert plan.count("->  Limit") == len(ui.RUN_STATUSES), plan
    assert_indexed(plan, most_read=ui.COUNT_CAP + 5_000)


def test_run_detail__of_a_run_of_1000_steps_reads_by_keys(filled: Database) -> None:
    found = plans(filled, lambda conn: ui.run_detail(conn, BIG_RUN))
    expected = ["runs_pkey", "steps_pkey", "waits_pkey", "runs_parent", "runs_origin_run",
                "ui_actions_run"]  # fmt: skip
    joined = "\n".join(found)
    for plan in found:
        assert_indexed(plan)
    for index in expected:
        assert f"using {index} " in joined or f"on {index} " in joined, (index, joined)


def test_run_detail__of_a_plain_run_reads_its_event_and_lineage_by_keys(
    filled: Database,
) -> None:
    rid = newest(filled).runs[0].id
    joined = "\n".join(plans(filled, lambda conn: ui.run_detail(conn, rid)))
    assert "using events_pkey " in joined, joined
    assert not re.search(r"Seq Scan on (runs|steps|events|ui_actions) ", joined), joined


EVENT_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "newest": ({}, "events_seq"),
    "cursor": ({"before": "30000"}, "events_seq"),
    "parked": ({"parked": True}, "events_parked"),
    "a name": ({"name": "shop/order.7"}, "events_"),
}


@pytest.mark.parametrize("case", EVENT_CASES)
def test_list_events__walks_an_index_and_finds_runs_by_event(filled: Database, case: str) -> None:
    given, index = EVENT_CASES[case]
    [plan] = plans(filled, lambda conn: ui.list_events(conn, **given))
    assert_indexed(plan, "runs_event")
    assert re.search(rf"Index Scan Backward using {index}", plan), plan


def test_function_stats__reads_by_index(filled: Database) -> None:
    joined = "\n".join(plans(filled, lambda conn: ui.function_stats(conn, "fn-07")))
    assert not re.search(r"Seq Scan on runs ", joined), joined
    assert re.search(r"(using|on) runs_function_finished ", joined), joined
