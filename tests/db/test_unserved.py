"""Runs of functions that no live daemon serves: what a daemon records of the functions it
serves, the `unserved` reason of `run_queue`, the leader's count and warning, and removing a
retired function from the registry."""

from __future__ import annotations

import argparse
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import text

from orchestrator import cli_functions
from orchestrator.cli_functions import Removed, retire
from orchestrator.config import load_config
from orchestrator.db import buffers, daemons, functions
from orchestrator.db.database import Database
from orchestrator.db.direct import driver
from orchestrator.errors import (
    ConfigError,
    FunctionInUseError,
    OrchestratorError,
    UnknownFunctionError,
)
from orchestrator.runtime.health import Health
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.unserved import WARN_EVERY, UnservedWatch
from tests.db.helpers import execute, queue_runs, wait_until_blocked

pytestmark = pytest.mark.timeout(60)


def _function(db: Database, fid: str, *, event: str | None = None) -> None:
    triggers = [{"type": "event", "name": event, "if": None}] if event else []
    with db.transaction() as conn:
        functions.upsert(conn, fid, triggers=triggers, options={}, version="v")


def _daemon(db: Database, served: list[str]) -> str:
    daemon_id = str(uuid.uuid4())
    with db.transaction() as conn:
        daemons.register(
            conn,
            daemon_id,
            hostname="host",
            pid=42,
            app="shop.app:app",
            version="v",
            workers=1,
            concurrency=1,
            functions=served,
        )
    return daemon_id


def _reasons(db: Database, fid: str) -> list[str]:
    rows = execute(
        db, "SELECT reason FROM orchestrator.run_queue WHERE function_id = :f ORDER BY 1", f=fid
    )
    return [row[0] for row in rows]


def _serving(db: Database) -> dict[str, functions.Serving]:
    with db.transaction() as conn:
        return functions.serving(conn)


# -- what daemons record ----------------------------------------------------------------


def test_register__records_the_functions_the_daemon_serves(db: Database) -> None:
    _function(db, "a")
    _function(db, "b")
    daemon_id = _daemon(db, ["a"])

    serving = _serving(db)
    [daemon] = serving["a"].daemons
    assert (daemon.daemon_id, daemon.hostname, daemon.pid, daemon.app) == (
        daemon_id,
        "host",
        42,
        "shop.app:app",
    )
    assert serving["a"].last_served_at == daemon.heartbeat_at
    assert serving["b"].daemons == []
    assert serving["b"].last_served_at is None  # never served


def test_mark_stopped__its_functions_were_served_until_it_stopped(db: Database) -> None:
    _function(db, "a")
    daemon_id = _daemon(db, ["a"])
    with db.transaction() as conn:
        daemons.mark_stopped(conn, daemon_id)
    # the record outlives the daemon's row (retention deletes it)
    execute(db, "DELETE FROM orchestrator.daemons")

    serving = _serving(db)["a"]
    [(last_served_at,)] = execute(db, "SELECT last_served_at FROM orchestrator.functions")
    assert serving.daemons == []
    assert last_served_at is not None and serving.last_served_at == last_served_at


def test_mark_dead__its_functions_were_served_until_its_last_heartbeat(db: Database) -> None:
    _function(db, "a")
    daemon_id = _daemon(db, ["a"])
    execute(db, "UPDATE orchestrator.daemons SET heartbeat_at = now() - interval '1 hour'")
    [(heartbeat_at,)] = execute(db, "SELECT heartbeat_at FROM orchestrator.daemons")
    with db.transaction() as conn:
        daemons.mark_dead(conn, daemon_id)

    serving = _serving(db)["a"]
    assert serving.daemons == []
    assert serving.last_served_at == heartbeat_at


# -- run_queue --------------------------------------------------------------------------


def test_run_queue__unserved_until_a_running_daemon_serves_the_function(db: Database) -> None:
    _function(db, "a")
    queue_runs(db, 1, function_id="a")
    assert _reasons(db, "a") == ["unserved"]  # no daemon at all

    _daemon(db, ["b"])
    assert _reasons(db, "a") == ["unserved"]  # a daemon, with another app

    serving = _daemon(db, ["a", "b"])
    assert _reasons(db, "a") == ["ready"]

    with db.transaction() as conn:
        daemons.mark_stopped(conn, serving)
    assert _reasons(db, "a") == ["unserved"]


