"""The driver (orchestrator/inngest/driver.py) running SDK-served functions end to end
through the engine (orchestrator.testing.TestEnv: the daemon's statements, the worker's
execute(), virtual time) against a small HTTP server that answers like an SDK
(tests/inngest/fake_sdk.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from orchestrator import Orchestrator
from orchestrator.db.functions import FunctionRow
from orchestrator.inngest import calls, remote, sync
from orchestrator.testing import TestEnv
from tests.db.helpers import execute as sql
from tests.inngest.fake_sdk import FakeSdk, NonRetriable, Report, RetryLater, Tools, hashed

KEY = "signkey-test-" + "5a" * 32


@pytest.fixture
def sdk() -> Iterator[FakeSdk]:
    with FakeSdk() as server:
        yield server


def served(sdk: FakeSdk, settings: calls.Settings | None = None) -> TestEnv:
    """A test environment serving the fake app's functions through the driver."""
    app = Orchestrator()
    payload = sync.parse_app(sdk.register_payload())
    for fn in payload.functions:
        m = sync.map_function(payload, fn)
        row = FunctionRow(m.function_id, m.triggers, m.options, m.version, datetime.now(UTC))
        app._functions[m.function_id] = remote.function_def(row, settings or calls.Settings())
    return TestEnv(app)


def only_run(env: TestEnv, fid: str) -> Any:
    (run,) = env.runs(fid)
    return run


def test_step_run_then_complete(sdk: FakeSdk) -> None:
    @sdk.function("welcome")
    def welcome(step: Tools, event: dict[str, Any]) -> Any:
        a = step.run("a", lambda: event["data"]["n"] + 1)
        b = step.run("b", lambda: a * 10)
        return {"b": b}

    with served(sdk) as env:
        env.send("shop-welcome/go", {"n": 1})
        env.run_until_idle()
        run = only_run(env, "shop-welcome")
    assert run.status == "completed" and run.output == {"b": 20}
    assert [(s.id, s.kind, s.output) for s in run.steps] == [
        (hashed("a"), "run", 2),
        (hashed("b"), "run", 20),
    ]
    assert sdk.executed == {"a": 1, "b": 1}
    last = sdk.calls[-1]["body"]
    assert last["steps"] == {hashed("a"): {"data": 2}, hashed("b"): {"data": 20}}
    assert last["ctx"]["stack"]["stack"] == [hashed("a"), hashed("b")]
    assert last["event"]["name"] == "shop-welcome/go" and isinstance(last["event"]["ts"], int)
    assert last["version"] == -1 and last["use_api"] is False
    assert sdk.calls[-1]["headers"]["x-inngest-server-kind"] == "dev"


def test_the_sdk_receives_the_user_and_v_an_event_was_sent_with(sdk: FakeSdk) -> None:
    @sdk.function("welcome")
    def welcome(step: Tools, event: dict[str, Any]) -> Any:
        return step.run("a", lambda: event["data"]["n"])

    with served(sdk) as env:
        sql(
            env.db,
            "INSERT INTO orchestrator.events (id, name, data, extra) VALUES "
            "('e-1', 'shop-welcome/go', '{\"n\": 1}', "
            '\'{"user": {"external_id": "u1"}, "v": "2024-01-01.1"}\'), '
            "('e-2', 'shop-welcome/go', '{\"n\": 2}', NULL)",
        )
        env.run_until_idle()
        assert {r.status for r in env.runs("shop-welcome")} == {"completed"}
    sent = {c["body"]["event"]["id"]: c["body"]["event"] for c in sdk.calls}
    assert sent["e-1"]["user"] == {"external_id": "u1"} and sent["e-1"]["v"] == "2024-01-01.1"
    assert sent["e-2"]["user"] == {} and "v" not in sent["e-2"]
    assert all(c["body"]["events"] == [c["body"]["event"]] for c in sdk.calls)


def test_step_error_is_retried_then_ok(sdk: FakeSdk) -> None:
    tries = {"n": 0}

    def flaky() -> str:
        tries["n"] += 1
        if tries["n"] == 1:
            raise RuntimeError("the API was down")
        return "ok"

    @sdk.function("flaky")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        return step.run("call", flaky)

    with served(sdk) as env:
        env.send("shop-flaky/go")
        env.run_until_idle()
        (step,) = only_run(env, "shop-flaky").steps
        assert (step.status, step.attempts) == ("retrying", 1)
        assert step.error["code"] == "RuntimeError" and "down" in step.error["message"]
        env.advance(5)
        env.run_until_idle()
        run = only_run(env, "shop-flaky")
    assert run.status == "completed" and run.output == "ok"
    assert (run.steps[0].status, run.steps[0].attempts) == ("completed", 2)
    assert sdk.calls[-2]["body"]["ctx"]["attempt"] == 1  # the retry's call says it is one


