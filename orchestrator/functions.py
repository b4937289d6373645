"""Function definitions and their triggers.

A function is a Python callable taking a `Context`, registered under a stable id with its
triggers (`event(...)`, `cron(...)`) and options (retries, back-off). The definition is plain
data so that the daemon can record it in `orchestrator.functions` and match events against it.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from orchestrator.errors import ExpressionError, RegistrationError
from orchestrator.expressions import compile_expression
from orchestrator.flow import FlowOptions, FlowPolicy, flow_options

if TYPE_CHECKING:
    from orchestrator.context import Context

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
_PATH_RE = re.compile(r"^data(\.[^.\s]{1,128}){1,16}$")
CRON_EVENT_NAME = "orchestrator/cron"
INVOKED_EVENT_NAME = "orchestrator/function.invoked"
FINISHED_EVENT_NAME = "orchestrator/function.finished"
FAILED_EVENT_NAME = "orchestrator/function.failed"
TRIGGER_VARIABLES = ("event",)
WAIT_VARIABLES = ("event", "async")


def _seconds(value: timedelta | float, what: str) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if seconds < 0:
        raise RegistrationError(f"{what} must be >= 0 seconds, got {seconds}")
    return seconds


def is_async_callable(fn: Any) -> bool:
    """An `async def` function, a partial of one, or an object whose `__call__` is one."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 -- the method itself is inspected
    return not inspect.isfunction(fn) and inspect.iscoroutinefunction(call)


@dataclass(frozen=True)
class EventTrigger:
    name: str
    if_: str | None = None

    def describe(self) -> dict[str, Any]:
        return {"type": "event", "name": self.name, "if": self.if_}


CRON_OVERLAP = ("skip", "allow", "cancel_previous")
CRON_CATCH_UP = ("latest", "none", "all")
CATCH_UP_LIMIT = 100  # catch_up="all" starts at most this many missed ticks (the latest)
CATCH_UP_GRACE = 60.0  # seconds late after which a tick counts as missed


@dataclass(frozen=True)
class CronTrigger:
    expr: str
    tz: str | None = None
    overlap: str = "allow"
    catch_up: str = "latest"

    def describe(self) -> dict[str, Any]:
        return {
            "type": "cron",
            "expr": self.expr,
            "tz": self.tz,
            "overlap": self.overlap,
            "catch_up": self.catch_up,
        }

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz or "UTC")

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after `moment`, as an aware datetime in UTC."""
        local = moment.astimezone(self.zone())
        nxt: datetime = croniter(self.expr, local).get_next(datetime)
        return nxt.astimezone(ZoneInfo("UTC"))

    def latest_at_or_before(self, moment: datetime) -> datetime:
        """The last tick at or before `moment`."""
        local = moment.astimezone(self.zone())
        itr = croniter(self.expr, local + timedelta(microseconds=1))
        prev: datetime = itr.get_prev(datetime)
        return prev.astimezone(ZoneInfo("UTC"))

    def ticks_due(self, first: datetime, now: datetime) -> list[datetime]:
        """The ticks to start when a schedule due at `first` is looked at `now`, by the
        `catch_up` policy: the latest one; none that is over CATCH_UP_GRACE seconds late;
        or every one since `first`, at most the latest CATCH_UP_LIMIT."""
        latest = self.latest_at_or_before(now)
        if self.catch_up == "latest":
            return [latest]
        if self.catch_up == "none":
            return [latest] if (now - latest).total_seconds() <= CATCH_UP_GRACE else []
        ticks: list[datetime] = []
        itr = croniter(self.expr, now.astimezone(self.zone()) + timedelta(microseconds=1))
        while len(ticks) < CATCH_UP_LIMIT:
            tick = itr.get_prev(datetime).astimezone(ZoneInfo("UTC"))
            if tick < first:
                break
            ticks.append(tick)
        return ticks[::-1]


Trigger = EventTrigger | CronTrigger


def event(name: str, if_: str | None = None) -> EventTrigger:
    """Trigger a function on every event called `name`; with `if_`, only on those for which
    the CEL expression over `event` is true (`"event.data.amount > 100"`)."""
    _check_event_name(name, "event trigger")
    if if_ is not None:
        compile_expression(if_, where=f"event({name!r}, if_=...)", allowed=TRIGGER_VARIABLES)
    return EventTrigger(name, if_)


def _check_event_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not name.strip() or len(name) > 256:
        raise RegistrationError(f"{what} name must be 1-256 characters, got {name!r}")


def check_match(path: Any, where: str) -> str:
    """A `match` path names a field of the event data: `data.order_id`, `data.user.id`."""
    if not isinstance(path, str) or not _PATH_RE.match(path):
        raise ExpressionError(
            f"{where}: match path {path!r} is invalid; name a field of the event data such as "
            "'data.order_id' or 'data.user.id'"
        )
    return path


def match_value(path: str, data: dict[str, Any]) -> Any:
    """The value at `data.x.y` in an event's data (None when absent), as `match` compares it."""
    value: Any = data
    for key in path.split(".")[1:]:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


