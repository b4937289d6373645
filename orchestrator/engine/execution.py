"""One execution of a run: replay recorded steps, execute new ones, checkpoint each.

A worker runs the function straight through. A step already recorded returns its recorded
result without running; a new step runs, and its result is committed (fenced on the lease)
before the run does anything more with effects (see `checkpoint`), at the latest with its
end. The run suspends only at sleeps, waits and retry back-offs, so a function of N steps
costs O(N) work.

This is what every step kind shares: step identity (ids, positions, the replay check), the
step-body call, the failure record, and the run's clock. Each kind of step lives in its own
module under engine/kinds/, written once for both the sync and the async face (engine/faces.py).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from orchestrator import codec
from orchestrator.db import clock
from orchestrator.db.steps import StepRecord, StepRow
from orchestrator.engine import threads
from orchestrator.engine.cancelled import CancelledRuns
from orchestrator.engine.faces import Face, SyncFace, TimedOut, discard
from orchestrator.engine.failures import error_dict
from orchestrator.engine.observer import NOBODY, StepObserver
from orchestrator.engine.retry import Policy
from orchestrator.engine.store import Lease, RunStore
from orchestrator.engine.tracer import RunSpan, StepSpan
from orchestrator.errors import (
    Abort,
    AsyncUsageError,
    Cancelled,
    ConcurrentStepError,
    ControlSignal,
    InvalidStateError,
    NestedStepError,
    NonDeterminismError,
    PayloadError,
    StateTooLargeError,
    StepTimeoutError,
    Suspend,
)
from orchestrator.flow import FlowPolicy
from orchestrator.functions import FunctionDef, is_async_callable

# The step whose body this code runs inside (per thread and per asyncio task), to name it
# when a step is called there.
_BODY: ContextVar[str | None] = ContextVar("orchestrator_step_body", default=None)
T = TypeVar("T")


class StandIns(Protocol):
    """What a test puts in place of step bodies (orchestrator.testing): called before each
    body runs, with the run, the function, the step's unique id (`id`, `id#1`, …) and the
    body; returns what to call instead (or the body itself)."""

    def body(
        self, run_id: str, function_id: str, step_id: str, fn: Callable[..., Any]
    ) -> Callable[..., Any]: ...


@dataclass(frozen=True)
class Limits:
    max_step_output_bytes: int = 4 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024
    max_state_bytes: int = 64 * 1024  # the run's ctx.set_state object, as JSON


class Execution:
    """The mutable state of one execution, driven by the `ctx.step` calls of user code."""

    def __init__(
        self,
        *,
        lease: Lease,
        fdef: FunctionDef,
        store: RunStore,
        memo: dict[str, StepRow],
        claimed_at: datetime,
        created_at: datetime,
        trigger: dict[str, Any],
        limits: Limits,
        draining: threading.Event,
        log: Any,
        on_body: Callable[[str | None], None] | None = None,
        cancelled: CancelledRuns | None = None,
        policies: Mapping[str, FlowPolicy] | None = None,
        observer: StepObserver = NOBODY,
        face: Face | None = None,
        stand_ins: StandIns | None = None,
        trace: RunSpan | None = None,
    ) -> None:
        self.trace = trace  # this run attempt's span, when tracing is on (engine/tracer.py)
        self.face: Face = face or SyncFace()  # how its steps do their I/O (engine/faces.py)
        self.stand_ins = stand_ins  # what replaces step bodies under test (orchestrator.testing)
        self.lease = lease
        self.observer = observer  # counts step bodies and retries for the metrics
        self.policies = policies or {}  # flow control of the functions it may invoke
        # runs whose cancellation the daemon passed on
        self.cancelled = cancelled if cancelled is not None else CancelledRuns()
        self.on_body = on_body or _ignore
        self.fdef = fdef
        self.store = store
        self.memo = memo
        self.claimed_at = claimed_at
        self.claimed_mono = time.monotonic()
        self.trigger = trigger  # the run's first event, as functions receive it
        # Waits see the events received since the previous step began (the run's creation
        # for a first step): this is that moment, by the database clock.
        self.since = created_at
        self.created_at = created_at
        self.limits = limits
        self.draining = draining
        self.log = log
        self.fatal: NonDeterminismError | NestedStepError | AsyncUsageError | None = (
            None  # fails it
        )
        self._bodies: dict[object, str] = {}  # the step bodies running now
        self._abandoned: set[str] = set()  # steps whose bodies outlived their timeout
        # A completed step's record not committed yet (see `checkpoint`): it is committed
        # before anything else the run does with effects, or with the run's end.
        self.pending: StepRecord | None = None
        self._flushing: Future[None] | None = None  # the deferred record's commit, in flight
        self.suspended_until: datetime | None = None
        # The keys ctx.set_state set in this execution, merged into `runs.state` by the run's
        # next write (see `set_state`); `_state_unwritten`: some changed since the last one.
        self.state: dict[str, Any] = {}
        self._state_unwritten = False
        self._seen: dict[str, int] = {}
        self._position = 0
        self._positions: dict[int, StepRow] | None = None  # the memo by position

    # -- step identity -------------------------------------------------------------------

    def next_id(self, step_id: str, *, kind: str, positions: int = 1) -> tuple[str, int]:
        """The unique id for this call of `step_id` (`id`, `id#1`, …) and its position
        (the first of `positions` consecutive ones, for a parallel group). `kind` is the
        `ctx.step` method called, for the error when it is called inside a step body."""
        self._outside_bodies(step_id, kind)
        if not codec.storable_text(step_id, 200) or "#" in step_id:
            raise ValueError(
                f"step id {step_id!r} is invalid; use a non-empty string of at most 200 "
                "characters without '#' or NUL"
            )
        count = self._seen.get(step_id, 0)
        self._seen[step_id] = count + 1
        unique = step_id if count == 0 else f"{step_id}#{count}"
        position = self._position
        self._position += positions
        return unique, position

    def _outside_bodies(self, step_id: str, kind: str) -> None:
        """Refuse a step called while a step body runs (from the body, or a thread it
        started): it would run on the first execution and vanish on replay, when the outer
        step is memoized, shifting every later step. In an async function, refuse one called
        from another task meanwhile: which of the two came first would depend on timing."""
        if not self._bodies:
            if (abandoned := _BODY.get()) in self._abandoned:  # from a body left to run on
                raise NestedStepError(
                    f"ctx.step.{kind}('{step_id}') was called inside the body of step "
                    f"'{abandoned}' after that body outlived its timeout; it was refused",
                    step_id=abandoned,
                )
            return
        # the caller's own body; a thread a body started is blamed on some running body
        inside = _BODY.get()
        outer = inside or min(self._bodies.values(), default="?")
        if inside is None and self.face.is_async and _on_a_loop():
            self.fatal = ConcurrentStepError(
                f"ctx.step.{kind}('{step_id}') was called while step '{outer}' was running, "
                "from another task (asyncio.gather or create_task?); the steps of a run "
                "follow one another, or their order would depend on timing and change on "
                "replay. Await them one after another, or run bodies at once with "
                "ctx.step.parallel",
                step_id=outer,
            )
            raise self.fatal
        self.fatal = NestedStepError(
            f"ctx.step.{kind}('{step_id}') was called inside the body of step '{outer}'; "
            "steps cannot be nested, because a step body runs once and is then replayed "
            f"from its recorded result. Call the helper directly inside '{outer}' (it is "
            f"part of that step), or make '{step_id}' a step of its own in the function",
            step_id=outer,
        )
        raise self.fatal

    def replayed(self, row: StepRow) -> None:
        """A recorded step was replayed: the next wait looks back to when it began, as it did
        when the step ran. A row without its start (no body, or written before
        `steps.started_at`) is estimated from its end: later than the start by the time its
        checkpoint took to commit."""
        began = row.started_at or row.updated_at - timedelta(milliseconds=row.duration_ms or 0)
        self.since = max(self.since, began)

    def recorded(self, step_id: str, kind: str, position: int) -> StepRow | None:
        """The recorded row of this step, if any. The code must reach a recorded step as
        the same kind of step at the same position, and must not call a new step where the
        run recorded another: anything else is a non-determinism error naming the step."""
        if self.fatal is not None:
            raise self.fatal
        row = self.memo.get(step_id)
        problem = None
        if row is not None and row.kind != kind:
            problem = (
                f"step '{step_id}' was recorded as a {row.kind} step but the code now calls it "
                f"as a {kind} step"
            )
        elif row is not None and row.position != position:
            problem = (
                f"step '{step_id}' was recorded as step {row.position + 1} of the run but the "
                f"code now reaches it as step {position + 1}"
            )
        elif row is None and self.memo and (other := self._by_position().get(position)):
            problem = (
                f"the code now calls step '{step_id}' as step {position + 1} of the run, where "
                f"the run recorded step '{other.step_id}'"
            )
        if problem is not None:
            self.fatal = NonDeterminismError(
                f"{problem}; the function changed while this run was in flight. Restore the "
                "old step order (then resume the run), or give new behaviour new step ids",
                step_id=step_id,
            )
            raise self.fatal
        return row

    def _by_position(self) -> dict[int, StepRow]:
        if self._positions is None:
            self._positions = {row.position: row for row in self.memo.values()}
        return self._positions

    def db_now(self) -> datetime:
        """The database's time: the claim's, moved on by the time since; under a virtual
        clock (orchestrator.testing) that clock's time, which stands still while a run
        executes, so a timeout of an hour ends exactly an hour on."""
        virtual = clock.current()
        if virtual is not None:
            return virtual
        return self.claimed_at + timedelta(seconds=time.monotonic() - self.claimed_mono)

    async def boundary(self) -> None:
        """Before executing new work: commit the step before it; stop if the run was
        cancelled; give the run back if the worker is draining."""
        await self.flush()
        self._stop_if_cancelled()
        if self.draining.is_set():
            await self.io(self.store.release, self.lease)
            raise Suspend("worker draining")

    def _stop_if_cancelled(self) -> None:
        if self.lease.token in self.cancelled:
            raise Cancelled(f"run {self.lease.run_id} was cancelled")

    # -- run state (ctx.set_state) -------------------------------------------------------

    def set_state(self, key: str, value: Any) -> None:
        """Publish `value` under `key` in the run's state. Nothing is written now: the run's
        next write (a checkpoint, a suspension, its end) carries it, so the state is never
        ahead of the steps before it; a replay re-runs the code between steps, and with it
        the set_state calls whose write a crash lost."""
        if not codec.storable_text(key, 200):
            raise InvalidStateError(
                f"state key {key!r} is invalid; use a non-empty string of at most 200 "
                "characters without NUL"
            )
        _, stored = codec.roundtrip(value, what=f"state key '{key}'")
        state = self.state | {key: stored}
        size = len(codec.encode(state, what="the run's state").encode("utf-8"))
        limit = self.limits.max_state_bytes
        if size > limit:
            raise StateTooLargeError(
                f"state key '{key}' would make the run's state {size} bytes, over the "
                f"{limit}-byte limit; publish a summary (counts, a reference) instead"
            )
        self.state = state
        self._state_unwritten = True

    def state_json(self) -> str | None:
        """The state for a write that ends the execution (a suspension), or None if nothing
        changed since the last write."""
        return codec.encode(self.state, what="the run's state") if self._state_unwritten else None

    def take_state(self) -> str | None:
        """The state for a write after which the execution goes on (it is then written)."""
        text = self.state_json()
        self._state_unwritten = False
        return text

    # -- what every step kind shares ----------------------------------------------------

    async def body(
        self,
        sid: str,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        timeout: float | None = None,
        span: StepSpan | None = None,
    ) -> tuple[str, Any]:
        """Call a step body; returns its result as stored (JSON text) and as decoded. A step
        called inside the body fails the run (`Abort`), whatever the body did with the error.
        A body that outlives `timeout` seconds raises `StepTimeoutError` (engine/faces.py
        says what becomes of it)."""
        if self.stand_ins is not None:
            fn = self.stand_ins.body(self.lease.run_id, self.fdef.id, sid, fn)
        if not self.face.is_async and is_async_callable(fn):
            self._misuse(sid, f"its body {_name(fn)} is an async function")
        started = time.perf_counter()
        key = object()  # one entry per body running now: a step called meanwhile is refused
        self._bodies[key] = sid
        inside = _BODY.set(sid)
        current = span.enter() if span is not None else None  # the body's spans nest in it
        try:
            value = await self.face.call(fn, args, kwargs, timeout=timeout)
        except TimedOut as out:
            assert timeout is not None
            if out.left is not None:
                self._abandon(sid, out.left)
            raise StepTimeoutError(sid, timeout) from None
        except BaseException:
            if self.fatal is not None:
                raise Abort(str(self.fatal)) from None
            raise
        finally:
            if span is not None:
                span.leave(current)
            _BODY.reset(inside)
            del self._bodies[key]
            self.observer.step_ran(self.fdef.id, time.perf_counter() - started)
        if self.fatal is not None:
            raise Abort(str(self.fatal))
        if inspect.isawaitable(value):  # only a plain function's face leaves one unawaited
            discard(value)
            self._misuse(
                sid,
                "its body returned a coroutine (a lambda or a wrapper around an async function?)",
            )
        return codec.roundtrip(
            value, what=f"step '{sid}' result", limit=self.limits.max_step_output_bytes
        )

    def _abandon(self, sid: str, left: Future[Any]) -> None:
        """A plain body's thread outlived its timeout: it is left to finish by itself (see
        engine/threads.py); a step it calls from now on is refused (`_outside_bodies`)."""
        self._abandoned.add(sid)
        fid = self.fdef.id
        self.observer.thread_abandoned(fid)
        threads.abandon(left, lambda: self.observer.abandoned_thread_ended(fid))
        self.log.warning("step body abandoned on its thread after its timeout", step=sid)

    def passes(self, exc: BaseException) -> bool:
        """What passes through a step untouched: the engine's signals, Ctrl-C, and the
        cancellation of this async run. Anything else a body raises (SystemExit from a
        library, a CancelledError of some task the body awaited) is the step's failure."""
        if isinstance(exc, asyncio.CancelledError):
            return self.face.cancelled
        return isinstance(exc, ControlSignal | KeyboardInterrupt)

    def _misuse(self, sid: str, what: str) -> None:
        fid = self.fdef.id
        self.fatal = AsyncUsageError(
            f"step '{sid}': {what}, but function '{fid}' is a plain def, which cannot await "
            f"it. Make '{fid}' an async def function and write `await ctx.step.run(...)`, or "
            "give the step a plain function as its body",
            step_id=sid,
        )
        raise Abort(str(self.fatal))  # the run fails with it, and nothing is recorded

    @property
    def policy(self) -> Policy:
        """The function's retry policy, which a step's own overrides (engine/retry.py)."""
        return Policy(self.fdef.retries, self.fdef.backoff)

    def failure(
        self,
        sid: str,
        position: int,
        attempt: int,
        exc: BaseException,
        *,
        started: float,
        began: datetime | None = None,
        policy: Policy | None = None,
    ) -> tuple[StepRecord, float | None]:
        """The record of a failed attempt, and the delay before the next (None: no more)."""
        error = error_dict(exc)
        retriable = not isinstance(exc, PayloadError)
        delay = (policy or self.policy).delay(exc, attempt) if retriable else None
        record = StepRecord(
            sid,
            position,
            "run",
            "failed" if delay is None else "retrying",
            attempt,
            error_json=json.dumps(error),
            duration_ms=ms(started),
            started_at=began,
        )
        return record, delay

    async def checkpoint(self, record: StepRecord, *, defer: bool = False) -> None:
        """Commit a step record (raises `Cancelled` after it if the run was cancelled).

        With `defer`, a completed step's record is kept until the run next does something
        with effects (`flush`: a step body, a store call) or ends (its finish carries it, so
        a one-step run costs one write). No step body ever runs before the steps before it
        are durable; only the function's own code between steps, which re-runs on every
        replay anyway, runs ahead of the commit. A run cancelled meanwhile (its body ran on
        after the cancellation) stops here: its record would be refused."""
        self._stop_if_cancelled()
        await self.flush()
        if defer:
            self.pending = record  # nothing pending or committing: flush returned
            return
        committing = self.store.checkpoint(self.lease, record, state_json=self.take_state())
        await self.face.settle(committing)

    async def flush(self) -> None:
        """Commit the deferred step record, if any. Returns only once nothing is pending or
        being committed: steps gathered in an async function flush at the same time, and
        each waits for the others' commits too."""
        while self.pending is not None or self._flushing is not None:
            if self._flushing is not None:
                await self.face.settle(self._flushing)
                continue
            record, self.pending = self.pending, None
            assert record is not None
            committing = self._flushing = self.store.checkpoint(
                self.lease, record, state_json=self.take_state()
            )
            try:
                await self.face.settle(committing)
            finally:
                if self._flushing is committing:
                    self._flushing = None

    def take_pending(self) -> StepRecord | None:
        """The deferred step record, for the run's finish to carry."""
        record, self.pending = self.pending, None
        return record

    async def io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """A store call, after the deferred step record is committed."""
        await self.flush()
        return await self.face.io(fn, *args, **kwargs)

    async def retry_later(self, delay: float, records: tuple[StepRecord, ...]) -> None:
        """Suspend the run for `delay` seconds with these failed attempts recorded."""
        due = await self.io(
            self.store.suspend,
            self.lease,
            status="queued",
            delay=delay,
            records=records,
            state_json=self.state_json(),
        )
        self.suspended_until = due
        self.observer.steps_retrying(self.fdef.id, len(records))


def _name(fn: Any) -> str:
    return str(getattr(fn, "__qualname__", None) or type(fn).__name__)


def _on_a_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def completed_run(
    sid: str, position: int, attempt: int, text: str, *, started: float, began: datetime
) -> StepRecord:
    """The record of a step body's attempt that completed (`run`, a branch of `parallel`):
    `started` on `time.perf_counter`, `began` on the database's clock."""
    return StepRecord(
        sid,
        position,
        "run",
        "completed",
        attempt,
        output_json=text,
        duration_ms=ms(started),
        started_at=began,
    )


def _ignore(run_id: str | None) -> None:
    return None
