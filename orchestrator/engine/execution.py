"""One execution of a run: replay recorded steps, execute new ones, checkpoint each.

A worker runs the function straight through. A step already recorded returns its recorded
result without running; a new step runs, and its result is committed (fenced on the lease)
before the function continues. The run suspends only at sleeps, waits and retry back-offs,
so a function of N steps costs O(N) work. Waits, invokes, sent events and parallel steps are
in engine/coordination.py and engine/parallel.py.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from orchestrator import codec
from orchestrator.db.steps import StepRecord, StepRow
from orchestrator.engine.failures import error_dict, first_line, message
from orchestrator.engine.observer import NOBODY, StepObserver
from orchestrator.engine.retry import retry_delay
from orchestrator.engine.store import Lease, RunStore
from orchestrator.errors import (
    Abort,
    Cancelled,
    ControlSignal,
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
class Limits:
    max_step_output_bytes: int = 4 * 1024 * 1024
    max_event_bytes: int = 1024 * 1024


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
        cancelled: Collection[str] = (),
        policies: Mapping[str, FlowPolicy] | None = None,
        observer: StepObserver = NOBODY,
    ) -> None:
        self.lease = lease
        self.observer = observer  # counts step bodies and retries for the metrics
        self.policies = policies or {}  # flow control of the functions it may invoke
        self.cancelled = cancelled  # runs whose cancellation the daemon passed on
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
        self.limits = limits
        self.draining = draining
        self.log = log
        self.fatal: NonDeterminismError | NestedStepError | None = None
        self._bodies: dict[int, str] = {}  # the step bodies running now, by thread
        self.suspended_until: datetime | None = None
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
        step is memoized, shifting every later step."""
        if not self._bodies:
            return
        # the caller's own body; a thread a body started is blamed on some running body
        outer = self._bodies.get(threading.get_ident()) or min(self._bodies.values(), default="?")
        self.fatal = NestedStepError(
            f"ctx.step.{kind}('{step_id}') was called inside the body of step '{outer}'; "
            "steps cannot be nested, because a step body runs once and is then replayed "
            f"from its recorded result. Call the helper directly inside '{outer}' (it is "
            f"part of that step), or make '{step_id}' a step of its own in the function",
            step_id=outer,
        )
        raise self.fatal

    def replayed(self, row: StepRow) -> None:
        """A recorded step was replayed: the next wait looks back to when it began."""
        began = row.updated_at - timedelta(milliseconds=row.duration_ms or 0)
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
        elif row is None and (other := self._by_position().get(position)) is not None:
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
        return self.claimed_at + timedelta(seconds=time.monotonic() - self.claimed_mono)

    def boundary(self) -> None:
        """Before executing new work: stop if the run was cancelled; give the run back if the
        worker is draining."""
        if self.lease.run_id in self.cancelled:
            raise Cancelled(f"run {self.lease.run_id} was cancelled")
        if self.draining.is_set():
            self.store.release(self.lease)
            raise Suspend("worker draining")

    # -- step.run ------------------------------------------------------------------------

    def run_step(
        self, step_id: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        sid, position = self.next_id(step_id, kind="run")
        row = self.recorded(sid, "run", position)
        if row is not None and row.status == "completed":
            self.replayed(row)
            return row.output
        if row is not None and row.status == "failed":
            raise StepError(sid, row.error or {})
        attempt = row.attempt + 1 if row is not None else 1
        self.boundary()
        log = self.log.bind(step=sid, attempt=attempt)
        began = self.db_now()
        started = time.perf_counter()
        try:
            self.on_body(self.lease.run_id)
            try:
                text, decoded = self.body(sid, fn, args, kwargs)
            finally:
                self.on_body(None)
        except (ControlSignal, KeyboardInterrupt):
            raise
        except BaseException as exc:  # SystemExit from a library is the step's failure too
            return self._step_failed(sid, position, attempt, exc, started=started, log=log)
        self.since = max(self.since, began)
        self.store.checkpoint(
            self.lease,
            StepRecord(
                sid,
                position,
                "run",
                "completed",
                attempt,
                output_json=text,
                duration_ms=ms(started),
            ),
        )
        log.debug(
            "step completed",
            duration_ms=ms(started),
            output_bytes=len(text),
            **payload(output=text),
        )
        return decoded

    def body(
        self, sid: str, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[str, Any]:
        """Call a step body; returns its result as stored (JSON text) and as decoded. A step
        called inside the body fails the run (`Abort`), whatever the body did with the error."""
        started = time.perf_counter()
        call = threading.get_ident()  # one body per thread: a nested one is refused
        self._bodies[call] = sid
        try:
            value = fn(*args, **kwargs)
        except BaseException:
            if self.fatal is not None:
                raise Abort(str(self.fatal)) from None
            raise
        finally:
            del self._bodies[call]
            self.observer.step_ran(self.fdef.id, time.perf_counter() - started)
        if self.fatal is not None:
            raise Abort(str(self.fatal))
        return codec.roundtrip(
            value, what=f"step '{sid}' result", limit=self.limits.max_step_output_bytes
        )

    def failure(
        self, sid: str, position: int, attempt: int, exc: BaseException, *, started: float
    ) -> tuple[StepRecord, float | None]:
        """The record of a failed attempt, and the delay before the next (None: no more)."""
        error = error_dict(exc)
        retriable = not isinstance(exc, PayloadError)
        delay = (
            retry_delay(exc, self.fdef.backoff, attempt, self.fdef.retries) if retriable else None
        )
        record = StepRecord(
            sid,
            position,
            "run",
            "failed" if delay is None else "retrying",
            attempt,
            error_json=json.dumps(error),
            duration_ms=ms(started),
        )
        return record, delay

    def _step_failed(
        self,
        sid: str,
        position: int,
        attempt: int,
        exc: BaseException,
        *,
        started: float,
        log: Any,
    ) -> Any:
        record, delay = self.failure(sid, position, attempt, exc, started=started)
        error = json.loads(record.error_json or "{}")
        said = {"error_type": error["type"], "error": first_line(exc)}
        said |= payload(error_message=message(exc))
        if delay is None:
            self.store.checkpoint(self.lease, record)
            log.warning("step failed", retries=self.fdef.retries, **said)
            raise StepError(sid, error) from exc
        self.retry_later(delay, (record,))
        log.warning("step will retry", delay=round(delay, 3), **said)
        raise Suspend(f"retry of step '{sid}'")

    def retry_later(self, delay: float, records: tuple[StepRecord, ...]) -> None:
        """Suspend the run for `delay` seconds with these failed attempts recorded."""
        due = self.store.suspend(self.lease, status="queued", delay=delay, records=records)
        self.suspended_until = due
        self.observer.steps_retrying(self.fdef.id, len(records))

    # -- step.sleep ----------------------------------------------------------------------

    def sleep(
        self, step_id: str, *, seconds: float | None = None, until: datetime | None = None
    ) -> None:
        sid, position = self.next_id(step_id, kind="sleep")
        row = self.recorded(sid, "sleep", position)
        if row is not None and row.status == "completed":
            self.replayed(row)
            return
        if row is not None and row.wake_at is not None:
            until, seconds = row.wake_at, None
        elif seconds is not None and seconds <= 0:
            until, seconds = self.db_now(), None
        if until is not None and until <= self.db_now():
            self.since = max(self.since, self.db_now())
            self.store.checkpoint(
                self.lease, StepRecord(sid, position, "sleep", "completed", 1, wake_at=until)
            )
            return
        # no drain check here: suspending already gives the run back, with its sleep recorded
        record = StepRecord(sid, position, "sleep", "sleeping", 1)
        due = self.store.suspend(
            self.lease, status="sleeping", delay=seconds or 0.0, until=until, record=record
        )
        self.log.info("run sleeping", step=sid, until=due.isoformat())
        self.suspended_until = due
        raise Suspend(f"sleep '{sid}'")


def ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)


def _ignore(run_id: str | None) -> None:
    return None
