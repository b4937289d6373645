"""Replay, resume and fork runs: what an operator does after fixing the code.

- `replay(run_id)`: a new run of the same function from the same event(s), with fresh steps;
  it records `origin = 'replay'` and `origin_run_id`.
- `resume(run_id)`: a failed or cancelled run goes back in the queue. Its completed steps are
  replayed from their records; the step that failed it runs again with fresh retries.
- `fork(run_id, from_step, data=None)`: a new run that starts with the steps the original
  recorded before `from_step` and executes from there, optionally with new event data;
  `origin = 'fork'`.

Each works directly on the database, with no daemon involved: a daemon serving the function
picks the run up as it would any other. New runs get the function's flow-control keys and
`cancel_on` conditions as registered by the daemons (`orchestrator.functions`). Bulk forms
take the ids from `select` and work in batches of BATCH, one transaction each; they report
after each batch (`progress`) and stop between batches when `keep_going()` turns false,
leaving the runs not reached untouched (`Outcome.stopped`).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from orchestrator import codec
from orchestrator.db import functions, replays, runs
from orchestrator.db.database import Database, IntegrityError
from orchestrator.db.session import notify_runs
from orchestrator.errors import (
    InvalidEventError,
    RunNotFoundError,
    RunStateError,
    StepNotFoundError,
    UnknownFunctionError,
)
from orchestrator.flow import FlowPolicy

BATCH = 100
_SINGLETON = "its singleton key has an active run"
Progress = Callable[[int, int], None]  # (done, total)
KeepGoing = Callable[[], bool]


@dataclass(frozen=True)
class Selection:
    """Runs to act on in bulk: of `function_id` (any when None), with one of `statuses`,
    finished in [since, until)."""

    statuses: tuple[str, ...] = ("failed",)
    function_id: str | None = None
    since: datetime | timedelta | None = None  # a timedelta counts back from now
    until: datetime | timedelta | None = None


@dataclass(frozen=True)
class Copy:
    """A run to make from `source`: its new id, events and event id."""

    source: runs.RunRow
    id: str
    events: list[dict[str, Any]]
    event_id: str | None

    @classmethod
    def of(cls, source: runs.RunRow) -> Copy:
        return cls(source, str(uuid.uuid4()), source.events, source.event_id)


@dataclass
class Outcome:
    """What a bulk operation did: the runs it made or requeued, and those it refused."""

    done: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # run id → why
    stopped: bool = False  # told to stop between batches: the runs not reached are untouched
    reached: int = 0  # runs looked at (done, refused or neither), the rest not


class Recovery:
    def __init__(self, db: Database, *, max_event_bytes: int = 1024 * 1024) -> None:
        self.db = db
        self.max_event_bytes = max_event_bytes  # new data given to a fork

    # -- one run -------------------------------------------------------------------------

    def replay(self, run_id: str) -> str:
        """A new run from the same event(s) as `run_id`; returns its id."""
        copy = Copy.of(self._get(run_id))
        if not self.db.run(lambda conn: self._create(conn, [copy], "replay")):
            raise RunStateError(f"run {copy.source.id} was not replayed: {_SINGLETON}")
        return copy.id

    def resume(self, run_id: str) -> str:
        """Requeue a failed or cancelled run; returns its full id."""
        run = self._get(run_id)
        if run.status not in replays.RESUMABLE:
            hint = " (replay it for a fresh run)" if run.status in replays.FINISHED else ""
            raise RunStateError(
                f"run {run.id} is {run.status}; only failed or cancelled runs can be resumed{hint}"
            )
        outcome = self.resume_many([run.id])
        if run.id in outcome.refused:
            raise RunStateError(f"run {run.id} was not resumed: {outcome.refused[run.id]}")
        return run.id

    def fork(self, run_id: str, from_step: str, data: dict[str, Any] | None = None) -> str:
        """A new run that reuses the steps `run_id` recorded before `from_step` and executes
        from there (with `data` as its event data, if given); returns its id."""
        run = self._get(run_id)
        copy = Copy.of(run)
        if data is not None:
            if len(run.events) != 1:
                raise InvalidEventError(
                    f"run {run.id} has {len(run.events)} events (a batch); new data replaces the "
                    "data of a single event"
                )
            if not isinstance(data, dict):
                raise InvalidEventError(f"data must be a JSON object, got {type(data).__name__}")
            codec.encode(data, what="fork data", limit=self.max_event_bytes)
            copy = Copy(run, copy.id, [run.events[0] | {"data": data}], None)

        def write(conn: Any) -> None:
            if not replays.hold(conn, run.id):  # deleted meanwhile (retention)
                raise RunNotFoundError(f"run {run.id} no longer exists")
            recorded = replays.steps_of(conn, run.id)
            at = next((s for s in recorded if s.step_id == from_step), None)
            if at is None:
                names = ", ".join(repr(s.step_id) for s in recorded) or "none"
                raise StepNotFoundError(
                    f"run {run.id} recorded no step {from_step!r}; its steps: {names}"
                )
            if not self._create(conn, [copy], "fork"):
                raise RunStateError(f"run {run.id} was not forked: {_SINGLETON}")
            replays.copy_steps(conn, run.id, copy.id, before=at.position)

        self.db.run(write)
        return copy.id

    # -- in bulk -------------------------------------------------------------------------

    def select(self, selection: Selection) -> list[str]:
        def read(conn: Any) -> list[str]:
            now = functions.db_now(conn)
            return replays.matching(
                conn,
                statuses=selection.statuses,
                function_id=selection.function_id,
                since=_moment(selection.since, now),
                until=_moment(selection.until, now),
            )

        return self.db.run(read)

    def replay_many(
        self,
        run_ids: list[str],
        progress: Progress | None = None,
        keep_going: KeepGoing = lambda: True,
    ) -> Outcome:
        def batch(conn: Any, ids: list[str], outcome: Outcome) -> None:
            found = {r.id: r for r in replays.originals(conn, ids)}
            todo = [Copy.of(found[i]) for i in ids if i in found]
            made = self._create(conn, todo, "replay")
            outcome.done.extend(made)
            for run_id in ids:
                if run_id not in found:
                    outcome.refused[run_id] = "no such run"
            for copy in todo:
                if copy.id not in made:
                    outcome.refused[copy.source.id] = _SINGLETON

        return self._in_batches(run_ids, batch, progress, keep_going)

    def resume_many(
        self,
        run_ids: list[str],
        progress: Progress | None = None,
        keep_going: KeepGoing = lambda: True,
    ) -> Outcome:
        def batch(conn: Any, ids: list[str], outcome: Outcome) -> None:
            watches = functions.cancel_watches(conn)
            try:
                with conn.begin_nested():
                    resumed = replays.resume(conn, ids, watches)
            except IntegrityError:  # a singleton key taken meanwhile: one by one, to say which
                resumed = []
                for run_id in ids:
                    try:
                        with conn.begin_nested():
                            resumed += replays.resume(conn, [run_id], watches)
                    except IntegrityError:
                        outcome.refused[run_id] = _SINGLETON
            if resumed:
                notify_runs(conn)
            outcome.done.extend(resumed)
            for run_id in set(ids) - set(resumed) - set(outcome.refused):
                outcome.refused[run_id] = "not failed or cancelled (any more)"

        return self._in_batches(run_ids, batch, progress, keep_going)

    # -- helpers -------------------------------------------------------------------------

    def _in_batches(
        self,
        run_ids: list[str],
        batch: Callable[[Any, list[str], Outcome], None],
        progress: Progress | None,
        keep_going: KeepGoing,
    ) -> Outcome:
        outcome = Outcome()
        for start in range(0, len(run_ids), BATCH):
            if not keep_going():
                outcome.stopped = True
                break
            ids = run_ids[start : start + BATCH]
            part = Outcome()

            def attempt(conn: Any, ids: list[str] = ids, part: Outcome = part) -> None:
                part.done.clear()  # retried whole after a transient error
                part.refused.clear()
                batch(conn, ids, part)

            self.db.run(attempt)
            outcome.done += part.done
            outcome.refused |= part.refused
            outcome.reached += len(ids)
            if progress is not None:
                progress(min(start + BATCH, len(run_ids)), len(run_ids))
        return outcome

    def _get(self, run_id: str) -> runs.RunRow:
        run = self.db.run(lambda conn: runs.get(conn, run_id))
        if run is None:
            raise RunNotFoundError(f"no run matches {run_id!r} (or the prefix is ambiguous)")
        return run

    def _create(self, conn: Any, todo: list[Copy], origin: str) -> list[str]:
        """Make the runs; returns the ids made (a run whose singleton key is taken is not)."""
        if not todo:
            return []
        options = functions.options(conn)
        unknown = sorted({c.source.function_id for c in todo} - set(options))
        if unknown:
            raise UnknownFunctionError(
                f"function {unknown[0]!r} is not registered (no daemon serves it); deploy it "
                "before replaying its runs"
            )
        policies = {fid: FlowPolicy.from_options(options[fid]) for fid in options}
        new_runs = []
        for copy in todo:
            policy = policies[copy.source.function_id]
            keys = policy.run_keys(copy.events[0]) if policy.claims and copy.events else None
            new_runs.append(
                runs.NewRun(
                    copy.source.function_id,
                    copy.events,
                    event_id=copy.event_id,
                    id=copy.id,
                    **(keys.fields() if keys is not None else {}),
                )
            )
        made = runs.create_many(conn, new_runs, functions.cancel_watches(conn))
        replays.mark_origin(conn, [(c.id, c.source.id) for c in todo if c.id in made], origin)
        if made:
            notify_runs(conn)
        return made


def _moment(value: datetime | timedelta | None, now: datetime) -> datetime | None:
    if isinstance(value, timedelta):
        return now - value
    return value