def test_step_error_out_of_retries_is_thrown_into_the_function(sdk: FakeSdk) -> None:
    @sdk.function("doomed", retries=0)
    def program(step: Tools, event: dict[str, Any]) -> Any:
        try:
            step.run("call", lambda: 1 / 0)
        except Exception as exc:
            return {"caught": str(exc)}
        return None

    with served(sdk) as env:
        env.send("shop-doomed/go")
        env.run_until_idle()
        run = only_run(env, "shop-doomed")
    assert run.status == "completed" and run.output == {"caught": "division by zero"}
    assert sdk.calls[-1]["body"]["steps"][hashed("call")] == {
        "error": {"name": "ZeroDivisionError", "message": "division by zero"}
    }


def test_sleep_suspends_and_resumes_without_rerunning_steps(sdk: FakeSdk) -> None:
    @sdk.function("nap")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        step.run("before", lambda: 1)
        step.sleep("nap", "1h")
        return step.run("after", lambda: 2)

    with served(sdk) as env:
        env.send("shop-nap/go")
        env.run_until_idle()
        assert only_run(env, "shop-nap").status == "sleeping"
        env.advance(3599)
        env.run_until_idle()
        assert only_run(env, "shop-nap").status == "sleeping"
        env.advance(2)
        env.run_until_idle()
        run = only_run(env, "shop-nap")
    assert run.status == "completed" and run.output == 2
    assert [s.kind for s in run.steps] == ["run", "sleep", "run"]
    assert sdk.executed == {"before": 1, "after": 1}


def test_wait_for_event_with_if_is_resolved_by_a_matching_event_only(sdk: FakeSdk) -> None:
    @sdk.function("pay")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        paid = step.wait("paid", "shop/paid", "1h", if_="async.data.order == event.data.order")
        return None if paid is None else paid["data"]

    with served(sdk) as env:
        env.send("shop-pay/go", {"order": 7})
        env.run_until_idle()
        assert only_run(env, "shop-pay").status == "waiting"
        env.send("shop/paid", {"order": 8})
        env.run_until_idle()
        assert only_run(env, "shop-pay").status == "waiting"
        env.send("shop/paid", {"order": 7, "amount": 3})
        env.run_until_idle()
        run = only_run(env, "shop-pay")
    assert run.status == "completed" and run.output == {"order": 7, "amount": 3}
    op = sdk.calls[0]["body"]
    assert op["steps"] == {}
    memo = sdk.calls[-1]["body"]["steps"][hashed("paid")]["data"]
    assert memo["name"] == "shop/paid" and isinstance(memo["ts"], int)


def test_wait_for_event_times_out_to_null(sdk: FakeSdk) -> None:
    @sdk.function("timeout")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        return {"got": step.wait("w", "shop/never", "10m")}

    with served(sdk) as env:
        env.send("shop-timeout/go")
        env.run_until_idle()
        env.advance(601)
        env.run_until_idle()
        run = only_run(env, "shop-timeout")
    assert run.status == "completed" and run.output == {"got": None}


def test_invoke_runs_another_function_and_returns_its_output(sdk: FakeSdk) -> None:
    @sdk.function("parent")
    def parent(step: Tools, event: dict[str, Any]) -> Any:
        return {"child said": step.invoke("ask", "shop-child", {"x": 20})}

    @sdk.function("child")
    def child(step: Tools, event: dict[str, Any]) -> Any:
        assert event["name"] == "inngest/function.invoked"
        return step.run("double", lambda: event["data"]["x"] * 2)

    with served(sdk) as env:
        env.send("shop-parent/go")
        env.run_until_idle()
        run = only_run(env, "shop-parent")
        (kid,) = env.runs("shop-child")
    assert run.status == "completed" and run.output == {"child said": 40}
    assert kid.parent_run_id == run.id and kid.output == 40


