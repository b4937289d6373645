"""`app.start` and `RunHandle` against a real database, without a daemon: runs are ended by
the statements a daemon would use (the group write, a cancellation), so these tests prove
that the notification of an awaited run's end reaches its waiter, whichever path ends it.

The waits are driven through `awaiting` with a fallback poll far longer than the test's
timeout where the point is that the notification woke the waiter (no sleeping, no timing)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import structlog
from alembic import command

from orchestrator import (
    CancelledRunError,
    Context,
    InvalidRunIdError,
    Orchestrator,
    RunCancelledError,
    RunFailedError,
    RunNotCompletedError,
    RunNotFoundError,
    RunSkippedError,
    RunTimeoutError,
    UnknownFunctionError,
    cancel_on,
)
from orchestrator.db import functions, migrate, outbox, runs
from orchestrator.db import handles as dbh
from orchestrator.db.checkpoints import GroupWrite, write_group
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.db.ops import Op, Pause
from orchestrator.errors import InvalidEventError, PayloadTooLargeError
from orchestrator.flow import Concurrency, Priority
from orchestrator.handles import STARTED_EVENT_NAME, awaiting
from orchestrator.runtime.ingest import Ingester
from tests.conftest import eventually
from tests.db.helpers import claim, execute

pytestmark = pytest.mark.timeout(60)

OWNER = str(uuid.uuid4())
NEVER = 3600.0  # a fallback poll that never comes within the test's timeout


def _body(ctx: Context) -> Any:
    return None


@pytest.fixture
def app(db_url: str) -> Iterator[Orchestrator]:
    app = Orchestrator(db_url)
    app.function("f")(_body)
    app.function(
        "keyed",
        concurrency=Concurrency(2, key="event.data.tenant"),
        priority=Priority("event.data.urgency"),
        cancel_on=[cancel_on("order/cancelled", match="data.order")],
    )(_body)
    app.function("other")(_body)
    yield app
    app.close()


def run_row(db: Database, run_id: str) -> dict[str, Any]:
    [row] = execute(
        db,
        "SELECT function_id, status, awaited, events, due_at - created_at, priority, "
        "concurrency_keys, flow_key, event_id FROM orchestrator.runs "
        "WHERE id = CAST(:i AS uuid)",
        i=run_id,
    )
    keys = ("function_id", "status", "awaited", "events", "delay", "priority", "ckeys")
    return dict(zip((*keys, "flow_key", "event_id"), row, strict=True))


# -- start -----------------------------------------------------------------------------------


def test_start__creates_an_awaited_run_due_now_with_the_started_event(
    app: Orchestrator, db: Database
) -> None:
    before = datetime.now(UTC)
    handle = app.start("f", {"x": [1, 2]})
    row = run_row(db, handle.run_id)
    assert (row["function_id"], row["status"], row["awaited"]) == ("f", "queued", True)
    assert row["delay"] == timedelta(0)
    assert row["event_id"] is None  # no event row: the event lives in the run
    [started] = row["events"]
    assert started["id"] == f"start:{handle.run_id}"
    assert started["name"] == STARTED_EVENT_NAME == "orchestrator/function.started"
    assert started["data"] == {"x": [1, 2]}
    assert datetime.fromisoformat(started["ts"]) >= before
    assert handle.status() == "queued"
    assert execute(db, "SELECT count(*) FROM orchestrator.events") == [(0,)]


def test_start__wakes_the_daemons(app: Orchestrator, db: Database) -> None:
    with psycopg.connect(libpq_url(db.url), autocommit=True) as listener:
        listener.execute("LISTEN orchestrator_runs")
        app.start("f")
        heard = [n.channel for n in listener.notifies(timeout=10, stop_after=1)]
    assert heard == ["orchestrator_runs"]


def test_start__delay_makes_the_run_due_later(app: Orchestrator, db: Database) -> None:
    later = app.start("f", delay=timedelta(minutes=5))
    assert run_row(db, later.run_id)["delay"] == timedelta(minutes=5)
    assert run_row(db, app.start("f", delay=90.5).run_id)["delay"] == timedelta(seconds=90.5)
    assert claim(db, OWNER, fids=("f",)) == []  # neither is due yet
    with pytest.raises(ValueError, match="delay must be"):
        app.start("f", delay=-1)


def test_start__the_same_id_twice_makes_one_run(app: Orchestrator, db: Database) -> None:
    chosen = uuid.uuid4()
    first = app.start("f", {"n": 1}, id=chosen)
    second = app.start("f", {"n": 2}, id=str(chosen))
    assert first.run_id == second.run_id == str(chosen)
    rows = execute(db, "SELECT events -> 0 -> 'data' FROM orchestrator.runs")
    assert rows == [({"n": 1},)]  # the first start's data; the second created nothing
    with pytest.raises(InvalidRunIdError, match="belongs to a run of function 'f'"):
        app.start("other", id=chosen)
    with pytest.raises(InvalidRunIdError, match="must be a UUID"):
        app.start("f", id="order-17")


def test_start__unknown_function__or_known_only_to_the_daemons(
    app: Orchestrator, db: Database
) -> None:
    with pytest.raises(UnknownFunctionError, match="'nope' is not registered"):
        app.start("nope")
    with db.transaction() as conn:  # registered by a daemon, with a cancellation condition
        options = {"cancel_on": [{"event": "stop", "match": "data.k", "if": None}]}
        functions.upsert(conn, "remote", triggers=[], options=options, version="1")
    handle = app.start("remote", {"k": 7})
    assert run_row(db, handle.run_id)["function_id"] == "remote"
    waits = execute(db, "SELECT step_id, event_name, match_value FROM orchestrator.waits")
    assert waits == [("#cancel/0", "stop", 7)]


def test_start__flow_control_keys_and_cancel_conditions_as_for_an_event(
    app: Orchestrator, db: Database
) -> None:
    handle = app.start("keyed", {"tenant": "acme", "urgency": 5, "order": "o-1"})
    row = run_row(db, handle.run_id)
    assert (row["priority"], row["ckeys"], row["flow_key"]) == (5, ["acme"], "acme")
    waits = execute(
        db,
        "SELECT step_id, kind, event_name, match_path, match_value FROM orchestrator.waits "
        "WHERE run_id = CAST(:i AS uuid)",
        i=handle.run_id,
    )
    assert waits == [("#cancel/0", "cancel", "order/cancelled", "data.order", "o-1")]


def test_start__data_is_checked_like_event_data(app: Orchestrator, db: Database) -> None:
    with pytest.raises(InvalidEventError, match="must be a JSON object"):
        app.start("f", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(PayloadTooLargeError):
        app.start("f", {"blob": "x" * (app.config.max_event_bytes + 1)})
    assert execute(db, "SELECT count(*) FROM orchestrator.runs") == [(0,)]


# -- the notification ------------------------------------------------------------------------


def test_trigger__notifies_only_the_end_of_awaited_runs(app: Orchestrator, db: Database) -> None:
    awaited = app.start("f").run_id
    with db.transaction() as conn:
        plain, cancelled = runs.create_many(conn, [runs.NewRun("f", [{}]), runs.NewRun("f", [{}])])
    with psycopg.connect(libpq_url(db.url), autocommit=True) as listener:
        listener.execute(f"LISTEN {dbh.CHANNEL}")
        with db.transaction() as conn:
            runs.cancel(conn, [cancelled], reason="stop")  # ended, not awaited
        for c in claim(db, OWNER, limit=10, fids=("f",)):  # queued -> running: not an end
            finish(db, c, "completed")
        execute(
            db, "UPDATE orchestrator.runs SET awaited = true WHERE id = CAST(:i AS uuid)", i=plain
        )
        execute(db, "UPDATE orchestrator.runs SET status = 'completed' WHERE awaited")  # no change
        heard = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert heard == [awaited]
        # nothing else was notified: a sentinel sent now is the next to arrive (commit order)
        execute(db, f"SELECT pg_notify('{dbh.CHANNEL}', 'sentinel')")
        after = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
        assert after == ["sentinel"]
    statuses = execute(db, "SELECT status, count(*) FROM orchestrator.runs GROUP BY 1 ORDER BY 1")
    assert statuses == [("cancelled", 1), ("completed", 2)]


def finish(db: Database, claimed: runs.ClaimedRun, status: str, **fields: Any) -> None:
    """End a claimed run as a worker does: the group write."""
    write = GroupWrite(claimed.id, claimed.lease_token, final_status=status, **fields)
    direct = Direct(db.url, application_name="test-worker")
    try:
        assert direct.run(lambda c: write_group(c, [write]), retry_for=0) == {claimed.id: True}
    finally:
        direct.close()


def claimed(db: Database, run_id: str) -> runs.ClaimedRun:
    [c] = [c for c in claim(db, OWNER, limit=100, fids=("f", "keyed")) if c.id == run_id]
    return c


def at_first_pause(op: Op[Any], act: Callable[[], None], log: list[str]) -> Op[Any]:
    """`op`, with `act()` done when it first waits (it is then listening, and has read the
    run), and its commands noted in `log`."""
    reply: Any = None
    acted = False
    while True:
        try:
            cmd = op.send(reply)
        except StopIteration as done:
            return done.value
        if isinstance(cmd, Pause) and not acted:
            act()
            acted = True
        log.append("pause" if isinstance(cmd, Pause) else cmd.sql.split()[0])
        reply = yield cmd
        if isinstance(cmd, Pause):  # what woke it: the payloads, none when its time ran out
            log.append(f"woken by {reply!r}")


def await_with(db: Database, run_id: str, act: Callable[[], None]) -> tuple[Any, list[str]]:
    log: list[str] = []
    op = at_first_pause(awaiting(run_id, 30, poll_every=NEVER), act, log)
    with dbh.listening(db.url) as conn:
        return outbox.run(op, conn), log


def test_result__woken_by_the_group_write_that_completes_the_run(
    app: Orchestrator, db: Database
) -> None:
    run_id = app.start("f").run_id
    c = claimed(db, run_id)
    output, log = await_with(db, run_id, lambda: finish(db, c, "completed", output_json='{"a": 1}'))
    assert output == {"a": 1}
    # one wait, ended by the run's notification, and one re-read
    assert log == ["LISTEN", "UPDATE", "SELECT", "pause", f"woken by {[run_id]!r}", "SELECT"]


def test_result__failed_run_raises_run_failed_error(app: Orchestrator, db: Database) -> None:
    run_id = app.start("f").run_id
    c = claimed(db, run_id)
    error = {"type": "ValueError", "code": None, "message": "bad input", "step": "s"}
    with pytest.raises(RunFailedError) as caught:
        await_with(
            db, run_id, lambda: finish(db, c, "failed", error_json=json.dumps(error), effects=True)
        )
    assert isinstance(caught.value, RunNotCompletedError)
    assert (caught.value.run_id, caught.value.status, caught.value.error) == (
        run_id,
        "failed",
        error,
    )
    assert (caught.value.error_type, caught.value.error_message) == ("ValueError", "bad input")
    assert caught.value.code == "run_failed"
    assert str(caught.value) == f"run {run_id} failed: ValueError: bad input"


def test_result__run_cancelled_while_awaited_raises_cancelled_run_error(
    app: Orchestrator, db: Database
) -> None:
    run_id = app.start("f").run_id

    def cancel() -> None:
        with db.transaction() as conn:
            runs.cancel(conn, [run_id], reason="not needed")

    with pytest.raises(CancelledRunError, match="not needed") as caught:
        await_with(db, run_id, cancel)
    assert isinstance(caught.value, RunCancelledError)
    assert caught.value.code == "run_cancelled"


def test_result__run_made_by_an_event_is_marked_awaited_and_notifies(
    app: Orchestrator, db: Database
) -> None:
    with db.transaction() as conn:
        [run_id] = runs.create_many(conn, [runs.NewRun("f", [{"name": "e"}])])
    assert run_row(db, run_id)["awaited"] is False
    c = claimed(db, run_id)

    def complete() -> None:
        assert run_row(db, run_id)["awaited"] is True  # marked before the wait
        finish(db, c, "completed", output_json="42")

    assert await_with(db, run_id, complete)[0] == 42


def test_result__ended_runs_answer_at_once(app: Orchestrator, db: Database) -> None:
    with db.transaction() as conn:
        skip = {"type": "RateLimited", "code": "rate_limited", "message": "over the limit"}
        [skipped] = runs.create_many(conn, [runs.NewRun("f", [{}], skipped=skip)])
    with pytest.raises(RunSkippedError, match="over the limit"):
        app.run_handle(skipped).result(timeout=0)
    done = app.start("f").run_id
    finish(db, claimed(db, done), "completed", output_json='"ok"')
    assert app.run_handle(done).result(timeout=0) == "ok"
    assert app.run_handle(done).status() == "completed"


def test_result__timeout_raises_and_leaves_the_run_as_it_was(
    app: Orchestrator, db: Database
) -> None:
    handle = app.start("f")
    with pytest.raises(RunTimeoutError) as caught:
        handle.result(timeout=timedelta(milliseconds=200))
    assert isinstance(caught.value, TimeoutError)
    assert (caught.value.run_id, caught.value.status, caught.value.timeout) == (
        handle.run_id,
        "queued",
        0.2,
    )
    assert caught.value.code == "run_timeout"
    assert run_row(db, handle.run_id)["status"] == "queued"
    with pytest.raises(RunTimeoutError):
        handle.result(timeout=0)


def test_result__polls_when_no_notification_comes(app: Orchestrator, db: Database) -> None:
    """A pooler in transaction mode passes no notifications: the slow poll still sees the end."""
    run_id = app.start("f").run_id
    c = claimed(db, run_id)
    execute(db, "ALTER TABLE orchestrator.runs DISABLE TRIGGER runs_finished_notify")
    log: list[str] = []
    op = at_first_pause(
        awaiting(run_id, 30, poll_every=0.2),
        lambda: finish(db, c, "completed", output_json="1"),
        log,
    )
    with dbh.listening(db.url) as conn:
        assert outbox.run(op, conn) == 1
    assert log[:5] == ["LISTEN", "UPDATE", "SELECT", "pause", "woken by []"]  # by the poll


def test_run_handle__unknown_or_malformed_ids(app: Orchestrator) -> None:
    unknown = app.run_handle(str(uuid.uuid4()))
    with pytest.raises(RunNotFoundError):
        unknown.result(timeout=1)
    with pytest.raises(RunNotFoundError):
        unknown.status()
    with pytest.raises(InvalidRunIdError):
        app.run_handle("12ab")


def test_result__from_another_thread_with_the_public_api(app: Orchestrator, db: Database) -> None:
    handle = app.start("f", {"n": 1})
    c = claimed(db, handle.run_id)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(handle.result, 30)
        wait_listening(db)
        finish(db, c, "completed", output_json='{"n": 2}')
        assert waiting.result(timeout=30) == {"n": 2}


def wait_listening(db: Database) -> None:
    """Until a waiter has read its run and waits for a notification."""
    eventually(
        lambda: execute(
            db,
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = 'orchestrator-waiter' AND state = 'idle' "
            "AND query LIKE 'SELECT status%'",
        ),
        what="a waiter listening",
    )


# -- the async face ----------------------------------------------------------------------------


def test_async__start_status_and_result(app: Orchestrator, db: Database) -> None:
    async def scenario() -> tuple[str, Any]:
        handle = await app.start_async("f", {"n": 3}, delay=0)
        status = await handle.status_async()
        c = claimed(db, handle.run_id)
        waiting = asyncio.create_task(handle.result_async(timeout=30))
        await asyncio.to_thread(wait_listening, db)
        await asyncio.to_thread(finish, db, c, "completed", output_json="[3]")
        return status, await waiting

    assert asyncio.run(scenario()) == ("queued", [3])


def test_async__errors_as_in_the_sync_face(app: Orchestrator, db: Database) -> None:
    async def scenario() -> None:
        with pytest.raises(UnknownFunctionError):
            await app.start_async("nope")
        handle = await app.start_async("f")
        with pytest.raises(RunTimeoutError):
            await handle.result_async(timeout=0.1)
        with db.transaction() as conn:
            runs.cancel(conn, [handle.run_id], reason="enough")
        with pytest.raises(CancelledRunError, match="enough"):
            await handle.result_async()

    asyncio.run(scenario())


# -- the migration -------------------------------------------------------------------------------


def test_migration_0009__downgrades_and_upgrades(db: Database) -> None:
    cfg = migrate.alembic_config()
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0008")
    columns = execute(
        db,
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'orchestrator' "
        "AND table_name = 'runs' AND column_name = 'awaited'",
    )
    assert columns == [(0,)]
    assert execute(db, "SELECT count(*) FROM pg_trigger WHERE tgname = 'runs_finished_notify'") == [
        (0,)
    ]
    migrate.upgrade(db.engine)
    assert migrate.current_revision(db.engine) == migrate.head_revision()


# -- what happens today to an event with a future `ts` -------------------------------------------


def test_ingest__an_event_with_a_future_ts_starts_its_run_at_once(db: Database) -> None:
    """`ts` is the event's own timestamp, carried to `ctx.event.ts`; nothing schedules by it.
    The ingest takes the event at once and its run is due at once (`due_at` is the ingest's
    now), an hour before its `ts`."""
    with db.transaction() as conn:
        functions.upsert(
            conn, "f", triggers=[{"type": "event", "name": "a"}], options={}, version="1"
        )
    app = Orchestrator(db.url)
    try:
        app.send("a", {"k": 1}, id="future", ts=datetime.now(UTC) + timedelta(hours=1))
    finally:
        app.close()
    direct = Direct(db.url, application_name="test-ingest", settings=runs.CLAIM_SETTINGS)
    try:
        ingester = Ingester(
            db, direct, batch_size=10, max_event_bytes=1024, log=structlog.get_logger()
        )
        assert ingester.tick() == 1
    finally:
        direct.close()
    [(due_now, ts_ahead, ts)] = execute(
        db,
        "SELECT r.due_at <= now(), e.ts - now() > interval '59 minutes', r.events -> 0 ->> 'ts' "
        "FROM orchestrator.runs r JOIN orchestrator.events e ON e.id = r.event_id",
    )
    assert due_now and ts_ahead
    assert datetime.fromisoformat(ts) > datetime.now(UTC) + timedelta(minutes=59)
    assert len(claim(db, OWNER, fids=("f",))) == 1  # claimable now
