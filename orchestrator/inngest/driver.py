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

The HTTP call itself is calls.py, the protocol's shapes wire.py, and the function's
definition (a `FunctionDef` whose body is a `Driver`) is built from its row in remote.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from orchestrator.context import Context
from orchestrator.db import events
from orchestrator.db.steps import StepRow
from orchestrator.engine.execution import Execution
from orchestrator.errors import SdkResponseError, StepError
from orchestrator.inngest import timestr
from orchestrator.inngest.calls import (
    Reply,
    SdkError,
    SdkRetryAfter,
    Settings,
    call,
    instant,
    no_retry,
    retry_after,
    with_step,
)
from orchestrator.inngest.wire import (
    event_json,
    inngest_event,
    op_id,
    ops_of,
    opts_of,
    sdk_error,
    seconds_of,
    unsupported,
)

PLANNED = "planned"  # the step id of a group of steps the SDK planned together
_SETTLED = ("completed", "failed")


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
        self.events: list[dict[str, Any]] = []  # the run's events, as the SDK receives them

    async def drive(self) -> Any:
        await self.load_events()
        await self.replay()
        while True:
            await self.execution.boundary()  # the step before is committed, under the lease
            reply = await self.call("step")
            if reply.status == 200:
                return reply.body
            ops = ops_of(reply.body)
            if len(ops) == 1 and ops[0].get("op") != "StepPlanned":
                await self.apply(ops[0], reply.headers)
            else:
                await self.group(ops)

    async def load_events(self) -> None:
        """The run's events in Inngest's shape, with the `user` and `v` they were sent with
        (one read, once per execution)."""
        mine = [event_json(e) for e in self.ctx.events]
        ids = [str(e["id"]) for e in mine if e.get("id")]

        def read(conn: Any) -> dict[str, dict[str, Any]]:
            return events.extras(conn, ids)

        extras = await self.execution.io(self.execution.store.db.run, read) if ids else {}
        self.events = [inngest_event(e, extras.get(str(e.get("id")))) for e in mine]

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
                value = None if found is None else inngest_event(event_json(found))
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
            raise SdkResponseError(
                f"the app reported step {hashed} again, though its result was sent with the "
                "call; is the function deterministic, and does the SDK read the request's steps?",
                non_retriable=True,
            )
        return hashed

    async def apply(self, op: dict[str, Any], headers: httpx.Headers) -> None:
        kind, hashed = op.get("op"), self._new(op_id(op))
        step = self.step
        try:
            if kind == "StepRun":
                value = await _awaited(step.run(hashed, _value(op.get("data"))))
            elif kind in ("StepError", "StepFailed"):
                final = kind == "StepFailed" or no_retry(headers)
                error = SdkError(op.get("error"), non_retriable=final)
                value = await _awaited(step.run(hashed, _raise(error, retry_after(headers))))
            elif kind == "Sleep":
                await self._sleep(hashed, op)
                value = None
            elif kind == "WaitForEvent":
                value = await self._wait(hashed, op)
            elif kind == "InvokeFunction":
                value = await self._invoke(hashed, op)
            else:
                raise unsupported(op)
        except StepError as exc:
            self.remember(hashed, {"error": sdk_error(exc.error)})
            return
        self.remember(hashed, {"data": value})

    async def _sleep(self, hashed: str, op: dict[str, Any]) -> None:
        opts = opts_of(op, "opts")
        spec = opts.get("duration") or op.get("name")
        try:
            seconds = timestr.seconds(spec, what="the sleep's duration")
        except ValueError:
            until = instant(spec, "the sleep's duration")
            await _awaited(self.step.sleep_until(hashed, until))
            return
        await _awaited(self.step.sleep(hashed, seconds))

    async def _wait(self, hashed: str, op: dict[str, Any]) -> Any:
        opts = opts_of(op, "opts")
        name = str(opts.get("event") or op.get("name"))
        timeout = seconds_of(opts.get("timeout"), "the wait's timeout")
        found = await _awaited(
            self.step.wait_for_event(hashed, event=name, timeout=timeout, if_=opts.get("if"))
        )
        return None if found is None else inngest_event(event_json(found))

    async def _invoke(self, hashed: str, op: dict[str, Any]) -> Any:
        opts = opts_of(op, "opts")
        data = opts_of(opts_of(opts, "payload"), "data")
        timeout = seconds_of(opts.get("timeout"), "the invoke's timeout")
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
                raise unsupported(op, "in a parallel group")
        keys = [self._new(op_id(op)) for op in ops]
        keys = self._recorded_group() or keys
        by_key = {op_id(op): op for op in ops}
        branches = [(k, self._branch(k, by_key.get(k))) for k in keys]
        self.planned_before = True
        try:
            values = await _awaited(self.step.parallel(PLANNED, branches))
        except StepError as exc:  # one failed for good: the others' results are recorded
            await self._remember_group(exc.step_id, keys)
            return
        for key, value in zip(keys, values, strict=True):
            self.remember(key, {"data": value})

    async def _remember_group(self, failed_step: str, keys: list[str]) -> None:
        """After a branch of a group failed for good: each branch's recorded outcome, read
        back (the parallel step raised for the first failure, not with the others' values)."""
        group = failed_step[: failed_step.index("[")] if "[" in failed_step else failed_step
        rows = await self.execution.io(self.execution.store.load, self.ctx.run_id)
        for key in keys:
            row = rows.get(f"{group}[{key}]")
            if row is not None and row.status == "completed":
                self.remember(key, {"data": row.output})
            elif row is not None and row.status == "failed":
                self.remember(key, {"error": sdk_error(row.error or {})})

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
            (ran,) = ops_of(reply.body)[:1] or [{}]
            if ran.get("op") == "StepRun":
                return ran.get("data")
            if ran.get("op") in ("StepError", "StepFailed"):
                final = ran.get("op") == "StepFailed" or no_retry(reply.headers)
                retry_in = retry_after(reply.headers)
                error = SdkError(ran.get("error"), non_retriable=final)
                raise error if retry_in is None else SdkRetryAfter(retry_in, str(error))
            raise unsupported(ran, f"as the answer for planned step {key}")

        return run_planned

    # -- the call -------------------------------------------------------------------------

    def request(self) -> dict[str, Any]:
        attempt = self._attempt()
        return {
            "event": self.events[0] if self.events else {"name": "", "data": {}},
            "events": self.events,
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

    async def call(self, step_id: str) -> Reply:
        url = with_step(self.driver.url, step_id)
        return await call(url, self.request(), self.driver.settings)


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
