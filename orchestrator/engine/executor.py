"""Drive one claimed run to its next stop: completed, failed, suspended or lease lost.

`execute` is written once, as a coroutine over the run's face (engine/faces.py): a worker
thread runs a plain function's with `run_sync`, the worker's event loop awaits an async one's.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import threading
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field, fields
from datetime import datetime
from operator import attrgetter
from typing import Any

from orchestrator import codec
from orchestrator.context import AsyncContext, Context, Event, Step
from orchestrator.db.runs import ClaimedRun
from orchestrator.db.steps import StepRow
from orchestrator.engine.cancelled import CancelledRuns
from orchestrator.engine.execution import Execution, Limits, StandIns
from orchestrator.engine.faces import Face, SyncFace, discard
from orchestrator.engine.failures import error_dict, first_line, message, summary, type_name
from orchestrator.engine.observer import NOBODY, StepObserver
from orchestrator.engine.retry import retry_delay
from orchestrator.engine.store import Lease, RunStore
from orchestrator.engine.tracer import NOTRACE, RunSpan, Tracer
from orchestrator.errors import (
    Abort,
    AsyncUsageError,
    Cancelled,
    InvalidStepOptionError,
    LeaseLost,
    NestedStepError,
    NonDeterminismError,
    PayloadError,
    StepError,
    Suspend,
)
from orchestrator.flow import FlowPolicy
from orchestrator.functions import FunctionDef
from orchestrator.log import payload


@dataclass(frozen=True)
class Task:
    """A claimed run, as the daemon hands it to a worker."""

    run_id: str
    function_id: str
    lease_token: str
    events: list[dict[str, Any]]
    attempts: int
    claimed_at: datetime
    created_at: datetime
    parent_run_id: str | None = None
    origin: str | None = None
    retries: int = 0  # function-level retries the run has taken
    origin_run_id: str | None = None  # the run it replays or forks
    trace_context: dict[str, Any] | None = None  # what its spans continue (tracecontext.py)

    def wire(self) -> tuple[Any, ...]:
        """Its fields in order, as the daemon sends it to a worker (`Task(*fields)` again
        there): a tuple pickles and unpickles in a third of the time a dataclass does."""
        fields_of: tuple[Any, ...] = _TASK_FIELDS(self)
        return fields_of

    @classmethod
    def of(cls, claimed: ClaimedRun) -> Task:
        """The task of a run the claim statement returned."""
        c = claimed
        return cls(
            c.id,
            c.function_id,
            c.lease_token,
            c.events,
            c.attempts,
            c.claimed_at,
            c.created_at,
            c.parent_run_id,
            c.origin,
            c.retries,
            c.origin_run_id,
            c.trace_context,
        )


# every field of a Task, in order (Task.wire); C speed, and never out of step with the class
_TASK_FIELDS = attrgetter(*(f.name for f in fields(Task)))


@dataclass(frozen=True)
class Outcome:
    """How an execution stopped. A run that ended returns before its end is committed:
    `commit` settles when it is (see `settled`), so a worker thread goes on to its next run
    while the group committer writes this one's end with others."""

    run_id: str
    # completed | failed | suspended | lease_lost | abandoned, or stopped: a cancellation
    # ended the run (its end is the cancellation's, recorded by the statement that made it)
    status: str
    due_at: datetime | None = None
    commit: Future[None] | None = field(default=None, compare=False, repr=False)


def settled(outcome: Outcome, log: Any) -> Outcome:
    """The outcome once its commit has settled (call it from the commit's done callback, or
    after waiting for it): `lease_lost` if the lease was lost meanwhile, `abandoned` if the
    end could not be written (the run goes back; its lease expires otherwise)."""
    commit = outcome.commit
    if commit is None:
        return outcome
    error = commit.exception()
    if error is None:
        return Outcome(outcome.run_id, outcome.status, outcome.due_at)
    if isinstance(error, Cancelled):  # its end was refused: the run stays cancelled
        return stopped(outcome.run_id, log, at="its end")
    if isinstance(error, LeaseLost):
        log.warning("lease lost; abandoning run", run_id=outcome.run_id, reason=str(error))
        return Outcome(outcome.run_id, "lease_lost")
    log.error("could not record the run's end", run_id=outcome.run_id, exc_info=error)
    return Outcome(outcome.run_id, "abandoned")


