"""Flow control: how many runs of a function execute, start, or are created at all.

Options of `@app.function(...)`; every key is a CEL expression over the triggering `event`:

```python
@app.function(
    "sync-user",
    trigger=event("user/updated"),
    concurrency=[Concurrency(limit=10), Concurrency(limit=1, key="event.data.user_id")],
    throttle=Throttle(limit=100, period=timedelta(minutes=1)),
    priority=Priority(run="event.data.plan == 'pro' ? 100 : 0"),
    idempotency="event.data.request_id",
)
```

Every limit holds across all daemons sharing the database: runs are claimed for a limited
function under that function's lock, and counted at that moment (see runtime/flow.py).
`FlowPolicy` is the compiled form the daemon works with, built from what `describe()` records
in `orchestrator.functions.options`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from orchestrator.errors import RegistrationError
from orchestrator.expressions import Expression, cached, compile_expression

KEY_VARIABLES = ("event",)
MAX_KEY_LENGTH = 256
SINGLETON_MODES = ("skip", "cancel")
DEFAULT_IDEMPOTENCY_PERIOD = 24 * 3600.0
MAX_PRIORITY = 1_000_000


def _seconds(value: timedelta | float | int | None, what: str, *, positive: bool = True) -> float:
    if value is None or isinstance(value, bool):
        raise RegistrationError(f"{what} must be a timedelta or a number of seconds, got {value!r}")
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not math.isfinite(seconds) or seconds < 0 or (positive and seconds == 0):
        raise RegistrationError(f"{what} must be more than 0 seconds, got {value!r}")
    return seconds


def _count(value: Any, what: str, *, low: int = 1, high: int = 1_000_000) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise RegistrationError(
            f"{what} must be a whole number from {low} to {high}, got {value!r}"
        )
    return value


def _key(source: str | None, what: str) -> str | None:
    if source is not None:
        compile_expression(source, where=what, allowed=KEY_VARIABLES)
    return source


def _set(obj: object, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)  # normalising a frozen dataclass in __post_init__


@dataclass(frozen=True)
class Concurrency:
    """At most `limit` runs executing at once (sleeping and waiting runs do not count), per
    value of `key` when given."""

    limit: int
    key: str | None = None

    def __post_init__(self) -> None:
        _count(self.limit, "Concurrency limit")
        _key(self.key, "Concurrency key")


@dataclass(frozen=True)
class Throttle:
    """At most `limit` runs start per `period` (per `key`), spread evenly; `burst` of them may
    start at once. Nothing is dropped: the others wait their turn."""

    limit: int
    period: timedelta | float
    key: str | None = None
    burst: int = 1

    def __post_init__(self) -> None:
        _count(self.limit, "Throttle limit")
        _set(self, "period", _seconds(self.period, "Throttle period"))
        _key(self.key, "Throttle key")
        _count(self.burst, "Throttle burst")


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` runs are created per `period` (per `key`); the others are recorded as
    `skipped` with the reason and never run."""

    limit: int
    period: timedelta | float
    key: str | None = None

    def __post_init__(self) -> None:
        _count(self.limit, "RateLimit limit")
        _set(self, "period", _seconds(self.period, "RateLimit period"))
        _key(self.key, "RateLimit key")


@dataclass(frozen=True)
class Debounce:
    """A burst of events (per `key`) makes one run, with the last event, once `period` has
    passed without a new one; `timeout` caps the wait from the burst's first event."""

    period: timedelta | float
    key: str | None = None
    timeout: timedelta | float | None = None

    def __post_init__(self) -> None:
        _set(self, "period", _seconds(self.period, "Debounce period"))
        _key(self.key, "Debounce key")
        if self.timeout is not None:
            _set(self, "timeout", _seconds(self.timeout, "Debounce timeout"))


@dataclass(frozen=True)
class Priority:
    """`run`: a CEL expression giving an integer; among a function's due runs, higher runs
    first, equal priorities in order (clamped to ±1,000,000; anything else counts as 0)."""

    run: str

    def __post_init__(self) -> None:
        _key(self.run, "Priority run")


@dataclass(frozen=True)
class Batch:
    """One run receives up to `max_size` events (per `key`) in `ctx.events`; it starts when
    the batch is full, or `timeout` after its first event."""

    max_size: int
    timeout: timedelta | float
    key: str | None = None

    def __post_init__(self) -> None:
        _count(self.max_size, "Batch max_size", high=10_000)
        _set(self, "timeout", _seconds(self.timeout, "Batch timeout"))
        _key(self.key, "Batch key")