def test_run_queue__buffered_events_of_an_unserved_function(db: Database) -> None:
    _function(db, "a")
    with db.transaction() as conn:
        buffers.add(conn, [buffers.Buffered("a", "", "e1", 1, {"name": "x"}, datetime.now(UTC))])
    assert _reasons(db, "a") == ["unserved"]
    execute(
        db,
        'UPDATE orchestrator.functions SET options = \'{"batch_events": {"max_size": 5}}\'',
    )
    _daemon(db, ["a"])
    assert _reasons(db, "a") == ["batching"]


def test_run_queue__a_daemon_that_did_not_say_what_it_serves_serves_any(db: Database) -> None:
    """Daemons registered before `daemons.functions` existed (NULL): nothing is called
    unserved on their account while they live (a rolling upgrade)."""
    _function(db, "a")
    queue_runs(db, 1, function_id="a")
    _daemon(db, [])
    assert _reasons(db, "a") == ["unserved"]
    execute(db, "UPDATE orchestrator.daemons SET functions = NULL")
    assert _reasons(db, "a") == ["ready"]
    assert [d.pid for d in _serving(db)["a"].daemons] == [42]


# -- the leader's count and warning -----------------------------------------------------


def test_unserved_backlog__due_runs_of_functions_no_running_daemon_serves(db: Database) -> None:
    for fid in ("served", "gone", "idle"):
        _function(db, fid)
    _daemon(db, ["served"])
    queue_runs(db, 2, function_id="served")
    oldest, _, later, cancelling = queue_runs(db, 4, function_id="gone")
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() - interval '2 minutes' "
        "WHERE id = CAST(:i AS uuid)",
        i=oldest,
    )
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() + interval '1 hour' "
        "WHERE id = CAST(:i AS uuid)",
        i=later,
    )
    execute(
        db,
        "UPDATE orchestrator.runs SET cancel_requested_at = now() WHERE id = CAST(:i AS uuid)",
        i=cancelling,
    )

    with db.transaction() as conn:
        found = functions.unserved_backlog(conn, cap=100)
        capped = functions.unserved_backlog(conn, cap=1)

    [(due_at,)] = execute(
        db, "SELECT due_at FROM orchestrator.runs WHERE id = CAST(:i AS uuid)", i=oldest
    )
    assert [(b.function_id, b.runs, b.since) for b in found] == [("gone", 2, due_at)]
    assert 120 <= found[0].waited_seconds < 600
    assert [(b.function_id, b.runs) for b in capped] == [("gone", 1)]


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    return [plan, *(n for child in plan.get("Plans", []) for n in _nodes(child))]


def test_unserved_backlog__reads_no_runs_of_served_functions(db: Database) -> None:
    """The leader runs it every few seconds: a served function's backlog, however deep, must
    cost nothing (its runs are not even looked at)."""
    for fid in ("a", "b", "c"):
        _function(db, fid)
        queue_runs(db, 3, function_id=fid)
    _daemon(db, ["a", "b"])
    execute(db, "ANALYZE orchestrator.functions, orchestrator.daemons, orchestrator.runs")
    with db.transaction() as conn:
        raw = driver(conn)
        query = functions._UNSERVED.replace(":p_cap", "%(p_cap)s").replace(":p_now", "%(now)s")
        params = {"p_cap": 10, "now": None}
        [[plan]] = raw.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + query, params).fetchall()
    scans = [n for n in _nodes(plan[0]["Plan"]) if n.get("Relation Name") == "runs"]
    assert scans and all(n["Actual Loops"] == 1 for n in scans)  # for "c" only
    assert sum(n["Actual Rows"] for n in scans) == 3


