"""Progress bars of the long commands (`runs replay|resume` in bulk, `gc`, `migrate`,
`send --jsonl`), as a user sees them: on a terminal a bar on stderr, with the command's result
still right; without a terminal, or with `--json`, the output of before and nothing else; and
Ctrl-C stops a bulk command after the batch in progress, saying how much was done.

A terminal is a pseudo-terminal on the command's stderr (its stdout stays a pipe, as in
`orchestrator gc > report.txt`). The Ctrl-C tests hold a row lock or an uncommitted row that
the command's next batch must wait for, press Ctrl-C while it waits, see the bar say it is
stopping, then let the batch finish: so which batch was the last is known, not raced."""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import ROOT, eventually
from tests.e2e.harness import cli, count, scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MIGRATION_LOCK = 0x6F726368  # migrations/env.py (importing it runs the migrations)
RUNS = 250  # replay/resume work in batches of 100: three batches
ESCAPES = ("\x1b", "\r")


class Terminal:
    """`orchestrator ARGS` with its stderr on a pseudo-terminal, read as it is drawn."""

    def __init__(self, url: str, *args: str, **env: str) -> None:
        environ = dict(os.environ, ORCHESTRATOR_DATABASE_URL=url, COLUMNS="200", **env)
        environ["PYTHONPATH"] = str(ROOT) + os.pathsep + environ.get("PYTHONPATH", "")
        leader, follower = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", *args],
            cwd=ROOT,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
        )
        os.close(follower)
        self.leader = leader
        self.drawn = bytearray()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        while True:  # until the process closes the terminal
            try:
                chunk = os.read(self.leader, 4096)
            except OSError:
                return
            if not chunk:
                return
            self.drawn += chunk

    def wait_for(self, text: str, timeout: float = 30.0) -> None:
        eventually(lambda: text.encode() in self.drawn, timeout=timeout, what=repr(text))

    def finish(self) -> tuple[int, str, str]:
        """Exit status, stdout, and the terminal's text."""
        out, _ = self.proc.communicate(timeout=60)
        self.reader.join(timeout=10)
        os.close(self.leader)
        return self.proc.returncode, out.decode(), bytes(self.drawn).decode(errors="replace")


def failed_runs(url: str, n: int = RUNS) -> list[str]:
    """`n` failed runs of a registered function `f`, in the order the bulk commands take them."""
    sql(
        url,
        "INSERT INTO orchestrator.functions (id, triggers, options, version) "
        "VALUES ('f', '[]', '{}', 'v1') ON CONFLICT DO NOTHING",
    )
    sql(
        url,
        "INSERT INTO orchestrator.runs (function_id, status, attempts, finished_at) "
        "SELECT 'f', 'failed', 1, now() - g * interval '1 ms' FROM generate_series(1, %s) g",
        (n,),
    )
    rows = sql(
        url,
        "SELECT id::text FROM orchestrator.runs WHERE status = 'failed' ORDER BY finished_at, id",
    )
    return [r[0] for r in rows]


def old_rows(url: str, runs: int, events: int = 0) -> None:
    """Finished runs from ten days ago and ingested events from two days ago."""
    sql(
        url,
        "INSERT INTO orchestrator.runs (function_id, status, created_at, finished_at) "
        "SELECT 'old', CASE WHEN g %% 2 = 0 THEN 'completed' ELSE 'failed' END, "
        "       now() - interval '10 days' + g * interval '1 ms', "
        "       now() - interval '10 days' + g * interval '1 ms' "
        "FROM generate_series(1, %s) g",
        (runs,),
    )
    sql(
        url,
        "INSERT INTO orchestrator.events (id, name, received_at, ingested_at) "
        "SELECT 'old-' || g, 'old/event', now() - interval '2 days', now() - interval '2 days' "
        "FROM generate_series(1, %s) g",
        (events,),
    )


AGES = ("--completed", "60", "--failed", "60", "--events", "3600")


def write_jsonl(path: Path, n: int) -> None:
    path.write_text(
        "".join(
            json.dumps({"name": "bulk/item", "data": {"i": i}, "id": f"item-{i}"}) + "\n"
            for i in range(n)
        )
    )


def no_progress(text: str) -> bool:
    return not any(c in text for c in ESCAPES) and "━" not in text


# -- on a terminal ----------------------------------------------------------------------------


def test_runs_replay_bulk__on_a_terminal__a_bar_and_every_run_replayed(e2e_url: str) -> None:
    ids = failed_runs(e2e_url)

    term = Terminal(e2e_url, "runs", "replay", "--function", "f", "--yes")
    status, out, drawn = term.finish()

    assert status == 0, drawn
    assert out == (
        f"{RUNS} run(s) match (function f, status failed) and will be started.\n"
        f"{RUNS} of {RUNS} run(s) started\n"
    )
    assert "replaying runs" in drawn and f"{RUNS}/{RUNS}" in drawn
    replayed = sql(
        e2e_url, "SELECT origin_run_id::text FROM orchestrator.runs WHERE origin = 'replay'"
    )
    assert sorted(r[0] for r in replayed) == sorted(ids)  # each exactly once


