"""The ingest of plain events in SQL (db/plain_ingest.py) against the ingest in Python: the
same runs, and every batch it must not take left to the other."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import structlog

from orchestrator.db import functions, plain_ingest, runs
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.runtime.ingest import Ingester
from tests.db.helpers import execute
from tests.db.plans import generic_plan

pytestmark = pytest.mark.timeout(60)

RUN_ROW = (
    "SELECT function_id, event_id, events, idempotency_key, status, priority, parent_run_id, "
    "concurrency_keys, throttle_key, singleton_key, flow_key, error, finished_at, attempts, "
    "trace_context, due_at = created_at FROM orchestrator.runs ORDER BY created_at, id"
)


def _function(db: Database, fid: str, name: str, *, expression: str | None = None) -> None:
    trigger: dict[str, Any] = {"type": "event", "name": name}
    if expression is not None:
        trigger["if"] = expression
    with db.transaction() as conn:
        functions.upsert(conn, fid, triggers=[trigger], options={}, version="1")


@pytest.fixture
def ingester(db: Database) -> Iterator[Ingester]:
    _function(db, "f", "a")
    _function(db, "g", "a")
    _function(db, "h", "b")
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    yield Ingester(db, direct, batch_size=100, max_event_bytes=1024, log=structlog.get_logger())
    direct.close()


def _send(db: Database, suffix: str) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data, ts, trace_context) VALUES "
        '(\'x\' || :s, \'a\', \'{"n": 1.5, "s": "\\u00e9", "l": [1, {"k": null}]}\', '
        "'2026-01-02 03:04:05+00', :trace), "
        "('y' || :s, 'b', '{}', '2026-01-02 03:04:05.25+00', '\"not an object\"'), "
        "('z' || :s, 'nobody', '{}', now(), NULL)",
        s=suffix,
        trace='{"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}',
    )


def _rows(db: Database, suffix: str) -> list[tuple[Any, ...]]:
    out = []
    for row in execute(db, RUN_ROW):
        if str(row[1]).endswith(suffix):
            events = [dict(e, id=e["id"][:1]) for e in row[2]]
            out.append((row[0], row[1][:1], events, row[3][: -len(suffix)], *row[4:]))
    return out


def test_plain_ingest__makes_the_runs_the_python_ingest_makes(
    db: Database, ingester: Ingester
) -> None:
    _send(db, "1")
    assert ingester.tick() == 3
    assert ingester._plain_first  # it was taken in SQL
    ingester._plain_first = False
    _send(db, "2")
    assert ingester.tick() == 3
    in_sql, in_python = _rows(db, "1"), _rows(db, "2")
    assert in_sql == in_python
    assert [(r[0], r[1]) for r in in_sql] == [("f", "x"), ("g", "x"), ("h", "y")]
    assert in_sql[0][2][0]["ts"] == "2026-01-02T03:04:05+00:00", in_sql
    assert in_sql[2][2][0]["ts"] == "2026-01-02T03:04:05.250000+00:00", in_sql
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert [r[-2] for r in in_sql] == [traced, traced, None]  # a non-object is not copied
    pending = execute(db, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL")
    assert pending == [(0,)]


def test_plain_ingest__leaves_a_batch_with_a_wait_on_its_name_to_python(
    db: Database, ingester: Ingester
) -> None:
    execute(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status, due_at) VALUES "
        "('00000000-0000-0000-0000-000000000001', 'w', 'waiting', 'infinity')",
    )
    execute(
        db,
        "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status) VALUES "
        "('00000000-0000-0000-0000-000000000001', 's', 0, 'wait', 'waiting')",
    )
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) VALUES ('00000000-0000-0000-0000-000000000001', 's', 'event', "
        "'b', '', 'null', now() - interval '1 minute')",
    )
    _send(db, "1")
    assert ingester.tick() == 3
    assert not ingester._plain_first  # the next batch goes to Python first
    statuses = execute(db, "SELECT function_id, status FROM orchestrator.runs ORDER BY 1")
    assert statuses == [("f", "queued"), ("g", "queued"), ("h", "queued"), ("w", "queued")]
    assert execute(db, "SELECT count(*) FROM orchestrator.waits") == [(0,)]
    _send(db, "2")  # no wait any more: Python takes it, and hands the next batch back to SQL
    assert ingester.tick() == 3
    assert ingester._plain_first


@pytest.mark.parametrize("case", ["if", "oversize", "flow"])
def test_plain_ingest__leaves_other_batches_to_python(
    db: Database, ingester: Ingester, case: str
) -> None:
    if case == "if":
        _function(db, "g", "a", expression="event.data.n > 2")
    elif case == "flow":
        with db.transaction() as conn:
            functions.upsert(
                conn,
                "g",
                triggers=[{"type": "event", "name": "a"}],
                options={"priority": {"run": "10"}},
                version="1",
            )
    else:
        execute(
            db,
            "INSERT INTO orchestrator.events (id, name, data) VALUES "
            "('big', 'b', jsonb_build_object('pad', repeat('x', 2000)))",
        )
    ingester.invalidate()
    _send(db, "1")
    taken = ingester.tick()
    assert not ingester._plain_first
    made = execute(db, "SELECT function_id, priority FROM orchestrator.runs ORDER BY 1")
    if case == "if":  # 1.5 > 2 is false: no run of g
        assert taken == 3 and made == [("f", 0), ("h", 0)]
    elif case == "flow":  # g's runs carry their priority
        assert taken == 3 and made == [("f", 0), ("g", 10), ("h", 0)]
    else:  # the big event is parked, the others ingested
        assert taken == 4 and [m[0] for m in made] == ["f", "g", "h", "h"][: len(made)]
        (error,) = execute(db, "SELECT error FROM orchestrator.events WHERE id = 'big'")[0]
        assert "max_event_bytes" in error


def test_plain_ingest__its_generic_plan_reads_by_index(db: Database) -> None:
    """The batch's events by `events_seq`, the waits of their names by `waits_match`."""
    execute(
        db,
        "INSERT INTO orchestrator.events (name, data, ingested_at) "
        "SELECT 'a', '{}', now() FROM generate_series(1, 20000)",
    )
    execute(
        db,
        "INSERT INTO orchestrator.runs (id, function_id, status, due_at) "
        "SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, 'w', 'waiting', "
        "'infinity' FROM generate_series(1, 5000) AS i",
    )
    execute(
        db,
        "INSERT INTO orchestrator.waits (run_id, step_id, kind, event_name, match_path, "
        "match_value, since) SELECT ('00000000-0000-0000-0000-' || lpad(i::text, 12, '0'))::uuid, "
        "'s', 'event', 'w' || i, '', 'null', now() FROM generate_series(1, 5000) AS i",
    )
    (seqs,) = execute(db, "SELECT array_agg(seq)::text FROM orchestrator.events WHERE seq < 5")[0]
    args = {"names": ["a"], "fids": ["f"], "others": [], "max_bytes": 1024, "now": None}
    types = {
        "names": "text[]",
        "fids": "text[]",
        "others": "text[]",
        "max_bytes": "bigint",
        "now": "timestamptz",
    }
    # with the settings of the daemon's direct connection, which it runs with
    options = " ".join(f"-c {k}={v}" for k, v in runs.CLAIM_SETTINGS.items())
    with psycopg.connect(libpq_url(db.url), autocommit=True, options=options) as conn:
        conn.execute("SELECT set_config('orchestrator.ingesting', %s, false)", (seqs,))
        plan = generic_plan(conn, plain_ingest._INGEST, args, types)
    assert "events_seq" in plan and "Seq Scan on events" not in plan, plan
    assert "waits_match" in plan and "Seq Scan on waits" not in plan, plan
    assert "Insert on runs" in plan, plan
