"""What the `orchestrator` command says about bad input: argument checks, clear messages,
JSON errors with `--json`, warnings for mistyped variables, and what `migrate` changed."""

from __future__ import annotations

import json
import os
import re
import uuid

import pytest

from orchestrator.db import migrate
from orchestrator.db.database import Database
from tests.conftest import with_database
from tests.e2e.harness import cli, run_cli, scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


def make_runs(url: str, *ids: str) -> None:
    """Queued runs with these ids, as a sender's event would make them (no daemon needed)."""
    for run_id in ids:
        sql(
            url,
            "INSERT INTO orchestrator.runs (id, function_id, status, event_id, events) "
            "VALUES (%s, 'f', 'queued', 'e', '[]')",
            (run_id,),
        )


def error_json(result) -> dict:
    assert result.stdout.count("\n") == 1, result.stdout  # one JSON line, nothing else
    return json.loads(result.stdout)["error"]


@pytest.mark.parametrize("limit", ["-1", "0", "many"])
def test_runs_list_limit__not_a_positive_number__usage_error(e2e_url, limit):
    result = cli(e2e_url, "runs", "list", "--limit", limit, check=False)

    assert result.returncode == 2
    assert result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("orchestrator runs list: error: argument --limit: "), last
    assert "error: database" not in result.stderr  # was: LIMIT must not be negative


def test_runs_list_status__unknown__usage_error_listing_the_statuses(e2e_url):
    result = cli(e2e_url, "runs", "list", "--status", "runing", check=False)

    assert result.returncode == 2
    assert result.stdout == ""
    assert "invalid choice: 'runing'" in result.stderr
    for status in ("queued", "running", "sleeping", "waiting", "completed", "failed", "cancelled"):
        assert f"'{status}'" in result.stderr


@pytest.mark.parametrize(
    ("data", "kind"),
    [("null", "null"), ("[1, 2]", "array"), ('"text"', "string"), ("3", "number")],
)
def test_send_data_not_an_object__names_the_json_type(e2e_url, data, kind):
    result = cli(e2e_url, "send", "x", "--data", data, check=False)

    assert result.returncode == 1
    assert result.stderr == f"error: event data must be a JSON object, got {kind}\n"
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0


def test_runs_show__ambiguous_prefix__lists_the_candidates(e2e_url):
    first, second = "abc00000-0000-4000-8000-000000000001", "abc00000-0000-4000-8000-000000000002"
    make_runs(e2e_url, first, second, "f0000000-0000-4000-8000-000000000003")

    result = cli(e2e_url, "runs", "show", "abc", check=False)

    assert result.returncode == 1
    assert result.stderr == (
        f"error: run id prefix 'abc' is ambiguous: 2 runs start with it ({first}, {second}); "
        "give more characters\n"
    )
    assert cli(
        e2e_url, "runs", "show", "abc00000-0000-4000-8000-0000000000", check=False
    ).stderr == (result.stderr.replace("'abc'", "'abc00000-0000-4000-8000-0000000000'"))
    shown = json.loads(cli(e2e_url, "runs", "show", "f0", "--json").stdout)  # one run only
    assert shown["id"] == "f0000000-0000-4000-8000-000000000003"


def test_runs_cancel_and_replay__ambiguous_prefix__say_so(e2e_url):
    ids = [f"ddd00000-0000-4000-8000-00000000000{i}" for i in range(7)]
    make_runs(e2e_url, *ids)

    for command in (["runs", "cancel", "ddd"], ["runs", "replay", "ddd"]):
        error = error_json(cli(e2e_url, *command, "--json", check=False))
        assert error["code"] == "run_not_found"
        # five listed, and the rest summed up
        assert error["message"] == (
            f"run id prefix 'ddd' is ambiguous: more than 5 runs start with it "
            f"({', '.join(ids[:5])}, …); give more characters"
        )
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE status = 'queued'") == 7


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        (str(uuid.UUID(int=7)), "no run id starts with it"),
        ("0", "no run id starts with it"),
        ("nosuch", "a run id is a UUID (or its first hex digits)"),
    ],
)
def test_runs_show__no_match__says_why(e2e_url, ref, why):
    result = cli(e2e_url, "runs", "show", ref, check=False)

    assert result.returncode == 1
    assert result.stderr.startswith(f"error: no run matches {ref!r}: {why}"), result.stderr


def test_env_typo__warned_with_the_nearest_name__command_still_runs(e2e_url):
    env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=e2e_url, ORCHESTRATOR_WOKERS="3")
    env["ORCHESTRATOR_TEST_DATABASE_URL"] = "postgresql://elsewhere/db"  # not ours: no warning

    result = run_cli(("runs", "list", "--json"), env)

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
    assert result.stderr.splitlines() == [
        "warning: ORCHESTRATOR_WOKERS is not a configuration variable and is ignored; "
        "did you mean ORCHESTRATOR_WORKERS?"
    ]


def test_migrate__says_whether_it_changed_anything(empty_database):
    head = migrate.head_revision()

    assert cli(empty_database, "migrate").stdout == f"schema created at {head}\n"
    assert cli(empty_database, "migrate").stdout == f"schema already at {head}; nothing to do\n"
    as_json = json.loads(cli(empty_database, "migrate", "--json").stdout)
    assert as_json == {"from": head, "to": head, "changed": False}


def test_migrate__from_an_older_revision__names_both(empty_database):
    db = Database(empty_database, pool_size=1)
    try:
        migrate.upgrade(db.engine, "0001")  # the schema of the first release
    finally:
        db.dispose()

    result = cli(empty_database, "migrate")

    assert result.stdout == f"schema upgraded from 0001 to {migrate.head_revision()}\n"


def test_json_errors__usage_and_engine_errors_are_json_on_stdout(e2e_url):
    unknown = error_json(cli(e2e_url, "runs", "list", "--frobnicate", "--json", check=False))
    assert unknown == {"code": "usage_error", "message": "unrecognized arguments: --frobnicate"}
    missing = error_json(cli(e2e_url, "--json", "runs", "show", check=False))
    assert missing["code"] == "usage_error"
    assert missing["message"] == "the following arguments are required: run_id"
    typo = cli(e2e_url, "runs", "list", "--databse-url", "postgresql://u:s3cret@h/db", check=False)
    assert typo.returncode == 2
    assert typo.stderr.endswith(
        "error: unrecognized arguments: --databse-url postgresql://u:***@h/db\n"
    )
    bad_data = error_json(cli(e2e_url, "send", "x", "--data", "{oops", "--json", check=False))
    assert bad_data["code"] == "invalid_event"
    assert bad_data["message"].startswith("--data is not valid JSON: ")


def test_json_errors__database_error_has_a_code(server_url):
    url = with_database(server_url, "no_such_database_here")

    result = cli(url, "runs", "list", "--json", check=False)

    assert result.returncode == 1
    error = error_json(result)
    assert error["code"] == "database_error"
    assert re.search(r'database "no_such_database_here" does not exist', error["message"])
