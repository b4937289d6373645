"""The driver: how a run of an SDK-served function executes here.

An SDK-served function is an `async def` function of ours whose body calls the app over
HTTP, in Inngest's protocol, and maps each answer onto OUR step API, so that durability,
replay, fencing, waits and flow control are the engine's own:

1. the run's recorded steps are replayed through the same `ctx.step.*` kinds, in recorded
   order (positions line up), and give the memo the SDK expects (hashed step id → `{"data":
   ...}` or `{"error": ...}`); replay stops at the first step still in progress (a retry, a
   sleep or wait being resumed), which the SDK reports again;
2. the call request (event, events, memo, ctx) is POSTed to the function's URL, signed with
   the signing key (none in dev mode); the response's signature is checked when a key is set;
3. the answer: 200 = the function returned (its body is the output); 206 = ops: `StepRun` is
   recorded as `ctx.step.run(id)`, `StepError` fails that step's attempt (our step retries
   apply), `StepFailed` fails the step for good (the SDK then sees the error), `Sleep`,
   `WaitForEvent` (with `if`) and `InvokeFunction` are our sleep, wait and invoke; several
   ops are a parallel group (`ctx.step.parallel`), each planned step one call with its
   `stepId`. A 4xx answer or `X-Inngest-No-Retry: true` fails the run without retry, a 5xx
   is retried by the function's policy, `Retry-After` is honoured.

Before each call the previous step's record is committed under the run's lease, and every
record goes through the fenced checkpoint: an answer that arrives after the lease was lost
is refused by the database, never recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import httpx

from orchestrator.context import Context, Event
from orchestrator.db.functions import FunctionRow
from orchestrator.db.steps import StepRow
from orchestrator.engine.execution import Execution
from orchestrator.errors import RetryAfterError, SdkResponseError, StepError
from orchestrator.flow import (
    Batch,
    Concurrency,
    Debounce,
    FlowOptions,
    Idempotency,
    Priority,
    RateLimit,
    Singleton,
    Throttle,
    Timeouts,
)
from orchestrator.functions import (
    CRON_EVENT_NAME,
    FAILED_EVENT_NAME,
    INVOKED_EVENT_NAME,
    Backoff,
    CancelOn,
    CronTrigger,
    EventTrigger,
    FunctionDef,
    Trigger,
)
from orchestrator.inngest import signing, timestr

DEFAULT_TIMEOUT = 30.0
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
PLANNED = "planned"  # the step id of a group of steps the SDK planned together
_EVENT_NAMES = {
    INVOKED_EVENT_NAME: "inngest/function.invoked",
    CRON_EVENT_NAME: "inngest/scheduled.timer",
    FAILED_EVENT_NAME: "inngest/function.failed",  # what an onFailure handler is sent
}
_SETTLED = ("completed", "failed")


@dataclass(frozen=True)
class Settings:
    """How calls to SDK apps are made (from the config: `inngest_call_timeout`,
    `inngest_max_response_bytes`, `inngest_signing_key` and its fallback, `inngest_dev`)."""

    timeout: float = DEFAULT_TIMEOUT
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES
    signing_keys: tuple[str, ...] = ()  # the first signs; each may verify an answer
    dev: bool = True
    transport: httpx.AsyncBaseTransport | None = field(default=None, compare=False)

    @classmethod
    def from_config(cls, cfg: Any) -> Settings:
        keys = (
            getattr(cfg, "inngest_signing_key", ""),
            getattr(cfg, "inngest_signing_key_fallback", ""),
        )
        return cls(
            timeout=float(getattr(cfg, "inngest_call_timeout", DEFAULT_TIMEOUT)),
            max_response_bytes=int(
                getattr(cfg, "inngest_max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)
            ),
            signing_keys=tuple(k for k in keys if k),
            dev=bool(getattr(cfg, "inngest_dev", False)),
        )

    @property
    def signs(self) -> bool:
        return bool(self.signing_keys) and not self.dev


class SdkError(Exception):
    """An error the SDK app reported (a step's or the function's), or its answer to a call
    that failed. `code` is the SDK's error name; `non_retriable` says no retry may help."""

    def __init__(
        self, error: Any, *, non_retriable: bool = False, status: int | None = None
    ) -> None:
        error = error if isinstance(error, dict) else {"message": str(error)}
        self.code = str(error.get("name") or "Error")[:200]
        self.error_message = str(error.get("message") or "")[:4000]
        self.non_retriable = non_retriable
        self.status = status
        said = f" (HTTP {status})" if status is not None else ""
        super().__init__(f"{self.error_message}{said}")  # the SDK's name is `code`