async def execute(
    task: Task,
    fdef: FunctionDef,
    store: RunStore,
    *,
    limits: Limits,
    draining: threading.Event,
    log: Any,
    on_body: Callable[[str | None], None] | None = None,
    cancelled: CancelledRuns | None = None,
    policies: Mapping[str, FlowPolicy] | None = None,
    observer: StepObserver = NOBODY,
    face: Face | None = None,
    stand_ins: StandIns | None = None,
    tracer: Tracer = NOTRACE,
) -> Outcome:
    trace = tracer.run(task)
    running = _execute(
        task,
        fdef,
        store,
        trace,
        limits=limits,
        draining=draining,
        log=log,
        on_body=on_body,
        cancelled=cancelled,
        policies=policies,
        observer=observer,
        face=face,
        stand_ins=stand_ins,
    )
    return await (running if trace is None else _traced(trace, running))


async def _traced(trace: RunSpan, running: Coroutine[Any, Any, Outcome]) -> Outcome:
    """Run the execution inside its span (the run's own code between steps logs in it),
    and end the span with how it stopped."""
    token = trace.enter()
    status = "abandoned"  # what a worker makes of an execution that raised
    try:
        outcome = await running
        status = outcome.status
        return outcome
    finally:
        trace.leave(token)
        trace.end(status)


async def _execute(
    task: Task,
    fdef: FunctionDef,
    store: RunStore,
    trace: RunSpan | None,
    *,
    limits: Limits,
    draining: threading.Event,
    log: Any,
    on_body: Callable[[str | None], None] | None,
    cancelled: CancelledRuns | None,
    policies: Mapping[str, FlowPolicy] | None,
    observer: StepObserver,
    face: Face | None,
    stand_ins: StandIns | None,
) -> Outcome:
    lease = Lease(
        task.run_id, task.lease_token, ties=task.parent_run_id is not None or bool(fdef.cancel_on)
    )
    log = log.bind(run_id=task.run_id, function_id=task.function_id)
    execution = Execution(
        lease=lease,
        fdef=fdef,
        store=store,
        memo=await _memo(task, store, face),
        claimed_at=task.claimed_at,
        created_at=task.created_at,
        trigger=task.events[0] if task.events else {},
        limits=limits,
        draining=draining,
        log=log,
        on_body=on_body,
        cancelled=cancelled,
        policies=policies,
        observer=observer,
        face=face,
        stand_ins=stand_ins,
        trace=trace,
    )
    ctx = (AsyncContext if execution.face.is_async else Context)(
        run_id=task.run_id,
        function_id=task.function_id,
        events=[Event.from_json(e) for e in task.events],
        attempt=task.attempts,
        log=log,
        step=Step(execution, task.run_id),
    )
    try:
        return await _drive(fdef, ctx, execution, limits=limits, retries=task.retries, log=log)
    except LeaseLost as exc:
        if task.lease_token in execution.cancelled:  # a write refused after the run was cancelled
            return stopped(task.run_id, log, at="a write")
        log.warning("lease lost; abandoning run", reason=str(exc))
        return Outcome(task.run_id, "lease_lost")


def stopped(run_id: str, log: Any, *, at: str) -> Outcome:
    """A cancellation ended the run while this execution ran it: it stops, quietly (nothing
    went wrong; the run's end, `cancelled` with its reason, is already recorded)."""
    log.info("run cancelled; execution stopped", run_id=run_id, at=at)
    return Outcome(run_id, "stopped")


async def _memo(task: Task, store: RunStore, face: Face | None) -> dict[str, StepRow]:
    # a first execution has no recorded steps, unless it is a fork's (copied ones)
    if task.attempts == 1 and task.origin != "fork":
        return {}
    # read with the other runs the worker resumes now (engine/loader.py)
    return await (face or SyncFace()).settle(store.loading(task.run_id))


async def _drive(
    fdef: FunctionDef,
    ctx: Context,
    execution: Execution,
    *,
    limits: Limits,
    retries: int,
    log: Any,
) -> Outcome:
    lease, face = execution.lease, execution.face
    try:
        value = await face.call(fdef.fn, (ctx,), {})
        if inspect.isawaitable(value):  # a plain function's face does not await it
            discard(value)
            raise _returned_coroutine(fdef.id)
        text = codec.encode(
            value, what=f"function '{fdef.id}' return value", limit=limits.max_step_output_bytes
        )
    except Suspend:
        return Outcome(lease.run_id, "suspended", execution.suspended_until)
    except (Cancelled, asyncio.CancelledError) as exc:
        if not execution.passes(exc):  # user code's own CancelledError: its failure
            return await _failed(execution, exc, retries=retries, log=log)
        return stopped(lease.run_id, log, at="an await" if face.is_async else "a step boundary")
    except (LeaseLost, KeyboardInterrupt):
        raise
    except BaseException as exc:  # whatever user code raised, SystemExit included
        return await _failed(execution, exc, retries=retries, log=log)
    if execution.fatal is not None:  # user code swallowed a non-determinism error
        return _fail(execution, {}, log)
    said = {"output_bytes": len(text)} | payload(output=text)
    return _finish(execution, "completed", text, None, log=log, event="run completed", **said)


