"""CEL expressions: compiled at registration, evaluated safely."""

from __future__ import annotations

from datetime import timedelta

import pytest

from orchestrator import Context, ExpressionError, Orchestrator, cancel_on, event
from orchestrator.expressions import compile_expression
from orchestrator.functions import match_value

pytestmark = pytest.mark.timeout(30)


def test_trigger_if__syntax_error_fails_at_registration_with_expression_and_position() -> None:
    with pytest.raises(ExpressionError) as err:
        event("order/created", if_="event.data.amount > 100 &&")
    message = str(err.value)
    assert "event.data.amount > 100 &&" in message
    assert "1:27" in message  # line:column of the error
    assert "order/created" in message
    assert err.value.code == "invalid_expression"


def test_trigger_if__unknown_variable_is_refused() -> None:
    with pytest.raises(ExpressionError, match=r"unknown variable.*async"):
        event("order/created", if_="async.data.x == 1")


def test_wait_if__syntax_error_fails_when_the_function_is_registered() -> None:
    app = Orchestrator("postgresql://unused/none")

    with pytest.raises(ExpressionError) as err:

        @app.function("waits", trigger=event("a/b"))
        def waits(ctx: Context) -> None:
            ctx.step.wait_for_event(
                "w", event="x/y", if_="async.data.user == event.data.user)", timeout=60
            )

    message = str(err.value)
    assert "async.data.user == event.data.user)" in message
    assert "'waits'" in message
    assert "1:35" in message
    assert "waits" not in app.functions


def test_wait_match__invalid_path_fails_when_the_function_is_registered() -> None:
    app = Orchestrator("postgresql://unused/none")
    with pytest.raises(ExpressionError, match="match path 'order_id'"):

        @app.function("waits", trigger=event("a/b"))
        def waits(ctx: Context) -> None:
            ctx.step.wait_for_event("w", event="x/y", match="order_id", timeout=timedelta(1))


def test_cancel_on__bad_expression_and_path_are_refused() -> None:
    with pytest.raises(ExpressionError, match=r"cancel_on\('order/cancelled'\)"):
        cancel_on("order/cancelled", if_="async.data.x ==")
    with pytest.raises(ExpressionError, match="match path"):
        cancel_on("order/cancelled", match="data..x")
    assert cancel_on("order/cancelled", match="data.order_id", timeout=5).timeout == 5.0


def test_expression__errors_and_non_booleans_do_not_match() -> None:
    expr = compile_expression("event.data.amount > 100", where="test", allowed=("event", "async"))
    assert expr.matches({"event": {"data": {"amount": 150}}})
    assert expr.matches({"event": {"data": {"amount": 150.5}}})
    assert not expr.matches({"event": {"data": {"amount": 50}}})
    assert not expr.matches({"event": {"data": {}}})  # missing field: an error, false
    assert not expr.matches({"event": {"data": {"amount": "lots"}}})  # type error: false
    number = compile_expression("1 + 1", where="test", allowed=("event",))
    assert not number.matches({})  # not a boolean


def test_expression__compares_incoming_with_triggering_event() -> None:
    expr = compile_expression(
        "async.data.user == event.data.user && async.data.amount >= event.data.due",
        where="test",
        allowed=("event", "async"),
    )
    trigger = {"data": {"user": "u", "due": 10}}
    assert expr.matches({"event": trigger, "async": {"data": {"user": "u", "amount": 10}}})
    assert not expr.matches({"event": trigger, "async": {"data": {"user": "v", "amount": 10}}})


def test_match_value__reads_nested_fields_and_missing_is_none() -> None:
    data = {"order": {"id": 7}, "user": "u"}
    assert match_value("data.order.id", data) == 7
    assert match_value("data.user", data) == "u"
    assert match_value("data.missing", data) is None
    assert match_value("data.user.id", data) is None


def test_on_failure__registers_a_handler_triggered_by_failures_of_this_function() -> None:
    app = Orchestrator("postgresql://unused/none")

    def handler(ctx: Context) -> None:
        return None

    @app.function("charge", trigger=event("order/created"), on_failure=handler)
    def charge(ctx: Context) -> None:
        return None

    fdef = app.functions["charge:on-failure"]
    [trigger] = fdef.triggers
    assert trigger.describe() == {
        "type": "event",
        "name": "orchestrator/function.failed",
        "if": "event.data.function_id == 'charge'",
    }
    assert app.functions["charge"].describe()["on_failure"] == "charge:on-failure"