@dataclass(frozen=True)
class Idempotency:
    """A second event whose `key` was seen within `period` (default 24 hours) creates no run."""

    key: str
    period: timedelta | float = DEFAULT_IDEMPOTENCY_PERIOD

    def __post_init__(self) -> None:
        _key(self.key, "idempotency key")
        _set(self, "period", _seconds(self.period, "idempotency period"))


@dataclass(frozen=True)
class Singleton:
    """At most one active run (per `key`). `mode="skip"`: a new run is recorded as `skipped`;
    `mode="cancel"`: the new run replaces the old one, which is cancelled (an executing one
    too: its execution stops)."""

    key: str | None = None
    mode: str = "skip"

    def __post_init__(self) -> None:
        _key(self.key, "Singleton key")
        if self.mode not in SINGLETON_MODES:
            raise RegistrationError(f"Singleton mode must be 'skip' or 'cancel', got {self.mode!r}")


@dataclass(frozen=True)
class Timeouts:
    """`start`: a run not started within this time of its creation is cancelled. `finish`: a
    run not finished within this time of its start is cancelled (an executing one too: its
    execution stops)."""

    start: timedelta | float | None = None
    finish: timedelta | float | None = None

    def __post_init__(self) -> None:
        if self.start is None and self.finish is None:
            raise RegistrationError("Timeouts needs start=, finish= or both")
        if self.start is not None:
            _set(self, "start", _seconds(self.start, "Timeouts start"))
        if self.finish is not None:
            _set(self, "finish", _seconds(self.finish, "Timeouts finish"))


@dataclass(frozen=True)
class FlowOptions:
    """Every flow-control option of one function, as registered."""

    concurrency: tuple[Concurrency, ...] = ()
    throttle: Throttle | None = None
    rate_limit: RateLimit | None = None
    debounce: Debounce | None = None
    priority: Priority | None = None
    batch_events: Batch | None = None
    idempotency: Idempotency | None = None
    singleton: Singleton | None = None
    timeouts: Timeouts | None = None

    def describe(self) -> dict[str, Any]:
        """The options that are set, as `orchestrator.functions.options` records them."""
        described: dict[str, Any] = {}
        if self.concurrency:
            described["concurrency"] = [dict(c.__dict__) for c in self.concurrency]
        for name in OPTION_KINDS:
            value = getattr(self, name)
            if value is not None:
                described[name] = dict(value.__dict__)
        return described


OPTION_KINDS: dict[str, type] = {
    "throttle": Throttle,
    "rate_limit": RateLimit,
    "debounce": Debounce,
    "priority": Priority,
    "batch_events": Batch,
    "idempotency": Idempotency,
    "singleton": Singleton,
    "timeouts": Timeouts,
}


def flow_options(function_id: str, raw: dict[str, Any], *, has_cancel_on: bool) -> FlowOptions:
    """Check the flow-control arguments of `@app.function` and how they combine."""
    where = f"function {function_id!r}"
    concurrency = raw.get("concurrency")
    if concurrency is None:
        concurrency = ()
    elif isinstance(concurrency, Concurrency):
        concurrency = (concurrency,)
    concurrency = tuple(concurrency)
    if len(concurrency) > 2 or not all(isinstance(c, Concurrency) for c in concurrency):
        raise RegistrationError(f"{where}: concurrency takes one or two Concurrency(...) entries")
    if isinstance(raw.get("idempotency"), str):
        raw = {**raw, "idempotency": Idempotency(raw["idempotency"])}
    for name, kind in OPTION_KINDS.items():
        value = raw.get(name)
        if value is not None and not isinstance(value, kind):
            raise RegistrationError(f"{where}: {name} must be {kind.__name__}(...), got {value!r}")
    options = FlowOptions(concurrency, **{name: raw.get(name) for name in OPTION_KINDS})
    buffered = "batch_events" if options.batch_events else "debounce" if options.debounce else None
    if buffered is not None:
        clashes = [
            name
            for name in ("batch_events", "debounce", "rate_limit", "singleton")
            if name != buffered and raw.get(name) is not None
        ]
        if options.batch_events and options.idempotency:
            clashes.append("idempotency")
        if clashes:
            raise RegistrationError(
                f"{where}: {buffered} cannot be combined with {', '.join(clashes)} (a "
                f"{buffered.replace('_events', '')} run is made from several events)"
            )
    if options.batch_events and has_cancel_on:
        raise RegistrationError(f"{where}: batch_events cannot be combined with cancel_on")
    return options


# -- the compiled form ---------------------------------------------------------------------