@dataclass(frozen=True)
class CancelOn:
    """Cancel a run when an event arrives (see `cancel_on`)."""

    event: str
    match: str | None = None
    if_: str | None = None
    timeout: float | None = None

    def describe(self) -> dict[str, Any]:
        return {"event": self.event, "match": self.match, "if": self.if_, "timeout": self.timeout}


def cancel_on(
    event: str,
    *,
    match: str | None = None,
    if_: str | None = None,
    timeout: timedelta | float | None = None,
) -> CancelOn:
    """Cancel the run when `event` arrives whose `match` field equals the triggering event's
    (and for which `if_`, over `event` and `async`, is true), within `timeout` of its start."""
    _check_event_name(event, "cancel_on event")
    where = f"cancel_on({event!r})"
    if match is not None:
        check_match(match, where)
    if if_ is not None:
        compile_expression(if_, where=where, allowed=WAIT_VARIABLES)
    seconds = None if timeout is None else _seconds(timeout, f"{where} timeout")
    return CancelOn(event, match, if_, seconds)


def cron(
    expr: str, tz: str | None = None, *, overlap: str = "allow", catch_up: str = "latest"
) -> CronTrigger:
    """Trigger a function on a cron schedule, judged by the database clock, in time zone `tz`.

    - `overlap`: when a tick comes while a run of the function is still active: `"allow"`
      starts another, `"skip"` starts none, `"cancel_previous"` cancels the active runs
      first.
    - `catch_up`: ticks missed while no daemon was running: `"latest"` starts one run for
      the latest, `"none"` starts none (a tick over 60 s late counts as missed), `"all"`
      starts one per missed tick, at most the latest 100.
    """
    if overlap not in CRON_OVERLAP:
        raise RegistrationError(f"cron overlap must be one of {CRON_OVERLAP}, got {overlap!r}")
    if catch_up not in CRON_CATCH_UP:
        raise RegistrationError(f"cron catch_up must be one of {CRON_CATCH_UP}, got {catch_up!r}")
    if not isinstance(expr, str) or not croniter.is_valid(expr):
        raise RegistrationError(
            f"cron expression {expr!r} is not valid; use five fields such as '0 3 * * *', "
            "or six with seconds as the last field ('* * * * * */10' = every 10 seconds)"
        )
    if tz is not None:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            raise RegistrationError(
                f"cron time zone {tz!r} is unknown; use an IANA name such as 'Europe/Paris'"
            ) from None
    return CronTrigger(expr, tz, overlap, catch_up)


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off between step retries: base * 2**(attempt-1), capped at `max`."""

    base: float = 1.0
    max: float = 600.0

    def __post_init__(self) -> None:
        if not 0 <= self.base <= self.max:
            raise RegistrationError(
                f"backoff needs 0 <= base <= max seconds, got base={self.base} max={self.max}"
            )

    @classmethod
    def of(cls, base: timedelta | float = 1.0, max: timedelta | float = 600.0) -> Backoff:
        return cls(_seconds(base, "backoff base"), _seconds(max, "backoff max"))


@dataclass(frozen=True)
class FunctionDef:
    id: str
    fn: Callable[[Context], Any]
    triggers: tuple[Trigger, ...]
    retries: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    cancel_on: tuple[CancelOn, ...] = ()
    on_failure_id: str | None = None  # the id of its on_failure handler's function
    flow: FlowOptions = field(default_factory=FlowOptions)

    @property
    def is_async(self) -> bool:
        """An `async def` function: its runs execute on a worker's event loop."""
        return is_async_callable(self.fn)

    @property
    def event_names(self) -> list[str]:
        return [t.name for t in self.triggers if isinstance(t, EventTrigger)]

    @property
    def cron_trigger(self) -> CronTrigger | None:
        crons = [t for t in self.triggers if isinstance(t, CronTrigger)]
        return crons[0] if crons else None

    def describe(self) -> dict[str, Any]:
        return {
            "triggers": [t.describe() for t in self.triggers],
            "retries": self.retries,
            "backoff": {"base": self.backoff.base, "max": self.backoff.max},
            "cancel_on": [c.describe() for c in self.cancel_on],
            "on_failure": self.on_failure_id,
            **self.flow.describe(),
        }

    def policy(self) -> FlowPolicy:
        """Its flow control, compiled (as the daemon reads it back from `functions.options`)."""
        return FlowPolicy.from_options(self.describe())

    def source_hash(self) -> str:
        try:
            source = inspect.getsource(self.fn)
        except (OSError, TypeError):
            source = getattr(self.fn, "__qualname__", repr(self.fn))
        return hashlib.sha256(f"{self.id}\n{source}".encode()).hexdigest()[:16]