# What the function raises that a retry would not change: a step that failed for good (a
# replay raises its StepError again), the engine's fatal errors, a return value it refused.
_NOT_RETRIED = (
    StepError,
    Abort,
    AsyncUsageError,
    InvalidStepOptionError,
    NonDeterminismError,
    NestedStepError,
    PayloadError,
)


async def _failed(execution: Execution, exc: BaseException, *, retries: int, log: Any) -> Outcome:
    """The function raised outside any step: retry the run after the function's back-off
    (its completed steps replay), or fail it when the policy says no more."""
    fdef = execution.fdef
    delay = None
    if execution.fatal is None and not isinstance(exc, _NOT_RETRIED):
        delay = retry_delay(exc, fdef.backoff, retries + 1, fdef.retries)
    if delay is None:
        return _fail(execution, _error_of(exc), log)
    error = json.dumps(error_dict(exc))
    try:  # the last step's deferred record is committed first (`io` flushes it)
        due = await execution.io(
            execution.store.suspend,
            execution.lease,
            status="queued",
            delay=delay,
            state_json=execution.state_json(),
            retry_error=error,
        )
    except Cancelled:  # a cancellation ended the run meanwhile: the retry was refused
        return stopped(execution.lease.run_id, log, at="a function retry")
    execution.observer.run_retrying(fdef.id)
    said = {"error_type": type_name(exc), "error": first_line(exc)} | payload(
        error_message=message(exc)
    )
    log.warning("run will retry", retry=retries + 1, delay=round(delay, 3), **said)
    return Outcome(execution.lease.run_id, "suspended", due)


def _finish(
    execution: Execution,
    status: str,
    output_json: str | None,
    error_json: str | None,
    *,
    log: Any,
    event: str,
    level: str = "info",
    **said: Any,
) -> Outcome:
    """Hand the run's end (with its last step, if that is not committed yet) to the group
    committer; `event` is logged once it is committed."""
    commit = execution.store.finish(
        execution.lease,
        status=status,
        output_json=output_json,
        error_json=error_json,
        step=execution.take_pending(),
        state_json=execution.take_state(),
    )

    def committed(done: Future[None]) -> None:
        if done.exception() is None:
            getattr(log, level)(event, **said)

    commit.add_done_callback(committed)
    return Outcome(execution.lease.run_id, status, commit=commit)


def _returned_coroutine(function_id: str) -> AsyncUsageError:
    return AsyncUsageError(
        f"function '{function_id}' returned a coroutine: it is a plain callable around an "
        "async function (a lambda, a partial or a wrapper?), which nothing awaits. Register "
        "the async def function itself, or make the wrapper async def"
    )


def _error_of(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, Abort):  # the execution's fatal error says why (see _fail)
        return {}
    if isinstance(exc, StepError) and _is_record(exc.error) and isinstance(exc.step_id, str):
        return exc.error | {"step": exc.step_id}  # the step's error, naming the step
    return error_dict(exc)  # any exception (a StepError user code built with odd contents)


def _is_record(error: Any) -> bool:
    """A dict that can be stored as it is (a StepError user code raised may hold anything)."""
    try:
        json.dumps(error, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return False
    return isinstance(error, dict)


def _fail(execution: Execution, error: dict[str, Any], log: Any) -> Outcome:
    if execution.fatal is not None:  # it wins over whatever the code did after it
        error = error_dict(execution.fatal)
    if execution.trace is not None:
        execution.trace.failed(str(error.get("type") or "Error"))
    text = str(error.get("message") or "")
    said = {
        "error_type": error.get("type"),
        "error_code": error.get("code"),
        "error": summary(text, str(error.get("type") or "")),
    } | payload(error_message=text)
    return _finish(
        execution,
        "failed",
        None,
        json.dumps(error),
        log=log,
        event="run failed",
        level="warning",
        **said,
    )
