"""What an operator does from the dashboard or the API, each recorded in `ui_actions` with
who did it: cancel, replay, resume, fork and send. Pages and API both call these.

They go through the code paths the command line uses (`runs.cancel`, `Recovery`,
`events.insert`). Cancel and send record the action in their own transaction; replay,
resume and fork run in `Recovery`'s transactions, so their record follows in a second one
(a crash between the two loses the record, never the action).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from orchestrator.cli_lookup import find_run
from orchestrator.codec import validate_event
from orchestrator.db import events, runs, ui
from orchestrator.recovery import Recovery

if TYPE_CHECKING:
    from orchestrator.db.database import Database
    from orchestrator.ui.deps import Principal


@dataclass(frozen=True)
class Cancelled:
    id: str
    status: str
    changed: bool  # False: it had finished already
    children_cancelled: int


def _via(p: Principal) -> str:
    # ui_actions.via knows session, token and cli; without authentication it is a browser
    return "token" if p.via == "token" else "session"


class Operations:
    def __init__(self, db: Database, *, max_event_bytes: int = 1024 * 1024) -> None:
        self.db = db
        self.recovery = Recovery(db, max_event_bytes=max_event_bytes)
        self.max_event_bytes = max_event_bytes

    def _record(self, conn: Any, p: Principal, action: str, **fields: Any) -> None:
        ui.record_action(conn, actor=p.name, via=_via(p), action=action, **fields)

    def cancel(self, principal: Principal, run_id: str, reason: str = "") -> Cancelled:
        reason = reason or f"cancelled by {principal.name} from the dashboard"

        def write(conn: Any) -> Cancelled:
            run = find_run(conn, run_id)
            changed = runs.cancel(conn, [run.id], reason=reason, children=True)
            mine = next((c for c in changed if c.id == run.id), None)
            children = sum(c.id != run.id for c in changed)
            if mine is not None:
                detail = {"reason": reason, "was": mine.was, "children_cancelled": children}
                self._record(conn, principal, "cancel", run_id=run.id, detail=detail)
            status = mine.status if mine is not None else run.status
            return Cancelled(run.id, status, mine is not None, children)

        return self.db.run(write)

    def replay(self, principal: Principal, run_id: str) -> str:
        """A new run from the same event(s); returns its id."""
        full = self._full_id(run_id)
        new_id = self.recovery.replay(full)
        self._record_after(principal, "replay", run_id=full, new_run_id=new_id)
        return new_id

    def resume(self, principal: Principal, run_id: str) -> str:
        full = self._full_id(run_id)
        self.recovery.resume(full)
        self._record_after(principal, "resume", run_id=full)
        return full

    def fork(
        self, principal: Principal, run_id: str, from_step: str, data: dict[str, Any] | None
    ) -> str:
        """A new run reusing the steps before `from_step`, with `data` as its event data
        (None: the original's); returns its id."""
        full = self._full_id(run_id)
        new_id = self.recovery.fork(full, from_step, data)
        detail = {"from_step": from_step, "data_edited": data is not None}
        self._record_after(principal, "fork", run_id=full, new_run_id=new_id, detail=detail)
        return new_id

    def send(
        self,
        principal: Principal,
        name: str,
        data: Any,
        event_id: str | None = None,
        *,
        trace_context: str | None = None,
    ) -> tuple[str, bool]:
        """Store an event as `app.send` does; returns (its id, whether it is new).
        `trace_context`: the request's (orchestrator/tracecontext.py `from_headers`)."""
        text = validate_event(name, {} if data is None else data, event_id, self.max_event_bytes)

        def write(conn: Any) -> tuple[str, bool]:
            new_id, created = events.insert(
                conn, name, text, event_id=event_id, ts=None, trace_context=trace_context
            )
            if created:
                detail = {"name": name}
                self._record(conn, principal, "send", event_id=new_id, detail=detail)
            return new_id, created

        return self.db.run(write)

    def _full_id(self, run_id: str) -> str:
        return self.db.run(lambda conn: find_run(conn, run_id)).id

    def _record_after(self, p: Principal, action: str, **fields: Any) -> None:
        self.db.run(lambda conn: self._record(conn, p, action, **fields))
