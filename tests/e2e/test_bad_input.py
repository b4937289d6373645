"""Bad input gets a clear error, loses nothing, and the daemon keeps serving.

One daemon serves every case of this module (tests/e2e/shared.py), so each case meets a daemon
that has already been handed the bad input of the cases before it; each case that involves the
daemon ends by running a well-behaved function on it.
"""

from __future__ import annotations

from typing import Any

import pytest

from orchestrator import Orchestrator
from orchestrator.errors import InvalidEventError, PayloadError
from tests.conftest import eventually
from tests.e2e.apps.badinput import HOSTILE_EVENT
from tests.e2e.harness import cli, finished_run, scalar, send, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

APP = "tests.e2e.apps.badinput:app"
LIMIT = 1000  # max_step_output_bytes and max_event_bytes of the daemon
module_daemons, served = shared_daemons(
    APP, workers=1, max_step_output_bytes=LIMIT, max_event_bytes=LIMIT
)


def events_after(url: str, mark: int) -> list[tuple[Any, ...]]:
    """(id, name, data) of the events inserted after the sequence mark, in order."""
    return sql(
        url, "SELECT id, name, data FROM orchestrator.events WHERE seq > %s ORDER BY seq", (mark,)
    )


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
def test_step_result__not_json__run_fails_naming_the_step(served: Served, kind, says):
    e2e_url = served.url
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


def test_step_result__over_max_step_output_bytes__payload_too_large(served: Served):
    e2e_url = served.url
    run = finished_run(e2e_url, send(e2e_url, "bad/output", {"kind": "big"}))

    assert run["status"] == "failed"
    error = run["error"]
    assert (error["type"], error["code"]) == ("PayloadTooLargeError", "payload_too_large")
    assert "step 'produce' result is 2002 bytes" in error["message"]
    assert f"{LIMIT}-byte limit" in error["message"]
    assert step_row(e2e_url, run["id"], "produce")[:2] == ("failed", 1)
    assert executions(e2e_url, run["id"]) == 1
    assert_still_serving(e2e_url)


def test_step_error__message_with_nul__recorded_and_run_fails(served: Served):
    e2e_url = served.url
    run = finished_run(e2e_url, send(e2e_url, "bad/error", {"message": "bad byte <NUL> here"}))

    assert run["status"] == "failed"
    assert run["error"]["type"] == "ValueError"
    assert run["error"]["message"].startswith("bad byte ")
    assert run["error"]["message"].endswith(" here")
    status, attempt, step_error = step_row(e2e_url, run["id"], "explode")
    assert (status, attempt, step_error["type"]) == ("failed", 2, "ValueError")
    assert executions(e2e_url, run["id"]) == 2  # retries=1, and no crash recoveries
    recoveries = "SELECT recoveries FROM orchestrator.runs WHERE id = %s"
    assert scalar(e2e_url, recoveries, (run["id"],)) == 0
    assert_still_serving(e2e_url)


# -- events inserted by SQL ------------------------------------------------------------------


def test_sql_event__over_max_event_bytes__parked_without_a_run(served: Served):
    e2e_url = served.url
    big = send(e2e_url, "bad/normal", {"blob": "x" * 2 * LIMIT})

    def parked() -> list[tuple[Any, ...]]:
        return sql(
            e2e_url,
            "SELECT error FROM orchestrator.events WHERE id = %s AND ingested_at IS NOT NULL",
            (big,),
        )

    (error,) = eventually(parked, what="oversize event parked")[0]
    assert f"over max_event_bytes ({LIMIT})" in error
    runs_of_big = "SELECT count(*) FROM orchestrator.runs WHERE event_id = %s"
    assert scalar(e2e_url, runs_of_big, (big,)) == 0
    assert_still_serving(e2e_url)  # ingested after the parked event, which still has no run
    assert scalar(e2e_url, runs_of_big, (big,)) == 0


# -- events sent through the Python API ------------------------------------------------------


def event(name: str = "bad/normal", data: Any = None, event_id: str | None = None) -> dict:
    return {"name": name, "data": data if data is not None else {}, "id": event_id}


@pytest.mark.parametrize(
    ("sent", "error", "says"),
    [
        pytest.param(event("a\x00b"), InvalidEventError, "event name", id="nul-name"),
        pytest.param(event(event_id="id\x00"), InvalidEventError, "event id", id="nul-id"),
        pytest.param(event(data={"k": "a\x00b"}), PayloadError, "NUL", id="nul-value"),
        pytest.param(event(data={"k\x00": 1}), PayloadError, "NUL", id="nul-key"),
        pytest.param(event("half \ud800"), InvalidEventError, "event name", id="surrogate-name"),
        pytest.param(event(event_id="\udfff"), InvalidEventError, "event id", id="surrogate-id"),
        pytest.param(event(data={"k": "\ud800"}), PayloadError, "surrogate", id="surrogate-value"),
        pytest.param(event(""), InvalidEventError, "event name", id="empty-name"),
        pytest.param(event("n" * 257), InvalidEventError, "event name", id="long-name"),
        pytest.param(event(data={"k": float("inf")}), PayloadError, "Infinity", id="infinity"),
        pytest.param(event(data={"k": {1, 2}}), PayloadError, "not JSON", id="set"),
        pytest.param(event(data=[1, 2]), InvalidEventError, "JSON object", id="list-data"),
    ],
)
def test_send__malformed_event__clear_error_and_nothing_written(served: Served, sent, error, says):
    e2e_url = served.url
    mark = served.event_mark()
    app = Orchestrator(database_url=e2e_url)
    try:
        with pytest.raises(error) as caught:
            app.send(sent["name"], sent["data"], id=sent["id"])
    finally:
        app.close()

    assert says in str(caught.value)
    assert events_after(e2e_url, mark) == []


def test_send__hostile_strings__round_trip_exactly(served: Served):
    e2e_url = served.url
    mark = served.event_mark()
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
    assert events_after(e2e_url, mark) == [(event_id, HOSTILE_EVENT, data)]  # the duplicate: none
    runs_of_event = "SELECT count(*) FROM orchestrator.runs WHERE event_id = %s"
    assert scalar(e2e_url, runs_of_event, (event_id,)) == 1
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
def test_run__bad_app_path__one_line_error_and_no_traceback(served: Served, app, says):
    result = cli(served.url, "run", "--app", app, check=False)

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert says in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