@dataclass(frozen=True)
class RunKeys:
    """What a new run of a flow-controlled function records for its claim."""

    priority: int = 0
    concurrency_keys: list[str] | None = None
    throttle_key: str | None = None
    flow_key: str | None = None  # the key the function's due runs take turns by

    def fields(self) -> dict[str, Any]:
        """As keyword arguments of a new run (`db.runs.NewRun`)."""
        return {
            "priority": self.priority,
            "concurrency_keys": self.concurrency_keys,
            "throttle_key": self.throttle_key,
            "flow_key": self.flow_key,
        }


@dataclass(frozen=True)
class Limit:
    limit: int
    period: float
    key: Expression | None
    burst: int = 1


@dataclass(frozen=True)
class FlowPolicy:
    """A function's flow control, compiled, as the daemon applies it."""

    concurrency: tuple[tuple[int, Expression | None], ...] = ()
    throttle: Limit | None = None
    rate_limit: Limit | None = None
    debounce: tuple[float, Expression | None, float | None] | None = None
    batch: tuple[int, float, Expression | None] | None = None
    priority: Expression | None = None
    idempotency: tuple[Expression, float] | None = None
    singleton: tuple[Expression | None, str] | None = None
    timeouts: tuple[float | None, float | None] | None = None

    @property
    def claims(self) -> bool:
        """Whether its runs are claimed one function at a time under the function's lock."""
        return bool(self.concurrency or self.throttle or self.priority or self.buffers)

    @property
    def buffers(self) -> bool:
        """Whether its events wait in `buffered_events` before a run is made (debounce, batch)."""
        return self.debounce is not None or self.batch is not None

    @property
    def keyed_concurrency(self) -> int | None:
        """The index (0-based) of the first concurrency constraint with a key, if any."""
        keyed = [i for i, (_, key) in enumerate(self.concurrency) if key is not None]
        return keyed[0] if keyed else None

    def run_keys(self, event: dict[str, Any]) -> RunKeys:
        variables = {"event": event}
        priority = 0
        if self.priority is not None:
            value = self.priority.value(variables)
            if isinstance(value, int) and not isinstance(value, bool):
                priority = max(-MAX_PRIORITY, min(MAX_PRIORITY, value))
        keys = [key_of(key, variables) or "" for _, key in self.concurrency] or None
        throttle = None
        if self.throttle is not None:
            throttle = key_of(self.throttle.key, variables) or ""
        fair = None
        if self.keyed_concurrency is not None and keys is not None:
            fair = keys[self.keyed_concurrency]
        elif self.throttle is not None and self.throttle.key is not None:
            fair = throttle
        return RunKeys(priority, keys, throttle, fair)

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> FlowPolicy:
        """Read what `FlowOptions.describe()` recorded; parts that no longer compile (a row
        edited by hand) are left out."""
        o = options
        concurrency = tuple(
            (int(c["limit"]), _expr(c.get("key")))
            for c in o.get("concurrency") or ()
            if c.get("key") is None or _expr(c.get("key")) is not None
        )
        t, r, d, b = (
            o.get("throttle"),
            o.get("rate_limit"),
            o.get("debounce"),
            o.get("batch_events"),
        )
        idem, single, timeouts = o.get("idempotency"), o.get("singleton"), o.get("timeouts")
        idem_key = _expr(idem.get("key")) if idem else None
        return cls(
            concurrency=concurrency,
            throttle=_limit(t, burst=int(t.get("burst") or 1)) if t else None,
            rate_limit=_limit(r, burst=int(r["limit"])) if r else None,
            debounce=(float(d["period"]), _expr(d.get("key")), d.get("timeout")) if d else None,
            batch=(int(b["max_size"]), float(b["timeout"]), _expr(b.get("key"))) if b else None,
            priority=_expr((o.get("priority") or {}).get("run")),
            idempotency=(idem_key, float(idem["period"])) if idem and idem_key else None,
            singleton=(_expr(single.get("key")), str(single.get("mode"))) if single else None,
            timeouts=(timeouts.get("start"), timeouts.get("finish")) if timeouts else None,
        )


def _expr(source: Any) -> Expression | None:
    return cached(source, KEY_VARIABLES) if isinstance(source, str) else None


def _limit(spec: dict[str, Any], *, burst: int) -> Limit:
    return Limit(int(spec["limit"]), float(spec["period"]), _expr(spec.get("key")), burst)


def key_of(expression: Expression | None, variables: dict[str, Any]) -> str | None:
    """The key an expression gives for an event, as text: a string as it is, anything else
    as JSON; None when there is no expression or it fails (a missing field). A long key is
    replaced by its hash."""
    if expression is None:
        return None
    value = expression.value(variables)
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if len(text) > MAX_KEY_LENGTH:
        text = "sha256:" + hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()
    return text