class SdkRetryAfter(RetryAfterError):
    """The SDK asked for a retry after `delay` seconds (`Retry-After`)."""


# -- the function definition of a synced function -----------------------------------------


def function_def(row: FunctionRow, settings: Settings) -> FunctionDef:
    """The definition the engine runs an SDK-served function by, from its row."""
    o = row.options
    backoff = o.get("backoff") or {}
    return FunctionDef(
        row.id,
        Driver(row.id, str(o["inngest"]["url"]), settings),
        tuple(_trigger(t) for t in row.triggers),
        int(o.get("retries", 3)),
        Backoff(float(backoff.get("base", 1.0)), float(backoff.get("max", 600.0))),
        tuple(
            CancelOn(c["event"], c.get("match"), c.get("if"), c.get("timeout"))
            for c in o.get("cancel_on") or ()
        ),
        None,
        flow_of(o),
    )


def _trigger(t: dict[str, Any]) -> Trigger:
    if t.get("type") == "cron":
        return CronTrigger(
            t["expr"], t.get("tz"), t.get("overlap", "allow"), t.get("catch_up", "latest")
        )
    return EventTrigger(t["name"], t.get("if"))


_FLOW_KINDS: dict[str, type] = {
    "throttle": Throttle,
    "rate_limit": RateLimit,
    "debounce": Debounce,
    "priority": Priority,
    "batch_events": Batch,
    "idempotency": Idempotency,
    "singleton": Singleton,
    "timeouts": Timeouts,
}


def flow_of(options: dict[str, Any]) -> FlowOptions:
    """The flow options a row's `options` recorded (FlowOptions.describe, read back)."""
    built = {k: kind(**options[k]) for k, kind in _FLOW_KINDS.items() if options.get(k)}
    concurrency = tuple(Concurrency(**c) for c in options.get("concurrency") or ())
    return FlowOptions(concurrency, **built)


def is_remote(options: dict[str, Any]) -> bool:
    return isinstance(options.get("inngest"), dict)


# -- the driver ---------------------------------------------------------------------------


class Driver:
    """The body of an SDK-served function: `await driver(ctx)` drives the run."""

    def __init__(self, function_id: str, url: str, settings: Settings) -> None:
        self.function_id = function_id
        self.url = url
        self.settings = settings
        self.__qualname__ = f"inngest:{function_id}"

    async def __call__(self, ctx: Context) -> Any:
        return await _Run(self, ctx).drive()


@dataclass
class _Reply:
    status: int
    headers: httpx.Headers
    body: Any


