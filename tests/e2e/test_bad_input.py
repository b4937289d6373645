"""Bad input gets a clear error, loses nothing, and the daemon keeps serving.

Each case that involves the daemon ends by running a well-behaved function on the same daemon.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb

from orchestrator import Orchestrator
from orchestrator.errors import InvalidEventError, PayloadError
from tests.conftest import eventually
from tests.e2e.apps.badinput import HOSTILE_EVENT
from tests.e2e.harness import cli, scalar, sql

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.badinput:app"
TERMINAL = ("completed", "failed", "cancelled")


def send(url: str, name: str, data: dict[str, Any] | None = None) -> str:
    return scalar(
        url,
        "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s) RETURNING id",
        (name, Jsonb(data or {})),
    )


def finished_run(url: str, event_id: str, timeout: float = 30.0) -> dict[str, Any]:
    def check() -> list[tuple[Any, ...]]:
        return sql(
            url,
            "SELECT id::text, status, output, error FROM orchestrator.runs "
            "WHERE event_id = %s AND status = ANY(%s)",
            (event_id, list(TERMINAL)),
        )

    rows = eventually(check, timeout=timeout, what=f"run of event {event_id} finished")
    run_id, status, output, error = rows[0]
    return {"id": run_id, "status": status, "output": output, "error": error}


def step_row(url: str, run_id: str, step_id: str) -> tuple[Any, ...]:
    return sql(
        url,
        "SELECT status, attempt, error FROM orchestrator.steps WHERE run_id = %s AND step_id = %s",
        (run_id, step_id),
    )[0]


def executions(url: str, run_id: str) -> int:
    return scalar(url, "SELECT count(*) FROM effects WHERE run_id = %s", (run_id,))


def assert_still_serving(url: str) -> None:
    run = finished_run(url, send(url, "bad/normal"))
    assert (run["status"], run["output"]) == ("completed", "ok"), run["error"]


# -- step results ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("set", "contains a set, which is not JSON"),
        ("object", "contains a Widget, which is not JSON"),
        ("nan", "NaN"),
        ("lone-surrogate", "surrogate"),
    ],
)
def test_step_result__not_json__run_fails_naming_the_step(e2e_url, daemon_factory, kind, says):
    daemon_factory(APP, workers=1)
    run = finished_run(e2e_url, send(e2e_url, "bad/output", {"kind": kind}))

    assert run["status"] == "failed"
    error = run["error"]
    assert (error["type"], error["code"]) == ("PayloadError", "payload_not_json")
    assert "step 'produce' result" in error["message"]
    assert says in error["message"]
    assert "JSON" in error["message"]
    status, attempt, step_error = step_row(e2e_url, run["id"], "produce")
    assert (status, attempt, step_error["code"]) == ("failed", 1, "payload_not_json")
    assert executions(e2e_url, run["id"]) == 1  # bad data is not retried
    assert_still_serving(e2e_url)


def test_step_result__over_max_step_output_bytes__payload_too_large(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1, max_step_output_bytes=1000)
    run = finished_run(e2e_url, send(e2e_url, "bad/output", {"kind": "big"}))

    assert run["status"] == "failed"
    error = run["error"]
    assert (error["type"], error["code"]) == ("PayloadTooLargeError", "payload_too_large")
    assert "step 'produce' result is 2002 bytes" in error["message"]
    assert "1000-byte limit" in error["message"]
    assert step_row(e2e_url, run["id"], "produce")[:2] == ("failed", 1)
    assert executions(e2e_url, run["id"]) == 1
    assert_still_serving(e2e_url)


def test_step_error__message_with_nul__recorded_and_run_fails(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)
    run = finished_run(e2e_url, send(e2e_url, "bad/error", {"message": "bad byte <NUL> here"}))

    assert run["status"] == "failed"
    assert run["error"]["type"] == "ValueError"
    assert run["error"]["message"].startswith("bad byte ")
    assert run["error"]["message"].endswith(" here")
    status, attempt, step_error = step_row(e2e_url, run["id"], "explode")
    assert (status, attempt, step_error["type"]) == ("failed", 2, "ValueError")
    assert executions(e2e_url, run["id"]) == 2  # retries=1, and no crash recoveries
    assert scalar(e2e_url, "SELECT recoveries FROM orchestrator.runs WHERE id = %s", (run["id"],)) == 0
    assert_still_serving(e2e_url)


# -- events inserted by SQL ------------------------------------------------------------------


@pytest.mark.parametrize("data", ["[1,2]", '"x"', "null", "1", "true"])
def test_sql_event__data_not_an_object__rejected_by_constraint(e2e_url, daemon_factory, data):
    daemon_factory(APP, workers=1)
    with pytest.raises(psycopg.errors.CheckViolation) as caught:
        sql(e2e_url, "INSERT INTO orchestrator.events (name, data) VALUES ('bad/normal', %s)",
            (data,))

    assert caught.value.diag.constraint_name == "events_data_is_object"
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0
    assert_still_serving(e2e_url)


def test_sql_event__over_max_event_bytes__parked_without_a_run(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1, max_event_bytes=1000)
    big = send(e2e_url, "bad/normal", {"blob": "x" * 2000})

    def parked() -> list[tuple[Any, ...]]:
        return sql(
            e2e_url,
            "SELECT error FROM orchestrator.events WHERE id = %s AND ingested_at IS NOT NULL",
            (big,),
        )

    (error,) = eventually(parked, what="oversize event parked")[0]
    assert "over max_event_bytes (1000)" in error
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE event_id = %s", (big,)) == 0
    assert_still_serving(e2e_url)
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs WHERE event_id = %s", (big,)) == 0


# -- events sent through the Python API ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "event_id", "error", "says"),
    [
        ("a\x00b", {}, None, InvalidEventError, "event name"),
        ("bad/normal", {}, "id\x00", InvalidEventError, "event id"),
        ("bad/normal", {"k": "a\x00b"}, None, PayloadError, "NUL"),
        ("bad/normal", {"k\x00": 1}, None, PayloadError, "NUL"),
        ("half \ud800", {}, None, InvalidEventError, "event name"),
        ("bad/normal", {}, "\udfff", InvalidEventError, "event id"),
        ("bad/normal", {"k": "\ud800"}, None, PayloadError, "surrogate"),
        ("", {}, None, InvalidEventError, "event name"),
        ("n" * 257, {}, None, InvalidEventError, "event name"),
        ("bad/normal", {"k": float("inf")}, None, PayloadError, "Infinity"),
        ("bad/normal", {"k": {1, 2}}, None, PayloadError, "not JSON"),
    ],
    ids=["nul-name", "nul-id", "nul-value", "nul-key", "surrogate-name", "surrogate-id",
         "surrogate-value", "empty-name", "long-name", "infinity", "set"],
)
def test_send__malformed_event__clear_error_and_nothing_written(
    e2e_url, name, data, event_id, error, says
):
    app = Orchestrator(database_url=e2e_url)
    try:
        with pytest.raises(error) as caught:
            app.send(name, data, id=event_id)
    finally:
        app.close()

    assert says in str(caught.value)
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.events") == 0


def test_send__hostile_strings__round_trip_exactly(e2e_url, daemon_factory):
    daemon_factory(APP, workers=1)
    event_id = "id'\"\\%s$1;-- \u2028\u202e😀"
    data = {
        "sql": "'); DROP TABLE orchestrator.events; --",
        "format": "%s %(x)s {0} $1",
        "escapes": "\\u0000 is six characters here, \\n too",
        "unicode": "\u202e\u2028\ufeffé😀",
        "key with 'quotes' and \"dq\"": ["\t", "\r\n", "\x7f"],
    }
    app = Orchestrator(database_url=e2e_url)
    try:
        assert app.send(HOSTILE_EVENT, data, id=event_id) == event_id
        assert app.send(HOSTILE_EVENT, data, id=event_id) == event_id  # a duplicate
    finally:
        app.close()

    run = finished_run(e2e_url, event_id)
    assert run["status"] == "completed", run["error"]
    assert run["output"] == {"id": event_id, "name": HOSTILE_EVENT, "data": data}
    assert sql(e2e_url, "SELECT id, name, data FROM orchestrator.events") == [
        (event_id, HOSTILE_EVENT, data)
    ]
    assert scalar(e2e_url, "SELECT count(*) FROM orchestrator.runs") == 1
    assert_still_serving(e2e_url)


# -- the --app argument ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "says"),
    [
        ("nosuch.module:app", "no such module"),
        ("examples.app:nosuch", "has no attribute 'nosuch'"),
        ("nocolon", "not of the form 'package.module:attr'"),
        ("examples.app:create_account", "not an Orchestrator"),
    ],
)
def test_run__bad_app_path__one_line_error_and_no_traceback(e2e_url, app, says):
    result = cli(e2e_url, "run", "--app", app, check=False)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert says in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
