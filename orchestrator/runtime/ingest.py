"""Ingest events: fan each new event out to a run of every function it triggers.

Events are locked with SKIP LOCKED, runs are created and the events marked in one
transaction, so each event starts each matching function exactly once even with many
daemons; the `(function_id, idempotency_key)` unique index backs that up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from orchestrator.db import events, functions, runs
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct
from orchestrator.db.session import notify_runs

_SUBSCRIPTIONS_TTL = 2.0


class Ingester:
    def __init__(
        self, db: Database, direct: Direct, *, batch_size: int, max_event_bytes: int, log: Any
    ) -> None:
        self.db = db
        self.direct = direct  # the ingest itself runs on the daemon's direct connection
        self.batch_size = batch_size
        self.max_event_bytes = max_event_bytes
        self.log = log
        self._subs: dict[str, list[str]] = {}
        self._subs_at = -_SUBSCRIPTIONS_TTL

    def subscriptions(self) -> dict[str, list[str]]:
        """Event name → function ids, from every function registered by any daemon."""
        if time.monotonic() - self._subs_at > _SUBSCRIPTIONS_TTL:
            with self.db.transaction() as conn:
                self._subs = functions.event_subscriptions(conn)
            self._subs_at = time.monotonic()
        return self._subs

    def invalidate(self) -> None:
        self._subs_at = -_SUBSCRIPTIONS_TTL

    def tick(self, *, then: Callable[[Any], set[str]] | None = None) -> int:
        """Ingest one batch; returns how many events it took (a full batch means: call again).

        `then(conn)`, if given, runs inside the ingest transaction after the runs were
        created, so its writes commit or roll back with them: the daemon claims there, and
        returns the ids it claimed. Other daemons are woken (NOTIFY) only if a created run
        was left for them.
        """
        subs = self.subscriptions()
        return self.direct.run(lambda conn: self._ingest(conn, subs, then), retry_for=0)

    def _ingest(
        self, conn: Any, subs: dict[str, list[str]], then: Callable[[Any], set[str]] | None
    ) -> int:
        # Pipelined: the claim of pending events is one round trip, and the writes (which
        # need no answer until the runs are created) share the next.
        with conn.pipeline(), conn.transaction():
            pending = events.claim_pending(conn, self.batch_size, max_bytes=self.max_event_bytes)
            if not pending:
                return 0
            new_runs: list[runs.NewRun] = []
            accepted: list[str] = []
            for ev in pending:
                if ev.size > self.max_event_bytes:
                    reason = (
                        f"event data is {ev.size} bytes, over max_event_bytes "
                        f"({self.max_event_bytes}); nothing was started"
                    )
                    events.park(conn, ev.id, reason)
                    self.log.warning("event parked", event_id=ev.id, size=ev.size)
                    continue
                accepted.append(ev.id)
                payload = {"id": ev.id, "name": ev.name, "data": ev.data, "ts": ev.ts.isoformat()}
                new_runs.extend(
                    runs.NewRun(fid, [payload], event_id=ev.id, idempotency_key=f"event:{ev.id}")
                    for fid in subs.get(ev.name, ())
                )
            events.mark_ingested(conn, accepted)
            created = runs.create_many(conn, new_runs)
            claimed = then(conn) if created and then is not None else set()
            if not claimed.issuperset(created):
                notify_runs(conn)  # sent at commit
        if created:
            self.log.debug("events ingested", events=len(pending), runs=len(created))
        return len(pending)