class _Run:
    """One execution of one run by the driver."""

    def __init__(self, driver: Driver, ctx: Context) -> None:
        self.driver = driver
        self.ctx = ctx
        self.execution: Execution = ctx.step._execution
        self.step: Any = ctx.step  # an async function's: each method returns an awaitable
        self.memo: dict[str, dict[str, Any]] = {}
        self.stack: list[str] = []
        self.planned_before = False  # a group was planned: the SDK must plan every step now

    async def drive(self) -> Any:
        await self.replay()
        while True:
            await self.execution.boundary()  # the step before is committed, under the lease
            reply = await self.call("step")
            if reply.status == 200:
                return reply.body
            ops = _ops(reply.body)
            if len(ops) == 1 and ops[0].get("op") != "StepPlanned":
                await self.apply(ops[0], reply.headers)
            else:
                await self.group(ops)

    # -- replay ---------------------------------------------------------------------------

    async def replay(self) -> None:
        """Replay the settled steps in recorded order, building the memo."""
        rows = sorted(self.execution.memo.values(), key=lambda r: r.position)
        i = 0
        while i < len(rows):
            row = rows[i]
            if "[" in row.step_id:
                group = _group_at(rows, i)
                if any(r.status not in _SETTLED for r in group):
                    return
                await self._replay_group(group)
                i += len(group)
                continue
            if row.status not in _SETTLED:
                return
            await self._replay_one(row)
            i += 1

    async def _replay_one(self, row: StepRow) -> None:
        step, sid = self.step, row.step_id
        try:
            if row.kind == "run":
                value = await _awaited(step.run(sid, _never))
            elif row.kind == "sleep":
                value = await _awaited(step.sleep(sid, 0))
            elif row.kind == "wait":
                found = await _awaited(step.wait_for_event(sid, event="replay", timeout=None))
                value = None if found is None else inngest_event(_event_json(found))
            elif row.kind == "invoke":
                value = await _awaited(step.invoke(sid, function="replay"))
            else:
                raise SdkResponseError(f"step '{sid}' is a {row.kind} step, unknown to the driver")
        except StepError as exc:
            self.remember(sid, {"error": sdk_error(exc.error)})
            return
        self.remember(sid, {"data": value})

    async def _replay_group(self, group: list[StepRow]) -> None:
        keys = [r.step_id[r.step_id.index("[") + 1 : -1] for r in group]
        self.planned_before = True
        with contextlib.suppress(StepError):  # a branch failed for good: its record says so
            await _awaited(self.step.parallel(PLANNED, [(k, _never) for k in keys]))
        for key, row in zip(keys, group, strict=True):
            if row.status == "completed":
                self.remember(key, {"data": row.output})
            else:
                self.remember(key, {"error": sdk_error(row.error or {})})

    def remember(self, hashed: str, memo: dict[str, Any]) -> None:
        self.memo[hashed] = memo
        self.stack.append(hashed)

    # -- ops ------------------------------------------------------------------------------

    def _new(self, hashed: str) -> str:
        """A step the app reports must be new: one in the memo sent back again means the
        app ignores the memo, and would be called for ever."""
        if hashed in self.memo:
            error = SdkResponseError(
                f"the app reported step {hashed} again, though its result was sent with the "
                "call; is the function deterministic, and does the SDK read the request's steps?"
            )
            error.non_retriable = True  # type: ignore[attr-defined]  # read by the retry policy
            raise error
        return hashed

    async def apply(self, op: dict[str, Any], headers: httpx.Headers) -> None:
        kind, hashed = op.get("op"), self._new(_op_id(op))
        step = self.step
        try:
            if kind == "StepRun":
                value = await _awaited(step.run(hashed, _value(op.get("data"))))
            elif kind in ("StepError", "StepFailed"):
                final = kind == "StepFailed" or _no_retry(headers)
                error = SdkError(op.get("error"), non_retriable=final)
                value = await _awaited(step.run(hashed, _raise(error, _retry_after(headers))))
            elif kind == "Sleep":
                await self._sleep(hashed, op)
                value = None
            elif kind == "WaitForEvent":
                value = await self._wait(hashed, op)
            elif kind == "InvokeFunction":
                value = await self._invoke(hashed, op)
            else:
                raise _unsupported(op)
        except StepError as exc:
            self.remember(hashed, {"error": sdk_error(exc.error)})
            return
        self.remember(hashed, {"data": value})

    async def _sleep(self, hashed: str, op: dict[str, Any]) -> None:
        opts = _opts(op, "opts")
        spec = opts.get("duration") or op.get("name")
        try:
            seconds = timestr.seconds(spec, what="the sleep's duration")
        except ValueError:
            until = _instant(spec, "the sleep's duration")
            await _awaited(self.step.sleep_until(hashed, until))
            return
        await _awaited(self.step.sleep(hashed, seconds))

    async def _wait(self, hashed: str, op: dict[str, Any]) -> Any:
        opts = _opts(op, "opts")
        name = str(opts.get("event") or op.get("name"))
        timeout = _seconds(opts.get("timeout"), "the wait's timeout")
        found = await _awaited(
            self.step.wait_for_event(hashed, event=name, timeout=timeout, if_=opts.get("if"))
        )
        return None if found is None else inngest_event(_event_json(found))

    async def _invoke(self, hashed: str, op: dict[str, Any]) -> Any:
        opts = _opts(op, "opts")
        data = _opts(_opts(opts, "payload"), "data")
        timeout = _seconds(opts.get("timeout"), "the invoke's timeout")
        return await _awaited(
            self.step.invoke(
                hashed, function=str(opts.get("function_id")), data=data, timeout=timeout
            )
        )

    async def group(self, ops: list[dict[str, Any]]) -> None:
        """Several steps at once (or one the SDK only planned): one call per planned step,
        concurrently, each recorded as a branch of a parallel group."""
        for op in ops:
            if op.get("op") not in ("StepPlanned", "StepRun"):
                raise _unsupported(op, "in a parallel group")
        keys = [self._new(_op_id(op)) for op in ops]
        keys = self._recorded_group() or keys
        by_key = {_op_id(op): op for op in ops}
        branches = [(k, self._branch(k, by_key.get(k))) for k in keys]
        self.planned_before = True
        try:
            values = await _awaited(self.step.parallel(PLANNED, branches))
        except StepError as exc:
            failed = exc.step_id[exc.step_id.index("[") + 1 : -1] if "[" in exc.step_id else ""
            self.remember(failed, {"error": sdk_error(exc.error)})
            return
        for key, value in zip(keys, values, strict=True):
            self.remember(key, {"data": value})

    def _recorded_group(self) -> list[str] | None:
        """The branches of the group recorded at the next position, if one is (a retry of
        some of its branches: the group is the same, whatever the SDK planned again)."""
        position = self.execution._position
        rows = sorted(self.execution.memo.values(), key=lambda r: r.position)
        at = [i for i, r in enumerate(rows) if r.position == position and "[" in r.step_id]
        if not at:
            return None
        return [r.step_id[r.step_id.index("[") + 1 : -1] for r in _group_at(rows, at[0])]

    def _branch(self, key: str, op: dict[str, Any] | None) -> Callable[[], Awaitable[Any]]:
        async def run_planned() -> Any:
            if op is not None and op.get("op") == "StepRun":
                return op.get("data")
            reply = await self.call(key)
            if reply.status == 200:
                raise SdkResponseError(
                    f"the app finished the function when asked to run step {key}"
                )
            (ran,) = _ops(reply.body)[:1] or [{}]
            if ran.get("op") == "StepRun":
                return ran.get("data")
            if ran.get("op") in ("StepError", "StepFailed"):
                final = ran.get("op") == "StepFailed" or _no_retry(reply.headers)
                retry_in = _retry_after(reply.headers)
                error = SdkError(ran.get("error"), non_retriable=final)
                raise error if retry_in is None else SdkRetryAfter(retry_in, str(error))
            raise _unsupported(ran, f"as the answer for planned step {key}")

        return run_planned

    # -- the call -------------------------------------------------------------------------

    def request(self) -> dict[str, Any]:
        events = [inngest_event(_event_json(e)) for e in self.ctx.events]
        attempt = self._attempt()
        return {
            "event": events[0] if events else {"name": "", "data": {}},
            "events": events,
            "steps": self.memo,
            "ctx": {
                "run_id": self.ctx.run_id,
                "attempt": attempt,
                "max_attempts": self.execution.fdef.retries + 1,
                "disable_immediate_execution": self.planned_before,
                "use_api": False,
                "stack": {"stack": list(self.stack), "current": max(0, len(self.stack) - 1)},
            },
            "use_api": False,
            "version": -1,
        }

    def _attempt(self) -> int:
        """0-based: how many attempts the step now due has failed (its recorded retry)."""
        ahead = [r for r in self.execution.memo.values() if r.position >= self.execution._position]
        retrying = [r.attempt for r in ahead if r.status == "retrying"]
        return max(retrying, default=0)

    async def call(self, step_id: str) -> _Reply:
        s = self.driver.settings
        body = signing.canonical_json(self.request())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "orchestrator",
            "X-Inngest-Server-Kind": "dev" if s.dev else "cloud",
        }
        if s.signs:
            headers["X-Inngest-Signature"] = signing.sign(body, s.signing_keys[0])
        url = with_step(self.driver.url, step_id)
        try:
            async with asyncio.timeout(s.timeout):
                status, answer_headers, raw = await _post(url, body, headers, s)
        except (TimeoutError, httpx.TimeoutException):
            raise SdkError(
                {"name": "SdkTimeout", "message": f"no answer from {url} within {s.timeout:g}s"}
            ) from None
        except httpx.HTTPError as exc:
            raise SdkError({"name": "SdkUnreachable", "message": f"{url}: {exc}"}) from None
        return _judge(status, answer_headers, raw, s)


