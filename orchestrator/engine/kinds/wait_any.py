"""`ctx.step.wait_for_any`: wait for whichever of several things comes first, as one step.

Each entry is an event (`OnEvent`: a name, `match`, `if_` and `lookback`, as for
`wait_for_event`) or an invoked run's end (`OnInvoke`: a child run started like `invoke`'s).
The step stores one wait per entry (its `branch`, db/waits.py) and is resolved once, by the
first event received that ends one of them: ingest deletes all of the step's waits under the
run's lock, so a second event arriving at the same moment finds nothing to resolve. An event
that matches several entries ends the lowest. On a timeout the step returns None.

Replay: the step's record, `{"index": i, "event": e}` (or null on a timeout), gives the same
answer again: the entry's index and key, with the event (`OnEvent`), or the child's output
(`OnInvoke`; its failure raises `StepError`, as `invoke` does).

The runs that losing `OnInvoke` entries started are cancelled when the step ends otherwise:
by the ingest that resolves it, or by the timeout. Children are started only when the step
begins to wait: an event already received (with `lookback`) ends it before any starts (and
cancels any that an earlier attempt, whose lease was lost as it suspended, started).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from orchestrator.db.waits import LOST_RACE, Branch
from orchestrator.engine.execution import Execution
from orchestrator.engine.kinds import invoke
from orchestrator.engine.kinds.wait import (
    WaitFor,
    acceptor,
    event_wait,
    lookback_of,
    timed_out,
    wait_or_suspend,
)
from orchestrator.errors import InvalidStepOptionError, NonDeterminismError

MAX_ENTRIES = 32


@dataclass(frozen=True)
class OnEvent:
    """An entry of `wait_for_any`: an event called `event`, as `wait_for_event` waits for it
    (`match`, `if_`, `lookback`). `key` names the entry in the result (default: `event`)."""

    event: str
    match: str | None = None
    if_: str | None = None
    lookback: timedelta | float | Literal["run"] | None = None
    key: str | None = None


@dataclass(frozen=True)
class OnInvoke:
    """An entry of `wait_for_any`: run `function` as a child run with `data` (as `invoke`
    does) and win when it ends. `key` names the entry in the result (default: `function`)."""

    function: str
    data: dict[str, Any] | None = None
    key: str | None = None


Entry = OnEvent | OnInvoke


def key_of(entry: Entry) -> str:
    if isinstance(entry, OnEvent):
        return entry.key or entry.event
    return entry.key or entry.function


Won = tuple[int, Entry, Any]  # the index of the entry that came first, the entry, its value


def start(
    execution: Execution, step_id: str, entries: Any, timeout: float | None
) -> Coroutine[Any, Any, Won | None]:
    sid, position = execution.next_id(step_id, kind="wait_for_any")
    checked = _checked(sid, entries)
    return _wait_for_any(execution, sid, position, checked, timeout)


def _checked(sid: str, entries: Any) -> tuple[Entry, ...]:
    where = f"wait_for_any '{sid}'"
    if isinstance(entries, str | bytes) or not isinstance(entries, Sequence):
        raise InvalidStepOptionError(
            f"{where}: events must be a list of OnEvent and OnInvoke entries, not "
            f"{type(entries).__name__}"
        )
    if not 1 <= len(entries) <= MAX_ENTRIES:
        raise InvalidStepOptionError(
            f"{where}: give between 1 and {MAX_ENTRIES} entries, not {len(entries)}"
        )
    for i, entry in enumerate(entries):
        if not isinstance(entry, OnEvent | OnInvoke):
            raise InvalidStepOptionError(
                f"{where}: entry {i} is {type(entry).__name__} {entry!r}; use "
                'OnEvent("name", ...) or OnInvoke("function", ...)'
            )
        if isinstance(entry, OnEvent):
            lookback_of(entry.lookback, f"{where} entry {i}")
    return tuple(entries)


async def _wait_for_any(
    execution: Execution, sid: str, position: int, entries: tuple[Entry, ...], timeout: float | None
) -> Won | None:
    """The entry that came first and its value, or None on timeout."""
    row = execution.recorded(sid, "wait_any", position)
    if row is not None and row.status == "completed":
        execution.replayed(row)
        return _result(sid, entries, row.output)
    children = {
        i: invoke.child_run_id(execution, sid, i)
        for i, entry in enumerate(entries)
        if isinstance(entry, OnInvoke)
    }
    accepts = {
        i: acceptor(execution, _spec(entry, timeout), f"wait_for_any '{sid}' entry {i}")
        for i, entry in enumerate(entries)
        if isinstance(entry, OnEvent)
    }  # an `if_` that does not compile fails the run here, as a wait_for_event's does
    if row is not None:  # still waiting: the run was picked up because the wait timed out
        await timed_out(
            execution, sid, position, row, kind="wait_any", cancel_runs=tuple(children.values())
        )
        return None
    await execution.boundary()
    branches = _branches(execution, sid, entries, timeout, children=children, accepts=accepts)
    found = await wait_or_suspend(
        execution, sid, position, branches, kind="wait_any", output=_recorded
    )
    losers = [child for i, child in children.items() if i != found[0]]
    if losers:  # started by an earlier attempt whose lease was lost as it suspended
        await execution.io(execution.store.cancel, losers, reason=LOST_RACE)
    return _result(sid, entries, _recorded(*found))


def _branches(
    execution: Execution,
    sid: str,
    entries: tuple[Entry, ...],
    timeout: float | None,
    *,
    children: dict[int, str],
    accepts: dict[int, Callable[[dict[str, Any]], bool]],
) -> tuple[Branch, ...]:
    """The step's waits, one per entry (its index is its branch), begun now."""
    at = execution.db_now()
    branches = []
    for i, entry in enumerate(entries):
        if isinstance(entry, OnInvoke):
            child = invoke.child_run(execution, sid, children[i], entry.function, entry.data)
            wait = invoke.finish_wait(execution, sid, children[i], timeout, branch=i)
            branches.append(Branch(wait, _any, child))
        else:
            where = f"wait_for_any '{sid}' entry {i}"
            wait = event_wait(execution, sid, _spec(entry, timeout), where, at=at, branch=i)
            branches.append(Branch(wait, accepts[i]))
    return tuple(branches)


def _spec(entry: OnEvent, timeout: float | None) -> WaitFor:
    lookback = lookback_of(entry.lookback, "")  # checked when called
    return WaitFor(entry.event, entry.match, entry.if_, timeout, lookback)


def _any(event: dict[str, Any]) -> bool:
    return True


def _recorded(branch: int, event: dict[str, Any]) -> dict[str, Any]:
    return {"index": branch, "event": event}


def _result(sid: str, entries: tuple[Entry, ...], output: Any) -> Won | None:
    if output is None:
        return None
    index, event = int(output["index"]), output["event"]
    if index >= len(entries):
        raise NonDeterminismError(
            f"step '{sid}' was recorded as ended by its entry {index}, but the code now gives "
            f"it {len(entries)} entries; the function changed while this run was in flight",
            step_id=sid,
        )
    entry = entries[index]
    if isinstance(entry, OnInvoke):
        return index, entry, invoke.outcome(sid, event)
    return index, entry, event