def make_function(
    function_id: str,
    fn: Callable[[Context], Any],
    trigger: Trigger | Sequence[Trigger] | None,
    retries: int,
    backoff: Backoff | None,
    *,
    cancel: Sequence[CancelOn] = (),
    on_failure_id: str | None = None,
    flow: dict[str, Any] | None = None,
) -> FunctionDef:
    if not isinstance(function_id, str) or not _ID_RE.match(function_id):
        raise RegistrationError(
            f"function id {function_id!r} is invalid; use 1-128 letters, digits and . _ : / -"
        )
    triggers: tuple[Trigger, ...]
    if trigger is None:
        triggers = ()
    elif isinstance(trigger, EventTrigger | CronTrigger):
        triggers = (trigger,)
    else:
        triggers = tuple(trigger)
    for t in triggers:
        if not isinstance(t, EventTrigger | CronTrigger):
            raise RegistrationError(
                f"function {function_id!r}: trigger {t!r} is not event(...) or cron(...)"
            )
    if sum(isinstance(t, CronTrigger) for t in triggers) > 1:
        raise RegistrationError(f"function {function_id!r}: at most one cron trigger")
    if not isinstance(retries, int) or isinstance(retries, bool) or not 0 <= retries <= 100:
        raise RegistrationError(f"function {function_id!r}: retries must be 0-100, got {retries!r}")
    if len(inspect.signature(fn).parameters) != 1:
        raise RegistrationError(
            f"function {function_id!r}: {fn.__qualname__} must take exactly one argument (ctx)"
        )
    tree = _source_tree(fn)  # None: no source to read (a lambda in a REPL, a built-in)
    check_callable(function_id, fn, tree)
    for c in cancel:
        if not isinstance(c, CancelOn):
            raise RegistrationError(
                f"function {function_id!r}: cancel_on entry {c!r} is not cancel_on(...)"
            )
    check_step_expressions(function_id, tree)
    options = flow_options(function_id, flow or {}, has_cancel_on=bool(cancel))
    return FunctionDef(
        function_id,
        fn,
        triggers,
        retries,
        backoff or Backoff(),
        tuple(cancel),
        on_failure_id,
        options,
    )