class RecordingLog:
    def __init__(self) -> None:
        self.warnings: list[tuple[str, dict[str, Any]]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.warnings.append((event, fields))


def test_unserved_watch__warns_once_per_function_in_a_while_and_counts(db: Database) -> None:
    _function(db, "old")
    _function(db, "fresh")
    [waiting] = queue_runs(db, 1, function_id="old")
    queue_runs(db, 2, function_id="fresh")
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() - interval '2 minutes' "
        "WHERE id = CAST(:i AS uuid)",
        i=waiting,
    )
    leading = [True]
    metrics = DaemonMetrics(
        ["x"],
        app_version="v",
        health=Health.for_intervals(poll_interval=1.0, heartbeat_interval=1.0),
        leader=lambda: leading[0],
        executing=lambda: 0,
        threads=1,
    )
    log, clock = RecordingLog(), [1000.0]
    watch = UnservedWatch(
        db, warn_after=60.0, report=metrics.set_unserved, log=log, clock=lambda: clock[0]
    )

    watch.tick()
    [(event, fields)] = log.warnings  # "fresh" has not waited a minute yet
    assert "no live daemon serves" in event
    assert (fields["function_id"], fields["runs"]) == ("old", 1)
    assert fields["waited_seconds"] >= 120
    assert "orchestrator functions remove old" in fields["fix"]

    def unserved(function_id: str) -> float | None:
        return metrics.registry.get_sample_value(
            "orchestrator_unserved_runs", {"function": function_id}
        )

    assert unserved("old") == 1
    assert unserved("fresh") == 2

    clock[0] += 10  # checked again, not warned again
    queue_runs(db, 1, function_id="old")
    assert [b.runs for b in watch.tick() if b.function_id == "old"] == [2]
    assert len(log.warnings) == 1
    assert unserved("old") == 2

    clock[0] += WARN_EVERY
    watch.tick()
    assert [f["function_id"] for _, f in log.warnings] == ["old", "old"]

    leading[0] = False  # only the leader's count is shown
    assert unserved("old") is None and unserved("fresh") is None


def test_config__unserved_warning_after_must_be_positive(tmp_path: Path) -> None:
    empty = tmp_path / "orchestrator.toml"
    empty.write_text("")
    assert load_config(empty, env={}).unserved_warning_after == 60.0
    set_to = {"ORCHESTRATOR_UNSERVED_WARNING_AFTER": "2.5"}
    assert load_config(empty, env=set_to).unserved_warning_after == 2.5
    with pytest.raises(ConfigError, match=r"unserved_warning_after.*too small"):
        load_config(empty, env={"ORCHESTRATOR_UNSERVED_WARNING_AFTER": "0"})


# -- removing a retired function --------------------------------------------------------


def _retire(db: Database, fid: str, *, cancel_runs: bool) -> Removed:
    with db.transaction() as conn:
        return retire(conn, fid, cancel_runs=cancel_runs)


def _registered(db: Database) -> list[str]:
    return [row[0] for row in execute(db, "SELECT id FROM orchestrator.functions ORDER BY id")]


def test_remove__refused_while_it_has_unfinished_runs(db: Database) -> None:
    _function(db, "f")
    queue_runs(db, 2, function_id="f")
    execute(db, "UPDATE orchestrator.runs SET status = 'sleeping' WHERE id IN "
            "(SELECT id FROM orchestrator.runs LIMIT 1)")  # fmt: skip

    with pytest.raises(FunctionInUseError, match=r"2 unfinished run\(s\) \(1 queued, 1 sleeping"):
        _retire(db, "f", cancel_runs=False)
    assert _registered(db) == ["f"]
    assert execute(db, "SELECT count(*) FROM orchestrator.runs WHERE status = 'cancelled'") == [
        (0,)
    ]


def test_remove__refused_while_a_live_daemon_serves_it(db: Database) -> None:
    _function(db, "f")
    _daemon(db, ["f"])
    with pytest.raises(FunctionInUseError, match=r"served by live daemon.*host:42"):
        _retire(db, "f", cancel_runs=True)
    assert _registered(db) == ["f"]


def test_remove__unknown_function_is_refused(db: Database) -> None:
    with pytest.raises(UnknownFunctionError, match="no function 'nope' is registered"):
        _retire(db, "nope", cancel_runs=True)