def test_planned_steps_run_in_parallel_and_are_memoized(sdk: FakeSdk) -> None:
    both = threading.Barrier(2, timeout=10)  # each planned call waits for the other

    def left() -> str:
        both.wait()
        return "L"

    def right() -> str:
        both.wait()
        return "R"

    @sdk.function("fan")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        return step.parallel(("left", left), ("right", right))

    with served(sdk) as env:
        env.send("shop-fan/go")
        env.run_until_idle()
        run = only_run(env, "shop-fan")
    assert run.status == "completed" and run.output == ["L", "R"]
    assert sdk.executed == {"left": 1, "right": 1}
    assert {c["step"] for c in sdk.calls} == {"step", hashed("left"), hashed("right")}
    last = sdk.calls[-1]["body"]
    assert last["steps"] == {hashed("left"): {"data": "L"}, hashed("right"): {"data": "R"}}
    assert last["ctx"]["disable_immediate_execution"] is True


def test_4xx_fails_the_run_without_retry(sdk: FakeSdk) -> None:
    @sdk.function("refuses")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        raise NonRetriable("bad input")

    with served(sdk) as env:
        env.send("shop-refuses/go")
        env.run_until_idle()
        env.advance(3600)
        env.run_until_idle()
        run = only_run(env, "shop-refuses")
    assert run.status == "failed" and run.retries == 0
    assert run.error["code"] == "NonRetriableError" and "bad input" in run.error["message"]
    assert len(sdk.calls) == 1


def test_5xx_is_retried_by_the_functions_policy(sdk: FakeSdk) -> None:
    calls = {"n": 0}

    @sdk.function("wobbly")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] < 3:
            raise RuntimeError("database hiccup")
        return "fine"

    with served(sdk) as env:
        env.send("shop-wobbly/go")
        for _ in range(3):
            env.run_until_idle()
            env.advance(60)
        run = only_run(env, "shop-wobbly")
    assert run.status == "completed" and run.output == "fine" and run.retries == 2


def test_retry_after_is_honoured(sdk: FakeSdk) -> None:
    calls = {"n": 0}

    @sdk.function("later")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RetryLater(120)
        return "now"

    with served(sdk) as env:
        env.send("shop-later/go")
        env.run_until_idle()
        env.advance(115)
        env.run_until_idle()
        assert only_run(env, "shop-later").status == "queued" and calls["n"] == 1
        env.advance(10)
        env.run_until_idle()
        run = only_run(env, "shop-later")
    assert run.status == "completed" and calls["n"] == 2


def test_signed_calls_and_a_bad_answer_signature_is_refused(sdk: FakeSdk) -> None:
    @sdk.function("signed")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        return step.run("s", lambda: "secret")

    sdk.signing_key = KEY
    sdk.response_key = "signkey-test-" + "66" * 32  # the answers are signed with another key
    settings = calls.Settings(signing_keys=(KEY,), dev=False)
    with served(sdk, settings) as env:
        env.send("shop-signed/go")
        env.run_until_idle()
        run = only_run(env, "shop-signed")
        assert run.status == "queued" and run.steps == ()  # refused: nothing recorded
        assert run.retries == 1  # and retried by the function's policy
        assert run.error["type"] == "SignatureError"  # the retry's reason, kept meanwhile
        sdk.response_key = None  # now answered with the right key
        env.advance(60)
        env.run_until_idle()
        run = only_run(env, "shop-signed")
    assert run.status == "completed" and run.output == "secret"
    assert sdk.calls[0]["headers"]["x-inngest-server-kind"] == "cloud"


def test_a_late_answer_after_the_lease_was_lost_is_not_recorded(sdk: FakeSdk) -> None:
    asked, answer = threading.Event(), threading.Event()

    def hold(call: dict[str, Any]) -> None:
        asked.set()
        answer.wait(20)

    @sdk.function("slow")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        step.run("late", lambda: "too late")
        return "done"

    with served(sdk) as env:
        env.send("shop-slow/go")
        sdk.before_answer = hold
        worker = threading.Thread(target=env.run_until_idle)
        worker.start()
        assert asked.wait(20)
        # meanwhile the lease expired and another daemon claimed the run
        sql(env.db, "UPDATE orchestrator.runs SET lease_token = gen_random_uuid()")
        sdk.before_answer = None
        answer.set()
        worker.join(30)
        assert not worker.is_alive()
        assert sql(env.db, "SELECT count(*) FROM orchestrator.steps")[0][0] == 0
        (status,) = sql(env.db, "SELECT status FROM orchestrator.runs")[0]
    assert status == "running"  # still the other daemon's
    assert sdk.executed == {"late": 1}