# One client (its connection pool) per event loop and settings: a worker's runs share its
# loop's connections to the apps; a loop that is gone takes its clients with it.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Settings, httpx.AsyncClient]]
_CLIENTS = weakref.WeakKeyDictionary()


def _client(s: Settings) -> httpx.AsyncClient:
    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    client = clients.get(s)
    if client is None:
        client = clients[s] = httpx.AsyncClient(timeout=s.timeout, transport=s.transport)
    return client


async def _post(
    url: str, body: bytes, headers: dict[str, str], s: Settings
) -> tuple[int, httpx.Headers, bytes]:
    client = _client(s)
    async with client.stream("POST", url, content=body, headers=headers) as response:
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > s.max_response_bytes:
                raise SdkResponseError(
                    f"the app's answer from {url} is over {s.max_response_bytes} bytes "
                    "(inngest_max_response_bytes); return less from the step, or raise the limit"
                )
            chunks.append(chunk)
        return response.status_code, response.headers, b"".join(chunks)


def _judge(status: int, headers: httpx.Headers, raw: bytes, s: Settings) -> _Reply:
    """The answer, checked: its signature, its status, its body."""
    if status == 401:
        raise SdkError(
            {
                "name": "Unauthorized",
                "message": "the app refused our signature; set its "
                "INNGEST_SIGNING_KEY to this server's inngest_signing_key",
            },
            non_retriable=True,
            status=status,
        )
    if s.signs:
        signing.verify(raw, headers.get("x-inngest-signature"), s.signing_keys)
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        body = {"name": "InvalidJSON", "message": raw[:500].decode("utf-8", "replace")}
        if status in (200, 206):
            raise SdkResponseError(
                f"the app answered {status} with a body that is not JSON"
            ) from None
    if status in (200, 206):
        return _Reply(status, headers, body)
    retry_in = _retry_after(headers)
    if retry_in is not None and not _no_retry(headers):
        raise SdkRetryAfter(retry_in, str(SdkError(body, status=status)))
    if _no_retry(headers) or 400 <= status < 500:
        raise SdkError(body, non_retriable=True, status=status)
    raise SdkError(body, status=status)


