"""The `orchestrator` command line against a live daemon: send, runs list/show, functions."""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import uuid
from typing import Any

import pytest
from psycopg.types.json import Jsonb

from tests.conftest import eventually
from tests.e2e.apps import retries
from tests.e2e.harness import cli, scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.retries:app"
TERMINAL = ("completed", "failed", "cancelled")


def cli_send(url: str, name: str, data: dict[str, Any], *extra: str) -> str:
    return cli(url, "send", name, "--data", json.dumps(data), *extra).stdout.strip()


def sql_send(url: str, name: str, data: dict[str, Any]) -> str:
    return scalar(
        url,
        "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s) RETURNING id",
        (name, Jsonb(data)),
    )


def finished_run(url: str, event_id: str, timeout: float = 30.0) -> tuple[str, str]:
    def check() -> list[tuple[Any, ...]]:
        return sql(
            url,
            "SELECT id::text, status FROM orchestrator.runs WHERE event_id = %s "
            "AND status = ANY(%s)",
            (event_id, list(TERMINAL)),
        )

    return eventually(check, timeout=timeout, what=f"run of event {event_id} finished")[0]


def table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """(header cells, row cells) of a table printed by the CLI (columns split on 2+ spaces)."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    split = [re.split(r"\s{2,}", line.strip()) for line in lines]
    return split[0], split[1:]


def test_cli_send__prints_the_id__duplicate_id_creates_nothing(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)

    assert cli_send(e2e_url, "retry/flaky", {"succeed_on": 1}, "--id", "order-1") == "order-1"
    again = cli_send(e2e_url, "retry/flaky", {"succeed_on": 1}, "--id", "order-1")
    assert again.startswith("order-1") and "duplicate" in again
    generated = cli_send(e2e_url, "retry/flaky", {"succeed_on": 1})
    uuid.UUID(generated)
    as_json = json.loads(cli_send(e2e_url, "retry/flaky", {}, "--id", "order-1", "--json"))
    assert as_json == {"id": "order-1", "created": False}

    # events are ingested in order, so once the last one has its run the duplicates are done
    finished_run(e2e_url, generated)
    assert finished_run(e2e_url, "order-1")[1] == "completed"
    assert sql(e2e_url, "SELECT id, data FROM orchestrator.events ORDER BY seq") == [
        ("order-1", {"succeed_on": 1}),
        (generated, {"succeed_on": 1}),
    ]
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE event_id = 'order-1'") == 1
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs") == 2


def test_cli_send__data_not_a_json_object__one_line_error(e2e_url):
    for data in ("{not json", "[1, 2]"):
        result = cli(e2e_url, "send", "retry/flaky", "--data", data, check=False)
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0


def test_cli_runs_list__table_filters_limit_and_json(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)
    ok1 = finished_run(e2e_url, sql_send(e2e_url, "retry/flaky", {"succeed_on": 1}))[0]
    bad = finished_run(e2e_url, sql_send(e2e_url, "retry/non-retriable", {}))[0]
    ok2 = finished_run(e2e_url, sql_send(e2e_url, "retry/flaky", {"succeed_on": 1}))[0]

    header, rows = table(cli(e2e_url, "runs", "list").stdout)
    assert header == ["RUN", "FUNCTION", "STATUS", "ATTEMPTS", "CREATED", "FINISHED"]
    assert [r[:4] for r in rows] == [  # newest first
        [ok2, "flaky", "completed", "1"],
        [bad, "non-retriable", "failed", "1"],
        [ok1, "flaky", "completed", "1"],
    ]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", r[5]) for r in rows)

    def ids(*args: str) -> list[str]:
        return [row[0] for row in table(cli(e2e_url, "runs", "list", *args).stdout)[1]]

    assert ids("--status", "failed") == [bad]
    assert ids("--function", "flaky") == [ok2, ok1]
    assert ids("--limit", "1") == [ok2]
    assert ids("--status", "cancelled", "--function", "flaky") == ["(none)"]

    listed = json.loads(cli(e2e_url, "runs", "list", "--json").stdout)
    assert [(r["id"], r["function_id"], r["status"]) for r in listed] == [
        (ok2, "flaky", "completed"),
        (bad, "non-retriable", "failed"),
        (ok1, "flaky", "completed"),
    ]
    assert listed[1]["error"]["type"] == "NonRetriableError"
    assert listed[0]["output"] == {"step": "flaky-step", "execution": 1}
    filtered = json.loads(cli(e2e_url, "runs", "list", "--json", "--status", "failed").stdout)
    assert [r["id"] for r in filtered] == [bad]


def test_cli_runs_show__steps_with_status_attempts_output_error_and_timing(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)
    run_id, status = finished_run(e2e_url, sql_send(e2e_url, "retry/saga", {}))
    assert status == "completed"

    out = cli(e2e_url, "runs", "show", run_id).stdout
    fields = dict(re.split(r"\s+", line, maxsplit=1) for line in out.split("\n\n")[0].splitlines())
    assert fields["id"] == run_id
    assert (fields["function_id"], fields["status"]) == ("saga", "completed")
    assert fields["output"].startswith('{"error_type": "FlakyError", "compensated": "refunded')
    header, rows = table(out.split("\n\n", 1)[1])
    assert header == ["STEP", "KIND", "STATUS", "ATTEMPT", "OUTPUT/ERROR", "MS", "WAKE", "AT"]
    by_step = {row[0]: row for row in rows}
    assert list(by_step) == ["charge", "refund"]
    assert by_step["charge"][1:5] == ["run", "failed", "2", "FlakyError: payment provider is down"]
    assert by_step["refund"][1:5] == ["run", "completed", "1", '"refunded after: FlakyError"']
    for row in rows:  # MS is a whole number, AT a timestamp (WAKE is empty for run steps)
        assert row[5].isdigit(), row
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row[-1]), row

    assert cli(e2e_url, "runs", "show", run_id[:8]).stdout == out  # an unambiguous prefix

    shown = json.loads(cli(e2e_url, "runs", "show", run_id, "--json").stdout)
    assert (shown["id"], shown["status"], shown["attempts"]) == (run_id, "completed", 2)
    steps = {s["step_id"]: s for s in shown["steps"]}
    assert (steps["charge"]["status"], steps["charge"]["attempt"]) == ("failed", 2)
    assert steps["charge"]["error"]["type"] == "FlakyError"
    assert steps["charge"]["error"]["message"] == "payment provider is down"
    assert steps["refund"]["output"] == "refunded after: FlakyError"
    for step in shown["steps"]:
        assert isinstance(step["duration_ms"], int)
        assert step["created_at"] <= step["updated_at"]


def test_cli_runs_show__failed_run__shows_its_error(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)
    run_id, _ = finished_run(e2e_url, sql_send(e2e_url, "retry/non-retriable", {}))

    out = cli(e2e_url, "runs", "show", run_id).stdout
    assert re.search(r"^status\s+failed$", out, re.MULTILINE)
    assert re.search(r"^error\s+NonRetriableError: card declined: do not retry$", out, re.MULTILINE)
    row = next(r for r in table(out.split("\n\n", 1)[1])[1] if r[0] == "refuse")
    assert row[2:5] == ["failed", "1", "NonRetriableError: card declined: do not retry"]


@pytest.mark.parametrize("run_id", [str(uuid.UUID(int=7)), "nosuch", "0"])
def test_cli_runs_show__unknown_id__exits_1_with_one_line_error(e2e_url, run_id):
    # "0" is a prefix of no run here, since the database has none
    result = cli(e2e_url, "runs", "show", run_id, check=False)

    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no run matches")
    assert run_id in lines[0]
    assert result.stdout == ""


def test_cli_functions__lists_the_registered_functions(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)

    header, rows = table(cli(e2e_url, "functions").stdout)
    assert header == ["ID", "TRIGGERS", "RETRIES", "VERSION", "UPDATED", "SERVED BY", "LAST SERVED"]
    assert [row[:3] for row in rows] == [
        ["always-fails", "event(retry/always)", "2"],
        ["flaky", "event(retry/flaky)", "3"],
        ["non-retriable", "event(retry/non-retriable)", "3"],
        ["retry-after", "event(retry/after)", "3"],
        ["saga", "event(retry/saga)", "1"],
    ]
    listed = json.loads(cli(e2e_url, "functions", "--json").stdout)
    assert [f["id"] for f in listed] == [
        "always-fails",
        "flaky",
        "non-retriable",
        "retry-after",
        "saga",
    ]
    flaky = next(f for f in listed if f["id"] == "flaky")
    assert flaky["triggers"] == [{"type": "event", "name": "retry/flaky", "if": None}]
    assert flaky["options"] == {
        "retries": 3,
        "backoff": {"base": 0.2, "max": 1.0},
        "cancel_on": [],
        "on_failure": None,
    }
    # the version is the first 16 hex digits of sha256("<id>\n<source, decorator included>")
    source = inspect.getsource(retries.flaky)
    assert source.startswith('@app.function("flaky"')
    assert flaky["version"] == hashlib.sha256(f"flaky\n{source}".encode()).hexdigest()[:16]
    assert rows[1][3] == flaky["version"]  # the table shows the same