def test_an_oversize_answer_is_refused(sdk: FakeSdk) -> None:
    @sdk.function("big")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        return step.run("blob", lambda: "x" * 5000)

    with served(sdk, calls.Settings(max_response_bytes=1000)) as env:
        env.send("shop-big/go")
        env.run_until_idle()
        run = only_run(env, "shop-big")
    assert run.status == "queued" and run.steps == () and run.retries == 1


def test_with_step__sets_the_step_id_and_keeps_the_rest() -> None:
    url = calls.with_step("http://h/api/inngest?fnId=a-b&stepId=step", "abc")
    assert url == "http://h/api/inngest?fnId=a-b&stepId=abc"


def test_a_failed_planned_step_is_retried_alone(sdk: FakeSdk) -> None:
    tries = {"n": 0}

    def shaky() -> str:
        tries["n"] += 1
        if tries["n"] == 1:
            raise RuntimeError("blip")
        return "S"

    @sdk.function("mixed")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        return step.parallel(("steady", lambda: "T"), ("shaky", shaky))

    with served(sdk) as env:
        env.send("shop-mixed/go")
        env.run_until_idle()
        assert only_run(env, "shop-mixed").status == "queued"
        env.advance(5)
        env.run_until_idle()
        run = only_run(env, "shop-mixed")
    assert run.status == "completed" and run.output == ["T", "S"]
    assert sdk.executed == {"steady": 1, "shaky": 2}  # the steady one never ran again


def test_an_app_that_ignores_the_memo_fails_the_run_instead_of_looping(sdk: FakeSdk) -> None:
    @sdk.function("amnesiac")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        step.memo.clear()  # forgets every result it is sent
        return step.run("again", lambda: 1)

    with served(sdk) as env:
        env.send("shop-amnesiac/go")
        env.run_until_idle()
        run = only_run(env, "shop-amnesiac")
    assert run.status == "failed" and "reported step" in run.error["message"]
    assert len(sdk.calls) == 2


def test_an_on_failure_handler_receives_the_failed_run_as_inngest_sends_it(sdk: FakeSdk) -> None:
    @sdk.function("pay", retries=0)
    def pay(step: Tools, event: dict[str, Any]) -> Any:
        raise NonRetriable("card declined")

    expression = "event.data.function_id == 'shop-pay'"

    @sdk.function(
        "pay-failure", triggers=[{"event": "inngest/function.failed", "expression": expression}]
    )
    def on_failure(step: Tools, event: dict[str, Any]) -> Any:
        return {"seen": event["name"], "error": event["data"]["error"]}

    with served(sdk) as env:
        env.send("shop-pay/go")
        env.run_until_idle()
        handler = only_run(env, "shop-pay-failure")
    assert handler.status == "completed"
    assert handler.output == {
        "seen": "inngest/function.failed",
        "error": {"name": "NonRetriableError", "message": "card declined (HTTP 400)"},
    }


def test_an_unsupported_op_fails_the_run_at_once_with_a_clear_message(sdk: FakeSdk) -> None:
    @sdk.function("fetcher")
    def program(step: Tools, event: dict[str, Any]) -> Any:
        raise Report([{"id": hashed("ai"), "op": "AIGateway", "opts": {}}])

    with served(sdk) as env:
        env.send("shop-fetcher/go")
        env.run_until_idle()
        run = only_run(env, "shop-fetcher")
    assert run.status == "failed" and run.retries == 0
    assert "'AIGateway'" in run.error["message"] and "not supported" in run.error["message"]


def test_a_planned_step_failing_for_good_leaves_the_others_memoized(sdk: FakeSdk) -> None:
    def boom() -> str:
        raise ValueError("no stock")

    @sdk.function("split", retries=0)
    def program(step: Tools, event: dict[str, Any]) -> Any:
        try:
            step.parallel(("fine", lambda: "F"), ("broken", boom))
        except Exception as exc:
            return {"fine": step.memo[hashed("fine")]["data"], "failed": str(exc)}
        return None

    with served(sdk) as env:
        env.send("shop-split/go")
        env.run_until_idle()
        run = only_run(env, "shop-split")
    assert run.status == "completed"
    assert run.output == {"fine": "F", "failed": "no stock"}
    assert sdk.executed == {"fine": 1, "broken": 1}