def test_gc__on_a_terminal__counts_first_then_a_bar_of_n_of_m(e2e_url: str) -> None:
    old_rows(e2e_url, runs=300, events=100)

    term = Terminal(e2e_url, "gc", *AGES)
    status, out, drawn = term.finish()

    assert status == 0, drawn
    assert "counting old rows" in drawn
    assert "deleting old rows" in drawn and "400/400" in drawn
    assert out.startswith("deleted (keeping completed 1m, failed 1m, events 1h, daemons 1d):\n")
    assert "runs_completed  150\n" in out and "events          100\n" in out
    assert no_progress(out)
    assert count(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE function_id = 'old'") == 0

    dry = Terminal(e2e_url, "gc", *AGES, "--dry-run")
    status, out, drawn = dry.finish()
    assert status == 0, drawn
    assert "counting old rows" in drawn and "deleting" not in drawn
    assert out.startswith("would delete (keeping") and "runs_completed  0\n" in out


def test_migrate__on_a_terminal__a_line_per_migration_and_a_bar(empty_database: str) -> None:
    from orchestrator.db.migrate import head_revision

    term = Terminal(empty_database, "migrate")
    status, out, drawn = term.finish()

    assert status == 0, drawn
    assert out == f"schema created at {head_revision()}\n"
    lines = [line for line in drawn.replace("\r", "\n").split("\n") if " … done (" in line]
    names = [line.split("applying ", 1)[1].split(" … ")[0] for line in lines]
    assert names[0] == "0001_initial" and names[-1].startswith(head_revision())
    assert len(names) == len(set(names)) == int(head_revision())
    assert f"{len(names)}/{len(names)}" in drawn


def test_send_jsonl__on_a_terminal__a_bar_and_every_event_once(
    e2e_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 3_000)

    term = Terminal(e2e_url, "send", "--jsonl", str(path))
    status, out, drawn = term.finish()

    assert status == 0, drawn
    assert out == "sent 3000 events (3000 new, 0 duplicate ids)\n"
    assert "sending events" in drawn and "3000/3000" in drawn
    rows = sql(e2e_url, "SELECT (data->>'i')::int FROM orchestrator.events ORDER BY seq")
    assert [r[0] for r in rows] == list(range(3_000))  # each line once, in file order


# -- without a terminal, and with --json: the output of before --------------------------------


def test_bulk_commands__without_a_terminal__print_only_their_result(
    e2e_url: str, tmp_path: Path
) -> None:
    failed_runs(e2e_url)
    resumed = cli(e2e_url, "runs", "resume", "--function", "f", "--yes")
    assert resumed.stdout == (
        f"{RUNS} run(s) match (function f, status failed) and will be resumed.\n"
        f"{RUNS} of {RUNS} run(s) resumed\n"
    )
    assert resumed.stderr == ""

    old_rows(e2e_url, runs=120)
    gc = cli(e2e_url, "gc", *AGES)
    assert gc.stdout.splitlines()[:3] == [
        "deleted (keeping completed 1m, failed 1m, events 1h, daemons 1d):",
        "ROWS            COUNT",
        "runs_completed  60",
    ]
    assert gc.stderr == "" and no_progress(gc.stdout)

    path = tmp_path / "events.jsonl"
    write_jsonl(path, 1_200)
    sent = cli(e2e_url, "send", "--jsonl", str(path))
    assert (sent.stdout, sent.stderr) == ("sent 1200 events (1200 new, 0 duplicate ids)\n", "")


def test_bulk_commands__with_json__the_same_json_as_before(e2e_url: str, tmp_path: Path) -> None:
    ids = failed_runs(e2e_url)
    replayed = cli(e2e_url, "runs", "replay", "--function", "f", "--yes", "--json")
    result = json.loads(replayed.stdout)
    assert list(result) == ["matched", "done", "refused"]
    assert (result["matched"], len(result["done"]), result["refused"]) == (RUNS, RUNS, {})
    assert replayed.stdout.count("\n") == 1 and replayed.stderr == ""
    assert no_progress(replayed.stdout)
    assert len(ids) == RUNS

    old_rows(e2e_url, runs=120, events=10)
    gc = cli(e2e_url, "gc", *AGES, "--json")
    counts = json.loads(gc.stdout)
    assert list(counts) == [
        "dry_run",
        "retain",
        "runs_completed",
        "runs_failed",
        "steps",
        "waits",
        "events",
        "daemons",
        "batches",
        "seconds",
        "busy_seconds",
        "slowest_batch_ms",
    ]
    assert (counts["runs_completed"], counts["runs_failed"], counts["events"]) == (60, 60, 10)
    assert gc.stderr == "" and no_progress(gc.stdout)

    path = tmp_path / "events.jsonl"
    write_jsonl(path, 600)
    sent = cli(e2e_url, "send", "--jsonl", str(path), "--json")
    assert (sent.stdout, sent.stderr) == ('{"sent": 600, "created": 600, "duplicates": 0}\n', "")


def test_migrate__without_a_terminal__json_as_before(empty_database: str) -> None:
    from orchestrator.db.migrate import head_revision

    created = cli(empty_database, "migrate", "--json")
    again = cli(empty_database, "migrate")

    assert (
        created.stdout == json.dumps({"from": None, "to": head_revision(), "changed": True}) + "\n"
    )
    assert created.stderr == ""
    assert (again.stdout, again.stderr) == (
        f"schema already at {head_revision()}; nothing to do\n",
        "",
    )


# -- Ctrl-C: after the batch in progress --------------------------------------------------------


def test_runs_resume_bulk__ctrl_c__stops_after_the_batch_in_progress(e2e_url: str) -> None:
    ids = failed_runs(e2e_url)
    with psycopg.connect(e2e_url) as blocker:  # a row of the second batch, locked
        blocker.execute("SELECT 1 FROM orchestrator.runs WHERE id = %s FOR UPDATE", (ids[150],))
        term = Terminal(e2e_url, "runs", "resume", "--function", "f", "--yes")
        eventually(lambda: resumed(e2e_url) == 100 and waiting_on_a_lock(e2e_url), what="batch 2")
        term.proc.send_signal(signal.SIGINT)
        term.wait_for("stopping after this batch")
        blocker.rollback()
    status, out, drawn = term.finish()

    assert status == 130, drawn
    assert out.endswith("200 of 250 run(s) resumed\n")
    assert (
        "interrupted: stopped after 200 of 250 run(s); 50 were not reached and are untouched"
        in drawn
    )
    assert resumed(e2e_url) == 200
    left = sql(e2e_url, "SELECT id::text FROM orchestrator.runs WHERE status = 'failed'")
    assert sorted(r[0] for r in left) == sorted(ids[200:])


def test_send_jsonl__ctrl_c__stops_after_the_batch_in_progress(
    e2e_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    write_jsonl(path, 3_000)
    with psycopg.connect(e2e_url) as blocker:  # an id of the third batch (lines 1001-1500)
        blocker.execute("INSERT INTO orchestrator.events (id, name) VALUES ('item-1200', 'x')")
        term = Terminal(e2e_url, "send", "--jsonl", str(path))
        eventually(lambda: events(e2e_url) == 1000 and waiting_on_a_lock(e2e_url), what="batch 3")
        term.proc.send_signal(signal.SIGINT)
        term.wait_for("stopping after this batch")
        blocker.rollback()
    status, out, drawn = term.finish()

    assert status == 130, drawn
    assert out == ""
    assert (
        "error: lines 1-1500 were sent (1500 events, 1500 new), lines 1501 and after were not: "
        f"interrupted by Ctrl-C; send the rest with `tail -n +1501 {path} | orchestrator send "
        "--jsonl -`"
    ) in " ".join(drawn.split()).replace("\n", "")
    assert events(e2e_url) == 1500


def test_gc__ctrl_c__stops_after_the_batch_in_progress_and_says_what_went(e2e_url: str) -> None:
    old_rows(e2e_url, runs=3_000)  # one a batch, each followed by a pause: half a minute or more

    term = Terminal(e2e_url, "gc", *AGES, ORCHESTRATOR_RETENTION_BATCH_SIZE="1")
    eventually(lambda: old_left(e2e_url) < 2_990, what="some batches")
    term.proc.send_signal(signal.SIGINT)
    status, out, drawn = term.finish()

    assert status == 130, drawn
    assert "interrupted: stopped after" in drawn
    deleted = {
        line.split()[0]: int(line.split()[1].replace(",", "")) for line in out.splitlines()[2:8]
    }
    assert 10 <= deleted["runs_completed"] + deleted["runs_failed"] < 3_000
    assert old_left(e2e_url) == 3_000 - deleted["runs_completed"] - deleted["runs_failed"]


def resumed(url: str) -> int:
    return count(url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'queued'")


def events(url: str) -> int:
    return count(url, "SELECT count(*) FROM orchestrator.events")


def old_left(url: str) -> int:
    return count(url, "SELECT count(*) FROM orchestrator.runs WHERE function_id = 'old'")


def waiting_on_a_lock(url: str) -> bool:
    value: Any = scalar(
        url,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND application_name = 'orchestrator-cli' AND wait_event_type = 'Lock'",
    )
    return bool(value)


def test_migrate__ctrl_c__rolls_everything_back_and_says_where_the_schema_is(
    empty_database: str,
) -> None:
    with psycopg.connect(empty_database, autocommit=True) as blocker:  # another host migrating
        blocker.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        term = Terminal(empty_database, "migrate")
        eventually(lambda: waiting_on_a_lock(empty_database), what="migrate waiting")
        term.wait_for("applying 0001_initial")
        term.proc.send_signal(signal.SIGINT)
        status, out, drawn = term.finish()

    assert status == 130, drawn
    assert out == ""
    assert "interrupted: the schema is at nothing (the migrations are applied in one" in drawn
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'orchestrator'"
    assert count(empty_database, tables) == 0