def _ops(body: Any) -> list[dict[str, Any]]:
    ops = [body] if isinstance(body, dict) else body
    if not isinstance(ops, list) or not ops or not all(isinstance(o, dict) for o in ops):
        raise SdkResponseError("the app answered 206 without a list of ops")
    return ops


def _op_id(op: dict[str, Any]) -> str:
    hashed = op.get("id")
    if not isinstance(hashed, str) or not 1 <= len(hashed) <= 80 or not hashed.isalnum():
        raise SdkResponseError(f"an op's id must be a hashed step id, got {hashed!r}")
    return hashed


def _unsupported(op: dict[str, Any], where: str = "") -> SdkResponseError:
    error = SdkResponseError(
        f"the app asked for op {str(op.get('op'))[:60]!r}{' ' + where if where else ''}, "
        "which is not supported (supported: step.run, sleep, waitForEvent, invoke, and "
        "parallel step.run)"
    )
    error.non_retriable = True  # type: ignore[attr-defined]  # read by the retry policy
    return error


def _no_retry(headers: httpx.Headers) -> bool:
    return str(headers.get("x-inngest-no-retry", "")).strip().lower() == "true"


def _opts(obj: dict[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def _retry_after(headers: httpx.Headers) -> float | None:
    """Seconds from `Retry-After` (seconds, an RFC 3339 date, or an HTTP date)."""
    value = headers.get("retry-after")
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            moment = _instant(value, "Retry-After")
        except SdkResponseError:
            try:
                moment = parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
        seconds = (moment - datetime.now(UTC)).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def _instant(value: Any, what: str) -> datetime:
    try:
        return timestr.instant(value, what=what)
    except ValueError as exc:
        raise SdkResponseError(str(exc)) from None


def _seconds(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        return timestr.seconds(value, what=what)
    except ValueError as exc:
        raise SdkResponseError(str(exc)) from None


def with_step(url: str, step_id: str) -> str:
    """The function's URL with `stepId` set (`step`: no step in particular)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "stepId"]
    query.append(("stepId", step_id))
    return urlunsplit(parts._replace(query=urlencode(query)))


def _group_at(rows: list[StepRow], i: int) -> list[StepRow]:
    prefix = rows[i].step_id[: rows[i].step_id.index("[") + 1]
    group = []
    for row in rows[i:]:
        if not row.step_id.startswith(prefix):
            break
        group.append(row)
    return group


async def _awaited(value: Any) -> Any:
    return await value


def _never() -> Any:
    raise SdkResponseError("a replayed step ran again; its record was expected")


def _value(data: Any) -> Callable[[], Any]:
    return lambda: data


def _raise(error: SdkError, retry_in: float | None) -> Callable[[], Any]:
    def fail() -> Any:
        if retry_in is not None and not error.non_retriable:
            raise SdkRetryAfter(retry_in, str(error))
        raise error

    return fail


# -- events and errors, as the SDKs see them ----------------------------------------------


def _event_json(event: Event | dict[str, Any]) -> dict[str, Any]:
    if isinstance(event, Event):
        return {"id": event.id, "name": event.name, "data": event.data, "ts": event.ts}
    return event


def inngest_event(event: dict[str, Any]) -> dict[str, Any]:
    """One of our events in Inngest's shape: `ts` in milliseconds, Inngest's names for the
    engine's own events (an invocation, a cron tick)."""
    name = str(event.get("name") or "")
    data = _opts(event, "data")
    if name == FAILED_EVENT_NAME and isinstance(data.get("error"), dict):
        data = data | {"error": sdk_error(data["error"])}  # as an onFailure handler reads it
    return {
        "id": str(
            event.get("id") or hashlib.sha1(json.dumps(event, default=str).encode()).hexdigest()
        ),
        "name": _EVENT_NAMES.get(name, name),
        "data": data,
        "user": {},
        "ts": _ms(event.get("ts")),
    }


def _ms(ts: Any) -> int:
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return int(ts)
    try:
        moment = datetime.fromisoformat(str(ts).replace("Z", "+00:00"))
    except ValueError:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def sdk_error(error: Any) -> dict[str, Any]:
    """A recorded step error as the SDK expects it in the memo: name and message."""
    if not isinstance(error, dict):
        return {"name": "Error", "message": str(error)}
    name = error.get("code") if error.get("type") == "SdkError" else error.get("type")
    return {"name": str(name or "Error"), "message": str(error.get("message") or "")}
