"""One Inngest function config, option by option, as our triggers and options.

Each mapper reads one key of the config an SDK syncs (`triggers`, `cancel`, `concurrency`,
`throttle`, `rateLimit`, `debounce`, `batchEvents`, `priority`, `idempotency`, `singleton`,
`timeouts`) and builds our object for it, so that our own validation applies. Anything it
cannot honour safely raises `Refused` naming the option (the function is not registered);
what can be left out without harm is appended to `dropped` with the reason.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import Any

from orchestrator.errors import RegistrationError
from orchestrator.flow import (
    Batch,
    Concurrency,
    Debounce,
    Idempotency,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from orchestrator.functions import (
    FAILED_EVENT_NAME,
    CancelOn,
    Trigger,
    cancel_on,
    cron,
    event,
)
from orchestrator.inngest import timestr

# Inngest's own events that the engine records under its own names
_EVENT_NAMES = {"inngest/function.failed": FAILED_EVENT_NAME}


class Refused(Exception):
    """The function cannot be registered: `option` is what made it so."""

    def __init__(self, option: str, reason: str) -> None:
        super().__init__(reason)
        self.option = option
        self.reason = reason


def refusal(fid: str, option: str, reason: str, registered: bool) -> dict[str, Any]:
    return {"function": fid, "option": option, "reason": reason, "registered": registered}


def triggers_of(found: Any) -> list[Trigger]:
    if found is None:
        return []
    if not isinstance(found, list) or len(found) > 10:
        raise Refused("triggers", "triggers must be a list of at most 10 entries")
    triggers: list[Trigger] = []
    for i, t in enumerate(found):
        if not isinstance(t, dict):
            raise Refused("triggers", f"triggers[{i}] must be an object")
        if "cron" in t:
            triggers.append(guarded("triggers", functools.partial(_cron, t["cron"])))
        elif "event" in t:
            expr = t.get("expression")
            if expr is not None and not isinstance(expr, str):
                raise Refused("triggers", f"triggers[{i}].expression must be a string")
            raw = t["event"]
            name = _EVENT_NAMES[raw] if isinstance(raw, str) and raw in _EVENT_NAMES else raw
            triggers.append(guarded("triggers", functools.partial(event, name, expr)))
        else:
            raise Refused("triggers", f"triggers[{i}] has neither event nor cron")
    if sum("cron" in t for t in found) > 1:
        raise Refused("triggers", "at most one cron trigger per function is supported")
    return triggers


def _cron(spec: Any) -> Trigger:
    if not isinstance(spec, str):
        raise ValueError(f"cron must be a string, got {spec!r}")
    tz = None
    m = re.match(r"^(?:CRON_)?TZ=(\S+)\s+(.*)$", spec.strip())
    if m:
        tz, spec = m.group(1), m.group(2)
    return cron(spec.strip(), tz)


_Thunk = Callable[[], Any]


def guarded(name: str, make: _Thunk) -> Any:
    """Build an option; any error in it refuses the function, naming the option."""
    try:
        return make()
    except Refused:
        raise
    except (RegistrationError, ValueError, TypeError, KeyError) as exc:
        raise Refused(name, f"{name}: {exc}") from None


def cancels_of(found: Any, fid: str, dropped: list[dict[str, Any]]) -> list[CancelOn]:
    if found is None:
        return []
    if not isinstance(found, list) or len(found) > 10:
        raise ValueError("cancel must be a list of at most 10 entries")
    out = []
    for c in found:
        if not isinstance(c, dict):
            raise ValueError(f"each cancel entry must be an object, got {c!r}")
        timeout = c.get("timeout")
        seconds = None if timeout is None else timestr.seconds(timeout, what="cancel timeout")
        out.append(
            cancel_on(
                _need(c, "event", "cancel"), match=c.get("match"), if_=c.get("if"), timeout=seconds
            )
        )
    return out


def _period(spec: dict[str, Any], key: str, what: str) -> float:
    return timestr.seconds(spec.get(key), what=f"{what}.{key}")


def _need(spec: dict[str, Any], key: str, what: str) -> Any:
    if spec.get(key) is None:
        raise ValueError(f"{what}.{key} is required")
    return spec[key]


def _obj(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be an object, got {value!r}")
    return value


def _concurrency(value: Any) -> list[Concurrency] | None:
    entries = [{"limit": value}] if isinstance(value, int) else value
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list):
        raise ValueError(f"concurrency must be a number or a list, got {value!r}")
    out = []
    for entry in entries:
        c = _obj(entry, "concurrency entry")
        scope = c.get("scope")
        if scope not in (None, "fn"):
            raise Refused(
                "concurrency",
                f"concurrency scope {scope!r} limits runs across functions, which is not "
                "supported (only per-function limits, scope 'fn'); the function is not "
                "registered, as running it without its limit would be unsafe",
            )
        if c.get("limit") in (0, None):
            continue  # Inngest: 0 means no limit
        out.append(Concurrency(limit=c["limit"], key=c.get("key")))
    return out or None


def _batch(value: Any, fid: str, dropped: list[dict[str, Any]]) -> Batch:
    spec = _obj(value, "batchEvents")
    if spec.get("if") is not None:
        dropped.append(
            refusal(
                fid,
                "batchEvents.if",
                "a batch condition is not supported; every event is batched",
                True,
            )
        )
    return Batch(
        max_size=_need(spec, "maxSize", "batchEvents"),
        timeout=_period(spec, "timeout", "batchEvents"),
        key=spec.get("key"),
    )


def flow_of(fn: dict[str, Any], fid: str, dropped: list[dict[str, Any]]) -> dict[str, Any]:
    raw: dict[str, Any] = {}
    for key, (ours, mapper) in MAPPERS.items():
        if fn.get(key) is None:
            continue
        value = guarded(key, functools.partial(mapper, fn[key], fid, dropped))
        if value is not None:
            raw[ours] = value
    return raw


def _throttle(v: Any, fid: str, dropped: list[dict[str, Any]]) -> Throttle:
    s = _obj(v, "throttle")
    return Throttle(
        limit=_need(s, "limit", "throttle"),
        period=_period(s, "period", "throttle"),
        key=s.get("key"),
        burst=s.get("burst") or 1,
    )


def _rate_limit(v: Any, fid: str, dropped: list[dict[str, Any]]) -> RateLimit:
    s = _obj(v, "rateLimit")
    return RateLimit(
        limit=_need(s, "limit", "rateLimit"),
        period=_period(s, "period", "rateLimit"),
        key=s.get("key"),
    )


def _debounce(v: Any, fid: str, dropped: list[dict[str, Any]]) -> Debounce:
    s = _obj(v, "debounce")
    timeout = None if s.get("timeout") is None else _period(s, "timeout", "debounce")
    return Debounce(period=_period(s, "period", "debounce"), key=s.get("key"), timeout=timeout)


def _priority(v: Any, fid: str, dropped: list[dict[str, Any]]) -> Priority | None:
    run = _obj(v, "priority").get("run")
    return None if run is None else Priority(run=run)


def _idempotency(v: Any, fid: str, dropped: list[dict[str, Any]]) -> Idempotency:
    if not isinstance(v, str):
        raise ValueError(f"idempotency must be an expression string, got {v!r}")
    return Idempotency(v)


def _singleton(v: Any, fid: str, dropped: list[dict[str, Any]]) -> Singleton:
    s = _obj(v, "singleton")
    return Singleton(key=s.get("key"), mode=s.get("mode", "skip"))


def _timeouts(v: Any, fid: str, dropped: list[dict[str, Any]]) -> Timeouts:
    s = _obj(v, "timeouts")
    start = None if s.get("start") is None else _period(s, "start", "timeouts")
    finish = None if s.get("finish") is None else _period(s, "finish", "timeouts")
    return Timeouts(start=start, finish=finish)


MAPPERS: dict[str, tuple[str, Callable[[Any, str, list[dict[str, Any]]], Any]]] = {
    "concurrency": ("concurrency", lambda v, fid, dropped: _concurrency(v)),
    "throttle": ("throttle", _throttle),
    "rateLimit": ("rate_limit", _rate_limit),
    "debounce": ("debounce", _debounce),
    "batchEvents": ("batch_events", _batch),
    "priority": ("priority", _priority),
    "idempotency": ("idempotency", _idempotency),
    "singleton": ("singleton", _singleton),
    "timeouts": ("timeouts", _timeouts),
}
