"""Flow-control options, their compiled policy, the rate algorithm, the claim's choice of
runs, and cron catch-up: the pure parts, without a database."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchestrator import (
    Batch,
    Concurrency,
    Debounce,
    Idempotency,
    Orchestrator,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
    cron,
    event,
)
from orchestrator.db.buffers import Group
from orchestrator.db.flow import Candidate
from orchestrator.errors import ExpressionError, RegistrationError
from orchestrator.flow import FlowPolicy, key_of
from orchestrator.functions import CATCH_UP_LIMIT
from orchestrator.runtime.flow import _buffer_due, _buffer_takes, _choose, _rate
from orchestrator.runtime.gcra import Rate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _policy(**options: Any) -> FlowPolicy:
    app = Orchestrator(database_url="postgresql://unused/x")
    app.function("f", trigger=event("e"), **options)(lambda ctx: None)
    return FlowPolicy.from_options(app.functions["f"].describe())


def test_options__validated_at_registration() -> None:
    with pytest.raises(RegistrationError, match="Concurrency limit"):
        Concurrency(limit=0)
    with pytest.raises(RegistrationError, match="Throttle period"):
        Throttle(10, 0)
    with pytest.raises(RegistrationError, match="Singleton mode"):
        Singleton(mode="replace")
    with pytest.raises(RegistrationError, match="Timeouts needs"):
        Timeouts()
    with pytest.raises(ExpressionError, match="unknown variable"):
        Concurrency(1, key="evnt.data.user")
    with pytest.raises(RegistrationError, match="one or two"):
        _policy(concurrency=[Concurrency(1), Concurrency(2), Concurrency(3)])
    with pytest.raises(RegistrationError, match="batch_events cannot be combined with"):
        _policy(batch_events=Batch(10, 1), rate_limit=RateLimit(1, 1))
    with pytest.raises(RegistrationError, match="debounce cannot be combined with singleton"):
        _policy(debounce=Debounce(1), singleton=Singleton())
    with pytest.raises(RegistrationError, match="throttle must be Throttle"):
        _policy(throttle=RateLimit(1, 1))


def test_options__recorded_and_read_back() -> None:
    policy = _policy(
        concurrency=[Concurrency(5), Concurrency(1, key="event.data.user")],
        throttle=Throttle(10, timedelta(seconds=2), key="event.data.user", burst=3),
        priority=Priority("event.data.plan == 'pro' ? 100 : 0"),
        idempotency="event.data.order",
        timeouts=Timeouts(start=timedelta(minutes=1)),
    )
    assert policy.claims and not policy.buffers
    assert [limit for limit, _ in policy.concurrency] == [5, 1]
    assert policy.keyed_concurrency == 1
    assert policy.throttle is not None and policy.throttle.period == 2.0
    assert policy.throttle.burst == 3
    assert policy.idempotency is not None and policy.idempotency[1] == 24 * 3600.0
    assert policy.timeouts == (60.0, None)
    keys = policy.run_keys({"data": {"user": 7, "plan": "pro"}})
    assert (keys.priority, keys.concurrency_keys, keys.throttle_key) == (100, ["", "7"], "7")


def test_options__idempotency_period_is_configurable() -> None:
    policy = _policy(idempotency=Idempotency("event.data.order", period=timedelta(hours=1)))
    assert policy.idempotency is not None and policy.idempotency[1] == 3600.0
    assert not policy.claims  # idempotency acts when runs are made, not when claimed


def test_run_keys__missing_fields_and_odd_values() -> None:
    policy = _policy(
        concurrency=Concurrency(1, key="event.data.user"), priority=Priority("event.data.p")
    )
    keys = policy.run_keys({"data": {}})
    assert keys.concurrency_keys == [""]  # a key that cannot be evaluated is the empty key
    assert keys.priority == 0
    assert policy.run_keys({"data": {"p": "high"}}).priority == 0  # not an integer
    assert policy.run_keys({"data": {"p": 10**12}}).priority == 1_000_000  # clamped


def test_key_of__text_json_and_hash() -> None:
    policy = _policy(concurrency=Concurrency(1, key="event.data.k"))
    expression = policy.concurrency[0][1]
    assert key_of(expression, {"event": {"data": {"k": "abc"}}}) == "abc"
    assert key_of(expression, {"event": {"data": {"k": [1, 2]}}}) == "[1, 2]"
    long = key_of(expression, {"event": {"data": {"k": "x" * 1000}}})
    assert long is not None and long.startswith("sha256:") and len(long) < 100
    assert key_of(expression, {"event": {"data": {}}}) is None


def test_gcra__throttle_spaces_starts_evenly() -> None:
    rate = Rate(limit=10, period=1.0)
    tat, starts, now = T0, [], T0
    while len(starts) < 30:
        if rate.allows(tat, now):
            tat = rate.passed(tat, now)
            starts.append(now)
        now += timedelta(milliseconds=10)
    gaps = {round((b - a).total_seconds(), 3) for a, b in itertools.pairwise(starts)}
    assert gaps == {0.1}


def test_gcra__rate_limit_allows_limit_per_window() -> None:
    rate = Rate(limit=5, period=60.0, burst=5)
    tat = T0
    allowed = 0
    for _ in range(20):
        if rate.allows(tat, T0):
            tat = rate.passed(tat, T0)
            allowed += 1
    assert allowed == 5
    assert not rate.allows(tat, T0 + timedelta(seconds=11))
    assert rate.allows(tat, T0 + timedelta(seconds=12))  # one slot back every 12 s
    assert rate.next_at(tat) == T0 + timedelta(seconds=12)


def _cand(i: int, keys: list[str] | None = None, throttle: str | None = None) -> Candidate:
    return Candidate(f"r{i}", keys, throttle, True)


def test_choose__respects_every_concurrency_constraint() -> None:
    policy = _policy(concurrency=[Concurrency(3), Concurrency(1, key="event.data.k")])
    cands = [_cand(1, ["", "a"]), _cand(2, ["", "a"]), _cand(3, ["", "b"]), _cand(4, ["", "c"])]
    chosen, _ = _choose(policy, None, [(["", "c"], 1)], cands, {}, T0, room=10)
    assert chosen == ["r1", "r3"]  # a second "a" and a second "c" wait; two of 3 slots left
    chosen, _ = _choose(policy, None, [], cands, {}, T0, room=10)
    assert chosen == ["r1", "r3", "r4"]  # the global limit of 3


def test_choose__runs_recorded_before_a_limit_existed_share_the_empty_key() -> None:
    policy = _policy(concurrency=Concurrency(2, key="event.data.k"))
    chosen, _ = _choose(policy, None, [(None, 2)], [_cand(1, None), _cand(2, ["x"])], {}, T0, 5)
    assert chosen == ["r2"]


def test_choose__throttle_holds_fresh_runs_and_says_when() -> None:
    policy = _policy(throttle=Throttle(2, 1.0))
    rate = Rate(2, 1.0)
    cands = [_cand(1, throttle=""), _cand(2, throttle=""), Candidate("r3", None, "", False)]
    chosen, next_at = _choose(policy, rate, [], cands, {"": T0}, T0, room=10)
    assert chosen == ["r1", "r3"]  # r3 resumes (not a start): the throttle does not apply
    assert next_at == T0 + timedelta(seconds=0.5)


def test_buffers__batch_full_now_and_rest_after_timeout() -> None:
    policy = _policy(batch_events=Batch(100, timedelta(seconds=2)))
    group = Group("", 250, T0, T0)
    assert _buffer_due(policy, group, T0) == T0
    assert _buffer_takes(policy, group, T0) == [100, 100]
    later = T0 + timedelta(seconds=2)
    assert _buffer_takes(policy, Group("", 50, T0, T0), later) == [50]
    assert _buffer_due(policy, Group("", 50, T0, T0), T0) == later


def test_buffers__debounce_waits_for_quiet_capped_by_timeout() -> None:
    policy = _policy(debounce=Debounce(timedelta(seconds=1), timeout=timedelta(seconds=5)))
    group = Group("", 30, T0, T0 + timedelta(seconds=0.5))
    assert _buffer_due(policy, group, T0) == T0 + timedelta(seconds=1.5)
    busy = Group("", 300, T0, T0 + timedelta(seconds=4.9))
    assert _buffer_due(policy, busy, T0) == T0 + timedelta(seconds=5)
    assert _buffer_takes(policy, busy, T0) == [300]


def test_cron__catch_up_policies() -> None:
    first = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
    now = datetime(2026, 1, 1, 10, 7, 30, tzinfo=UTC)
    latest = cron("* * * * *")
    assert latest.ticks_due(first, now) == [datetime(2026, 1, 1, 10, 7, tzinfo=UTC)]
    # "none": the missed ticks are dropped; the latest starts only if it is under 60 s late
    assert cron("* * * * *", catch_up="none").ticks_due(first, now) == latest.ticks_due(first, now)
    assert cron("*/5 * * * *", catch_up="none").ticks_due(first, now) == []
    every = cron("* * * * *", catch_up="all").ticks_due(first, now)
    assert every == [first + timedelta(minutes=m) for m in range(8)]
    week = cron("* * * * *", catch_up="all").ticks_due(first - timedelta(days=7), now)
    assert len(week) == CATCH_UP_LIMIT and week[-1] == every[-1]


def test_cron__overlap_and_catch_up_validated() -> None:
    with pytest.raises(RegistrationError, match="overlap"):
        cron("* * * * *", overlap="queue")
    with pytest.raises(RegistrationError, match="catch_up"):
        cron("* * * * *", catch_up="some")


def test_throttle__a_fast_one_lets_a_claim_take_a_millisecond_of_starts() -> None:
    slow = _rate(_policy(throttle=Throttle(10, 1.0)))
    fast = _rate(_policy(throttle=Throttle(100_000, 1.0)))
    assert slow is not None and slow.burst == 1
    assert fast is not None and fast.burst == 100
