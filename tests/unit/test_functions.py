from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from orchestrator import Backoff, Orchestrator, cron, event
from orchestrator.engine.retry import backoff_delay, retry_delay
from orchestrator.errors import NonRetriableError, RegistrationError, RetryAfterError


def test_cron__next_and_latest_in_a_time_zone() -> None:
    trigger = cron("0 3 * * *", tz="Europe/Paris")
    moment = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert trigger.next_after(moment) == datetime(2026, 7, 2, 1, 0, tzinfo=UTC)
    assert trigger.latest_at_or_before(moment) == datetime(2026, 7, 1, 1, 0, tzinfo=UTC)


def test_cron__latest_includes_an_exact_tick() -> None:
    trigger = cron("*/5 * * * *")
    tick = datetime(2026, 1, 1, 10, 5, tzinfo=UTC)
    assert trigger.latest_at_or_before(tick) == tick
    assert trigger.next_after(tick) == datetime(2026, 1, 1, 10, 10, tzinfo=UTC)


def test_cron__seconds_field() -> None:
    trigger = cron("* * * * * */2")
    moment = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    assert trigger.next_after(moment) == datetime(2026, 1, 1, 0, 0, 2, tzinfo=UTC)


@pytest.mark.parametrize(("expr", "tz"), [("61 * * * *", None), ("0 3 * * *", "Mars/Base")])
def test_cron__invalid_expression_or_zone(expr: str, tz: str | None) -> None:
    with pytest.raises(RegistrationError):
        cron(expr, tz=tz)


def test_register__validates_ids_triggers_and_signature() -> None:
    app = Orchestrator(database_url="postgresql://unused/x")
    with pytest.raises(RegistrationError, match="invalid"):
        app.function("bad id!")(lambda ctx: None)
    with pytest.raises(RegistrationError, match="exactly one argument"):
        app.function("two-args")(lambda a, b: None)
    with pytest.raises(RegistrationError, match="not event"):
        app.function("t", trigger="user/created")(lambda ctx: None)  # type: ignore[arg-type]
    app.function("ok", trigger=[event("a"), cron("0 * * * *")])(lambda ctx: None)
    with pytest.raises(RegistrationError, match="twice"):
        app.function("ok")(lambda ctx: None)
    assert list(app.functions) == ["ok"]


def test_backoff__exponential_capped_with_equal_jitter() -> None:
    backoff = Backoff.of(base=1, max=10)
    rng = random.Random(7)
    for attempt, nominal in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (9, 10)]:
        delay = backoff_delay(backoff, attempt, rng)
        assert nominal / 2 <= delay <= nominal


def test_retry_delay__policy() -> None:
    backoff = Backoff()
    assert retry_delay(NonRetriableError("x"), backoff, 1, 3) is None
    assert retry_delay(ValueError("x"), backoff, 4, 3) is None
    assert retry_delay(RetryAfterError(7.5), backoff, 1, 3) == 7.5
    last = retry_delay(ValueError("x"), backoff, 3, 3)  # the last retry: 4 s, half jittered
    assert last is not None and 2.0 <= last <= 4.0
