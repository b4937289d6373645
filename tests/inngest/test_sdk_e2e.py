"""The official Inngest SDKs (JS v3, JS v4, Python) against our daemon in dev mode, end to end.

Per SDK one stack (tests/inngest/sdk_stack.py): `orchestrator dev -u <app url>` and the SDK
app, both real subprocesses, on a database of their own. Events go in through the SDK's own
`inngest.send()`. A step body appends a line to a count file in the app, so "no completed
step ran twice" is checked by counting, not assumed. Signed mode is
test_sdk_e2e_signed.py (a module of its own, so one stack runs at a time).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import eventually
from tests.e2e.harness import cli, scalar, sql
from tests.inngest.sdk_harness import KINDS
from tests.inngest.sdk_stack import Stack, step_hash
from tests.inngest.sdk_stack import dev_stack as start_dev_stack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]


@pytest.fixture(scope="module", params=KINDS)
def dev_stack(
    request: pytest.FixtureRequest,
    server_url: str,
    template_name: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    kind: str = request.param
    work: Path = tmp_path_factory.mktemp(f"inngest-dev-{kind}")
    with start_dev_stack(kind, server_url, template_name, work) as stack:
        yield stack


# --- dev mode ---------------------------------------------------------------------------


def test_sync_maps_the_apps_functions(dev_stack: Stack) -> None:
    s = dev_stack
    app_row = sql(
        s.url, "SELECT url, sdk, refused FROM orchestrator.apps WHERE id = %s", (s.app.app_id,)
    )
    assert app_row, "the app was not recorded"
    assert app_row[0][0] == s.app.url
    ids = {
        r[0]
        for r in sql(
            s.url, "SELECT id FROM orchestrator.functions WHERE id LIKE %s", (s.app.app_id + "-%",)
        )
    }
    for slug in (
        "send-welcome",
        "tick",
        "await-payment",
        "double",
        "invoke-double",
        "fan-out",
        "always-fails",
        "always-fails-failure",
    ):
        assert s.fn(slug) in ids, f"{slug} missing from {sorted(ids)}"

    # the cron function got a schedule like any cron function: the daemon records it when it
    # takes on the synced functions (on the sync's NOTIFY), after the sync has answered
    def schedule() -> object:
        return scalar(
            s.url, "SELECT cron FROM orchestrator.schedules WHERE function_id = %s", (s.fn("tick"),)
        )

    eventually(lambda: schedule() is not None, timeout=30, what="the cron schedule")
    assert schedule() == "* * * * *"
    listed = cli(s.url, "apps", "list").stdout
    assert s.app.app_id in listed


def test_steps_sleep_and_kill9_mid_sleep(dev_stack: Stack) -> None:
    """send-welcome: step.run, step.sleep (6 s), step.run. The daemon is killed with SIGKILL
    during the sleep and started again: the run completes, and neither step body ran twice."""
    s = dev_stack
    email = f"{uuid.uuid4().hex[:8]}@example.com"
    pause = {"python": {"pause_s": 6}}.get(s.kind, {"pause": "6s"})
    event_id = s.send("app/user.signup", {"email": email, **pause})
    run_id = s.run_of(event_id, s.fn("send-welcome"))

    eventually(lambda: s.status(run_id) == "sleeping", timeout=30, what="the run sleeping")
    assert s.app.counts(run_id) == {("send-welcome", "load-user"): 1}
    s.daemon.kill9()
    s.daemon.start()

    done = s.finished(run_id, timeout=60)
    assert done["status"] == "completed", done
    assert done["output"] == {"sent": email}
    assert s.app.counts(run_id) == {
        ("send-welcome", "load-user"): 1,
        ("send-welcome", "send-email"): 1,
    }
    steps = s.steps(run_id)
    for user_id in ("load-user", "pause", "send-email"):
        assert step_hash(user_id) in steps, f"{user_id} not recorded: {steps}"
        assert steps[step_hash(user_id)][1] == "completed", steps
    assert email in json.dumps(steps[step_hash("load-user")][2])
    shown = cli(s.url, "runs", "show", run_id).stdout
    assert "completed" in shown
    assert step_hash("send-email") in shown or "send-email" in shown


def test_wait_for_event_with_if(dev_stack: Stack) -> None:
    """step.waitForEvent with `if: async.data.order_id == event.data.order_id`: an order.paid
    for another order does not end the wait, the matching one does (its amount comes back)."""
    s = dev_stack
    order = uuid.uuid4().hex[:10]
    event_id = s.send("app/order.created", {"order_id": order})
    run_id = s.run_of(event_id, s.fn("await-payment"))
    eventually(lambda: s.status(run_id) == "waiting", timeout=30, what="the run waiting")

    s.send("app/order.paid", {"order_id": "another-" + order, "amount": 1})
    s.send("app/order.paid", {"order_id": order, "amount": 42})
    done = s.finished(run_id)
    assert done["status"] == "completed", done
    assert done["output"] == {"paid": 42}
    assert s.app.counts(run_id) == {("await-payment", "after-wait"): 1}


def test_invoke(dev_stack: Stack) -> None:
    s = dev_stack
    event_id = s.send("app/invoke", {"n": 21})
    run_id = s.run_of(event_id, s.fn("invoke-double"))
    done = s.finished(run_id)
    assert done["status"] == "completed", done
    assert done["output"] == {"result": {"doubled": 42}}
    child = sql(
        s.url,
        "SELECT id::text, status, output FROM orchestrator.runs WHERE parent_run_id = %s",
        (run_id,),
    )
    assert len(child) == 1, child
    child_id, child_status, child_output = child[0]
    assert (child_status, child_output) == ("completed", {"doubled": 42})
    assert scalar(
        s.url, "SELECT function_id FROM orchestrator.runs WHERE id = %s", (child_id,)
    ) == s.fn("double")
    assert s.app.counts(child_id) == {("double", "double-it"): 1}


def test_parallel_steps(dev_stack: Stack) -> None:
    """Promise.all / group.parallel of three step.run, then one more: each body ran once."""
    s = dev_stack
    event_id = s.send("app/fan.out", {})
    run_id = s.run_of(event_id, s.fn("fan-out"))
    done = s.finished(run_id)
    assert done["status"] == "completed", done
    assert done["output"] == {"parts": [97, 98, 99], "total": 294}
    assert s.app.counts(run_id) == {
        ("fan-out", "part-a"): 1,
        ("fan-out", "part-b"): 1,
        ("fan-out", "part-c"): 1,
        ("fan-out", "total"): 1,
    }
    # each planned step is recorded under a step id naming its SDK (hashed) id
    recorded = " ".join(s.steps(run_id))
    for k in "abc":
        assert step_hash(f"part-{k}") in recorded, recorded


def test_cron_tick(dev_stack: Stack) -> None:
    """The SDK's cron function ("* * * * *") fires from our schedule: the test makes its next
    tick due now instead of waiting up to a minute, and the leader fires it."""
    s = dev_stack
    fid = s.fn("tick")
    runs = "SELECT id::text FROM orchestrator.runs WHERE function_id = %s"
    before = {r[0] for r in sql(s.url, runs, (fid,))}
    sql(
        s.url,
        "UPDATE orchestrator.schedules SET next_fire_at = now() - interval '1 second' "
        "WHERE function_id = %s",
        (fid,),
    )
    # a tick's idempotency key is its time: if this minute's tick fired already, the forced
    # one is that same tick and the next minute's fires instead (hence up to 75 s)
    fired = eventually(
        lambda: {r[0] for r in sql(s.url, runs, (fid,))} - before,
        timeout=75,
        what="a tick of the SDK's cron function",
    )
    run_id = sorted(fired)[0]
    done = s.finished(run_id)
    assert done["status"] == "completed", done
    assert done["output"] == {"ticked": True}
    assert s.app.counts(run_id) == {("tick", "tick-once"): 1}


def test_on_failure_handler(dev_stack: Stack) -> None:
    """A step throws NonRetriableError: the run fails once, with the SDK's message, and the
    function's onFailure handler (the SDK's `<id>-failure` function) runs with the error."""
    s = dev_stack
    event_id = s.send("app/fail", {"why": "on purpose"})
    run_id = s.run_of(event_id, s.fn("always-fails"))
    done = s.finished(run_id)
    assert done["status"] == "failed", done
    assert "nope, on purpose" in json.dumps(done["error"]), done
    assert s.app.counts(run_id) == {("always-fails", "doomed"): 1}

    handler_fn = s.fn("always-fails") + "-failure"
    rows = eventually(
        lambda: sql(
            s.url,
            "SELECT id::text FROM orchestrator.runs WHERE function_id = %s",
            (handler_fn,),
        ),
        timeout=30,
        what=f"a run of {handler_fn}",
    )
    handler_run = rows[0][0]
    handled = s.finished(handler_run)
    assert handled["status"] == "completed", handled
    # the message the handler sees is the app's own (we may add the HTTP status after it)
    assert str(handled["output"]["handled"]).startswith("nope, on purpose"), handled
    assert s.app.counts(handler_run) == {("always-fails-failure", "note-failure"): 1}


def test_sdk_events_reach_native_functions_too(dev_stack: Stack) -> None:
    """An event sent with the SDK's send() is an event like any other: it starts a plain
    Python function of the same daemon."""
    s = dev_stack
    event_id = s.send("app/native.ping", {"x": 7})
    run_id = s.run_of(event_id, "native-ping")
    done = s.finished(run_id)
    assert (done["status"], done["output"]) == ("completed", {"pong": 7})


def test_step_send_event_reaches_our_event_api(dev_stack: Stack) -> None:
    """step.sendEvent / step.send_event: the app sends from inside a step, through the SDK's
    client, to our event API; the event starts a plain Python function."""
    s = dev_stack
    x = int(uuid.uuid4().int % 100000)
    event_id = s.send("app/relay", {"x": x})
    run_id = s.run_of(event_id, s.fn("relay"))
    done = s.finished(run_id)
    assert (done["status"], done["output"]) == ("completed", {"relayed": 1}), done
    pongs = eventually(
        lambda: sql(
            s.url,
            "SELECT status, output FROM orchestrator.runs WHERE function_id = 'native-ping' "
            "AND output = %s::jsonb",
            (json.dumps({"pong": x}),),
        ),
        timeout=30,
        what="the native function started by the relayed event",
    )
    assert pongs == [("completed", {"pong": x})]