def check_callable(function_id: str, fn: Callable[..., Any], tree: ast.AST | None) -> None:
    """Refuse what cannot run as a function: a generator, and a plain `def` that awaits
    (`tree`: its source, parsed)."""
    where = f"function {function_id!r}: {getattr(fn, '__qualname__', fn)!r}"
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        kind = "an async generator" if inspect.isasyncgenfunction(fn) else "a generator"
        raise RegistrationError(
            f"{where} is {kind} (it yields); a function returns its result once. Make each "
            "piece of work a step (`ctx.step.run`) and return the results, as a list if need be"
        )
    if is_async_callable(fn) or tree is None:
        return
    if (line := _awaits_a_step(tree)) is not None:
        raise RegistrationError(
            f"{where} is a plain def but awaits a step at line {line}; declare it "
            "`async def` so that its steps can be awaited"
        )
    if (body := _async_body(fn, tree)) is not None:
        raise RegistrationError(
            f"{where} is a plain def, and its step {body[0]!r} has the async def body "
            f"{body[1]!r}, which it cannot await. Make the function `async def` and write "
            "`await ctx.step.run(...)`, or give the step a plain function as its body"
        )


def _awaits_a_step(tree: ast.AST) -> int | None:
    """The line of an `await ...step.<kind>(...)` (in a nested async helper of a plain
    function: it would run only if something awaited it), if any."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Await) and _step_call(node.value) is not None:
            return int(node.lineno)
    return None


def _async_body(fn: Callable[..., Any], tree: ast.AST) -> tuple[str, str] | None:
    """(step id, body name) of a `ctx.step.run("id", body)` in `fn` whose body is a name that
    `fn` sees as an async def function, if any (other bodies are checked when called)."""
    names = dict(getattr(fn, "__globals__", {}))
    code, cells = getattr(fn, "__code__", None), getattr(fn, "__closure__", None) or ()
    for name, cell in zip(code.co_freevars if code else (), cells, strict=False):
        try:
            names[name] = cell.cell_contents
        except ValueError:  # a name the closure binds later: nothing to look at yet
            continue
    for node in ast.walk(tree):
        call = _step_call(node, "run")
        if call is None or len(call.args) < 2:
            continue
        step, body = call.args[0], call.args[1]
        if isinstance(body, ast.Name) and is_async_callable(names.get(body.id)):
            label = step.value if isinstance(step, ast.Constant) else "?"
            return str(label), body.id
    return None


def _step_call(node: ast.AST, kind: str | None = None) -> ast.Call | None:
    """`node` if it is a call `<anything>.step.<kind>(...)` (any kind if None)."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return None
    method = node.func
    if not (isinstance(method.value, ast.Attribute) and method.value.attr == "step"):
        return None
    return node if kind is None or method.attr == kind else None


def _source_tree(fn: Callable[..., Any]) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return None


def check_step_expressions(function_id: str, tree: ast.AST | None) -> None:
    """Compile the literal `if_` and `match` arguments of the `wait_for_event` calls in a
    function's parsed source, so that a typo fails at registration rather than when a run
    reaches the wait (without source, they are checked when called)."""
    for node in ast.walk(tree) if tree is not None else ():
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr != "wait_for_event":
            continue
        where = f"function {function_id!r}, wait_for_event at line {node.lineno}"
        for kw in node.keywords:
            if not (isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str)):
                continue
            if kw.arg == "if_":
                compile_expression(kw.value.value, where=where, allowed=WAIT_VARIABLES)
            elif kw.arg == "match":
                check_match(kw.value.value, where)