def test_remove__with_cancel_runs_cancels_them_and_retires_the_function(
    db: Database, db_url: str
) -> None:
    _function(db, "f", event="f/go")
    _function(db, "other", event="f/go")
    with db.transaction() as conn:
        functions.upsert_schedule(
            conn, "f", cron="* * * * *", tz="UTC", next_fire_at=datetime.now(UTC)
        )
        buffers.add(conn, [buffers.Buffered("f", "", "e1", 1, {"name": "f/go"}, datetime.now(UTC))])
    queue_runs(db, 2, function_id="f")
    [kept] = queue_runs(db, 1, function_id="other")
    with psycopg.connect(db_url, autocommit=True) as listener:
        listener.execute("LISTEN orchestrator_functions")

        removed = _retire(db, "f", cancel_runs=True)

        notices = list(listener.notifies(timeout=10, stop_after=1))
    assert removed == Removed(cancelled=2, stopping=0, dropped=1)
    assert [n.channel for n in notices] == ["orchestrator_functions"]
    assert _registered(db) == ["other"]
    with db.transaction() as conn:
        assert functions.event_subscriptions(conn) == {"f/go": [("other", None)]}
    rows = execute(
        db, "SELECT status, error ->> 'message' FROM orchestrator.runs WHERE function_id = 'f'"
    )
    assert [status for status, _ in rows] == ["cancelled", "cancelled"]
    assert all("'f' was removed from the registry" in message for _, message in rows)
    assert execute(db, "SELECT count(*) FROM orchestrator.schedules") == [(0,)]
    assert execute(db, "SELECT count(*) FROM orchestrator.buffered_events") == [(0,)]
    assert execute(
        db, "SELECT status FROM orchestrator.runs WHERE id = CAST(:i AS uuid)", i=kept
    ) == [("queued",)]


def test_remove__without_a_terminal_to_confirm_on_it_refuses_unless_yes(db: Database) -> None:
    _function(db, "f")
    args = argparse.Namespace(
        functions_command="remove", name="f", cancel_runs=False, yes=False, json=True
    )
    with pytest.raises(OrchestratorError, match="pass --yes"):
        cli_functions.run(db, args)  # pytest's stdin is no terminal
    assert _registered(db) == ["f"]

    assert cli_functions.run(db, argparse.Namespace(**{**vars(args), "yes": True})) == 0
    assert _registered(db) == []


def test_unserved_backlog__waited_since_the_function_was_last_served(db: Database) -> None:
    """A backlog an hour old whose daemon just stopped (a deploy) has not waited an hour for
    want of a daemon: the wait counts from when the function was last served."""
    _function(db, "busy")
    daemon_id = _daemon(db, ["busy"])
    (run_id,) = queue_runs(db, 1, function_id="busy")
    execute(
        db,
        "UPDATE orchestrator.runs SET due_at = now() - interval '1 hour' "
        "WHERE id = CAST(:i AS uuid)",
        i=run_id,
    )
    with db.transaction() as conn:
        daemons.mark_stopped(conn, daemon_id)

    with db.transaction() as conn:
        (found,) = functions.unserved_backlog(conn, cap=100)

    assert found.runs == 1
    assert found.waited_seconds < 60  # not 3600


def test_mark_stopped_and_a_starting_daemon__do_not_deadlock(db: Database) -> None:
    """A daemon signing off locks its functions' rows to record when they were last served;
    a daemon starting upserts them in id order. The sign-off locks them in id order too, so
    the two wait for each other instead of deadlocking (whatever order the rows lie in)."""
    for fid in ("b", "a"):  # "b" first in the table, so a scan meets it first
        _function(db, fid)
    leaving = _daemon(db, ["a", "b"])
    errors: list[BaseException] = []

    def sign_off() -> None:
        try:
            with db.transaction() as conn:
                daemons.mark_stopped(conn, leaving)
        except BaseException as exc:
            errors.append(exc)

    with db.transaction() as starting:
        pid = starting.execute(text("SELECT pg_backend_pid()")).scalar_one()
        functions.upsert(starting, "a", triggers=[], options={}, version="v2")
        other = threading.Thread(target=sign_off)
        other.start()
        wait_until_blocked(db, pid, "the sign-off waiting for the starting daemon's lock")
        functions.upsert(starting, "b", triggers=[], options={}, version="v2")
    other.join(30)

    assert errors == []
    [(status,)] = execute(
        db, "SELECT status FROM orchestrator.daemons WHERE id = CAST(:i AS uuid)", i=leaving
    )
    assert status == "stopped"
