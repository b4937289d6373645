"""`ctx.step.run`: call a step body once successfully, memoized by step id.

Replay: a completed step returns its recorded result; a failed one raises `StepError` again.
A new attempt runs the body and checkpoints its result before the function continues; a
failure is retried after the back-off (the run suspends meanwhile) until no retries are left,
when `StepError` is raised in the function. The policy is the function's, or the step's own
(`retries`, `backoff`, `retry_on`, `timeout`: engine/retry.py `Policy`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.engine.execution import Execution, completed_run, ms
from orchestrator.engine.failures import first_line, message
from orchestrator.engine.retry import Policy
from orchestrator.engine.tracer import StepSpan
from orchestrator.errors import StepError, Suspend
from orchestrator.log import payload


def start(
    execution: Execution,
    step_id: str,
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    policy: Policy | None = None,
) -> Coroutine[Any, Any, Any]:
    sid, position = execution.next_id(step_id, kind="run")
    policy = policy or execution.policy
    return _run(execution, sid, position, fn, args=args, kwargs=kwargs, policy=policy)


async def _run(
    execution: Execution,
    sid: str,
    position: int,
    fn: Callable[..., Any],
    *,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    policy: Policy,
) -> Any:
    row = execution.recorded(sid, "run", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        return row.output
    if row is not None and row.status == "failed":
        raise StepError(sid, row.error or {})
    attempt = row.attempt + 1 if row is not None else 1
    await execution.boundary()
    log = execution.log.bind(step=sid, attempt=attempt)
    span = execution.trace.step(sid, "run", attempt) if execution.trace is not None else None
    began = execution.db_now()
    started = time.perf_counter()
    try:
        execution.on_body(execution.lease.run_id)
        try:
            text, decoded = await execution.body(
                sid, fn, args, kwargs, timeout=policy.timeout, span=span
            )
        finally:
            execution.on_body(None)
    except BaseException as exc:
        if execution.passes(exc):
            if span is not None:
                span.end("stopped")
            raise
        failed = Failed(sid, position, attempt, policy, started, began)
        await _failed(execution, failed, exc, log=log, span=span)
    execution.since = max(execution.since, began)
    record = completed_run(sid, position, attempt, text, started=started, began=began)
    await execution.checkpoint(record, defer=True)
    if span is not None:
        span.end("completed")
    log.debug(
        "step completed", duration_ms=ms(started), output_bytes=len(text), **payload(output=text)
    )
    return decoded


@dataclass(frozen=True)
class Failed:
    """A failed attempt of a step."""

    sid: str
    position: int
    attempt: int
    policy: Policy
    started: float  # perf_counter when the attempt began
    began: datetime | None = None  # the same, on the database's clock


async def _failed(
    execution: Execution,
    failed: Failed,
    exc: BaseException,
    *,
    log: Any,
    span: StepSpan | None = None,
) -> None:
    """Record a failed attempt, then raise: `StepError` when no retries are left, else
    `Suspend` until the retry is due."""
    sid = failed.sid
    record, delay = execution.failure(
        sid,
        failed.position,
        failed.attempt,
        exc,
        started=failed.started,
        began=failed.began,
        policy=failed.policy,
    )
    error = json.loads(record.error_json or "{}")
    if span is not None:
        span.end(record.status, str(error.get("type") or "Error"))
    said = {"error_type": error["type"], "error": first_line(exc)}
    said |= payload(error_message=message(exc))
    if delay is None:
        await execution.checkpoint(record)
        log.warning("step failed", retries=failed.policy.retries, **said)
        raise StepError(sid, error) from exc
    await execution.retry_later(delay, (record,))
    log.warning("step will retry", delay=round(delay, 3), **said)
    raise Suspend(f"retry of step '{sid}'")
