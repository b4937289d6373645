"""Invoked child runs and sent events, against the real daemon (tests/e2e/apps/coordination.py).

`ctx.step.invoke` makes a child run (parent_run_id set, triggered by the event
`orchestrator/function.invoked`) and waits for the `orchestrator/function.finished` event its
end records. `ctx.step.send_event` sends events whose ids derive from the run and the step,
so a replay after a crash sends nothing twice.

One daemon serves the tests of this module (tests/e2e/shared.py), each looking at its own runs;
the crash test starts and kills daemons of its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import eventually
from tests.e2e.harness import cli, finished_run, run_of, scalar, send, sql
from tests.e2e.shared import Served, shared_daemons

pytestmark = pytest.mark.e2e

APP = "tests.e2e.apps.coordination:app"
module_daemons, served = shared_daemons(APP)


def run_row(url: str, run_id: str) -> dict[str, Any]:
    rows = sql(
        url,
        "SELECT status, output, error, recoveries FROM orchestrator.runs WHERE id = %s",
        (run_id,),
    )
    status, output, error, recoveries = rows[0]
    return {"status": status, "output": output, "error": error, "recoveries": recoveries}


def children(url: str, parent_id: str) -> dict[str, dict[str, Any]]:
    """The parent's invoked runs by function id."""
    rows = sql(
        url,
        "SELECT function_id, id::text, status, output, error, events -> 0 "
        "FROM orchestrator.runs WHERE parent_run_id = %s",
        (parent_id,),
    )
    return {
        fid: {"id": rid, "status": status, "output": output, "error": error, "trigger": trigger}
        for fid, rid, status, output, error, trigger in rows
    }


def effect_counts(url: str, run_id: str) -> dict[str, int]:
    rows = sql(url, "SELECT step, count(*) FROM effects WHERE run_id = %s GROUP BY step", (run_id,))
    return dict(rows)


@pytest.mark.timeout(60)
def test_invoke__child_output_returned__failing_child_raises_catchable_step_error(
    served: Served,
):
    e2e_url = served.url
    event_id = send(e2e_url, "math/parent", {"x": 21})

    parent = finished_run(e2e_url, event_id)

    assert parent["status"] == "completed", parent
    assert parent["output"] == {"doubled": 42, "caught": "child exploded"}
    kids = children(e2e_url, parent["id"])
    assert set(kids) == {"double", "explode"}
    assert kids["double"]["status"] == "completed"
    assert kids["double"]["output"] == 42
    assert kids["explode"]["status"] == "failed"
    assert kids["explode"]["error"]["message"] == "child exploded"
    assert kids["double"]["trigger"]["data"] == {"x": 21}
    for kid in kids.values():
        assert kid["trigger"]["name"] == "orchestrator/function.invoked"
        assert kid["trigger"]["id"] == f"invoke:{kid['id']}"  # the id derives from the step
    steps = sql(
        e2e_url,
        "SELECT step_id, kind, status FROM orchestrator.steps WHERE run_id = %s ORDER BY position",
        (parent["id"],),
    )
    assert steps == [("double", "invoke", "completed"), ("explode", "invoke", "completed")]
    finished = dict(
        sql(
            e2e_url,
            "SELECT id, data FROM orchestrator.events "
            "WHERE name = 'orchestrator/function.finished' AND data->>'parent_run_id' = %s",
            (parent["id"],),
        )
    )
    assert set(finished) == {f"finished:{kid['id']}" for kid in kids.values()}
    by_function = {data["function_id"]: data for data in finished.values()}
    assert by_function["double"]["status"] == "completed"
    assert by_function["double"]["output"] == 42
    assert by_function["double"]["parent_run_id"] == parent["id"]
    assert by_function["explode"]["status"] == "failed"
    assert by_function["explode"]["parent_run_id"] == parent["id"]


@pytest.mark.timeout(60)
def test_invoke__cancel_parent_via_cli__unfinished_child_cancelled(served: Served):
    e2e_url = served.url
    parent_id = run_of(e2e_url, send(e2e_url, "math/slow-parent"))
    eventually(
        lambda: run_row(e2e_url, parent_id)["status"] == "waiting", what="parent waiting on child"
    )
    child = eventually(
        lambda: (
            (kid := children(e2e_url, parent_id).get("slow-child"))
            and kid["status"] == "sleeping"
            and kid
        ),
        what="child asleep",
    )

    result = cli(e2e_url, "runs", "cancel", parent_id)

    assert f"{parent_id}: cancelled" in result.stdout, result.stdout
    assert "1 invoked run(s) cancelled with it" in result.stdout, result.stdout
    eventually(
        lambda: (
            run_row(e2e_url, parent_id)["status"] == "cancelled"
            and run_row(e2e_url, child["id"])["status"] == "cancelled"
        ),
        timeout=5,
        what="parent and child cancelled",
    )
    parent, kid = run_row(e2e_url, parent_id), run_row(e2e_url, child["id"])
    assert parent["error"]["code"] == "cancelled"
    assert kid["error"]["code"] == "cancelled"
    assert parent["output"] is None and kid["output"] is None
    # the child's end is still recorded (for its already cancelled parent); no wait is left
    finished = scalar(
        e2e_url, "SELECT data FROM orchestrator.events WHERE id = %s", (f"finished:{child['id']}",)
    )
    assert finished is not None and finished["status"] == "cancelled"
    assert (
        scalar(
            e2e_url,
            "SELECT count(*) FROM orchestrator.waits WHERE run_id = ANY(%s::uuid[])",
            ([parent_id, child["id"]],),
        )
        == 0
    )


@pytest.mark.timeout(90)
def test_invoke__send_event_then_kill9_and_replay__each_event_sent_once(e2e_url, daemon_factory):
    daemon = daemon_factory(APP)
    run_id = run_of(e2e_url, send(e2e_url, "send/start", {"n": 3}))
    eventually(
        lambda: effect_counts(e2e_url, run_id).get("after") == 1, what="step 'after' started"
    )

    daemon.kill9()
    daemon_factory(APP)
    eventually(
        lambda: effect_counts(e2e_url, run_id).get("after") == 2,
        timeout=30,
        what="step 'after' re-executed after the restart",
    )
    sql(e2e_url, "INSERT INTO gates (name) VALUES (%s)", (run_id,))
    eventually(
        lambda: run_row(e2e_url, run_id)["status"] == "completed", what=f"run {run_id} completed"
    )

    expected = [f"{run_id}:notify:{i}" for i in range(3)]
    sent = sql(
        e2e_url,
        "SELECT id, data FROM orchestrator.events WHERE name = 'send/out' ORDER BY id",
    )
    assert [row[0] for row in sent] == expected
    assert [row[1] for row in sent] == [{"i": i, "run": run_id} for i in range(3)]
    row = run_row(e2e_url, run_id)
    assert row["output"] == expected
    assert row["recoveries"] == 1
    notify = sql(
        e2e_url,
        "SELECT kind, status, output FROM orchestrator.steps WHERE run_id = %s "
        "AND step_id = 'notify'",
        (run_id,),
    )
    assert notify == [("send_event", "completed", expected)]
    assert effect_counts(e2e_url, run_id) == {"after": 2}
