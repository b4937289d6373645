"""`cancel_on` on the runs a cron schedule starts: they watch events received since their
tick, as a run an event starts watches those since its trigger, including one ingested before
the run was made (by an ingest that was in flight at the tick)."""

from __future__ import annotations

import threading
from typing import Any

import psycopg
import pytest
import structlog

from orchestrator import Orchestrator, cancel_on, cron
from orchestrator.db import functions, runs
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.db.waits import WAIT_LOCK_CLASS
from orchestrator.runtime.cron import CronScheduler
from orchestrator.runtime.ingest import Ingester
from tests.db.helpers import execute, wait_until_blocked

pytestmark = pytest.mark.timeout(60)
LOG = structlog.get_logger()
ABORT = "maintenance/abort"


def _scheduler(db: Database, **condition: Any) -> CronScheduler:
    """A cron function that an `ABORT` event cancels, with its tick due a minute ago."""
    app = Orchestrator(database_url="postgresql://unused/x")
    app.function("nightly", trigger=cron("* * * * *"), cancel_on=[cancel_on(ABORT, **condition)])(
        lambda ctx: None
    )
    with db.transaction() as conn:
        desc = app.functions["nightly"].describe()
        functions.upsert(conn, "nightly", triggers=desc.pop("triggers"), options=desc, version="1")
    scheduler = CronScheduler(db, app.functions, LOG)
    scheduler.register()
    execute(
        db,
        "UPDATE orchestrator.schedules SET next_fire_at = date_trunc('minute', now()) "
        "- interval '1 minute'",
    )
    return scheduler


def _send(db: Database, event_id: str, *, data: str = "{}", ago: str = "0 seconds") -> None:
    execute(
        db,
        "INSERT INTO orchestrator.events (id, name, data, received_at) "
        "VALUES (:i, :n, CAST(:d AS jsonb), now() - CAST(:a AS interval))",
        i=event_id,
        n=ABORT,
        d=data,
        a=ago,
    )


def _ingest(db: Database) -> int:
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    try:
        ingester = Ingester(db, direct, batch_size=100, max_event_bytes=4096, log=LOG)
        return ingester.tick()
    finally:
        direct.close()


def _status(db: Database) -> str:
    [(status,)] = execute(db, "SELECT status FROM orchestrator.runs WHERE function_id = 'nightly'")
    return str(status)


def test_cron_run__an_event_after_it_starts_cancels_it(db: Database) -> None:
    scheduler = _scheduler(db)
    assert scheduler.tick() == 1
    assert _status(db) == "queued"
    _send(db, "abort-1")
    assert _ingest(db) == 1
    assert _status(db) == "cancelled"
    [(reason,)] = execute(db, "SELECT error->>'message' FROM orchestrator.runs")
    assert "cancel_on" in reason


def test_cron_run__an_event_since_its_tick_ingested_before_it_was_made_cancels_it(
    db: Database,
) -> None:
    """Received after the tick (the tick came up to a minute ago) and ingested before the
    leader made the run: the run looks back at it. One from before the tick does not count."""
    scheduler = _scheduler(db, if_="async.data.really == true")
    _send(db, "before-tick", data='{"really": true}', ago="2 minutes")
    _send(db, "not-really", data='{"really": false}')
    assert _ingest(db) == 2
    assert scheduler.tick() == 1
    assert _status(db) == "queued"  # neither meets the condition

    execute(db, "DELETE FROM orchestrator.runs")
    execute(
        db,
        "UPDATE orchestrator.schedules SET next_fire_at = date_trunc('minute', now()) "
        "- interval '1 minute'",
    )
    _send(db, "really", data='{"really": true}', ago="1 second")
    assert _ingest(db) == 1
    assert scheduler.tick() == 1
    assert _status(db) == "cancelled"


def test_cron_run__waits_for_an_ingest_of_the_watched_name_in_flight__and_sees_its_event(
    db: Database,
) -> None:
    scheduler = _scheduler(db)
    _send(db, "in-flight")
    fired: list[int] = []
    with psycopg.connect(libpq_url(db.url)) as ingest:
        # an ingest of the watched name that took its event and holds the name's lock
        ingest.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (WAIT_LOCK_CLASS, ABORT))
        ingest.execute("UPDATE orchestrator.events SET ingested_at = now()")
        thread = threading.Thread(target=lambda: fired.append(scheduler.tick()), daemon=True)
        thread.start()
        wait_until_blocked(db, ingest.info.backend_pid, "the cron tick waiting for the ingest")
        assert fired == []
        ingest.commit()
    thread.join(timeout=30)
    assert fired == [1]
    assert _status(db) == "cancelled"
