"""Ingest events: start the functions they trigger, resolve the waits they match, cancel the
runs they cancel.

Events are locked with SKIP LOCKED and, in one transaction with them being marked ingested:

1. a run is created for every function with a trigger on the event's name whose `if`
   expression holds (exactly once: the `(function_id, idempotency_key)` unique index backs
   that up), with the function's `cancel_on` conditions, and with what its flow control
   needs to claim it (priority, concurrency and throttle keys); idempotency, rate limits,
   singletons, debouncing and batching decide first whether and how (runtime/admission.py);
2. the waits the event matches are found by index (db/waits.py), their expressions evaluated
   here, and each wait is resolved by the first event that matches it; one event may resolve
   many waits. A `wait_for_any` step is resolved once, by the first event that matches one
   of its entries (the lowest entry if one event matches several), and the runs its other
   entries invoked are cancelled;
3. runs whose `cancel_on` condition the event matches are cancelled.

The ingest holds the exclusive advisory lock of each event name in its batch, which makes
waits race-free (see db/waits.py).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator import tracecontext
from orchestrator.db import events, functions, runs, waits
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct, set_local
from orchestrator.db.session import notify_runs
from orchestrator.expressions import Expression, cached
from orchestrator.flow import FlowPolicy, RunKeys
from orchestrator.functions import FAILED_EVENT_NAME, TRIGGER_VARIABLES, WAIT_VARIABLES
from orchestrator.runtime.admission import Source, admit

_SUBSCRIPTIONS_TTL = 2.0
_ENGINE_PREFIX = "orchestrator/"  # the engine's own events are not held to max_event_bytes
_REPLACED = "replaced by a newer run of the same singleton key"


@dataclass
class Registry:
    """What the ingest needs to know of every registered function, refreshed every few
    seconds: triggers by event name (with compiled `if` expressions) and `cancel_on`s."""

    triggers: dict[str, list[tuple[str, Expression | None]]] = field(default_factory=dict)
    watches: list[runs.CancelWatch] = field(default_factory=list)
    policies: dict[str, FlowPolicy] = field(default_factory=dict)


class ClaimAlong(Protocol):
    """The claim that rides in an ingest transaction: the dispatcher's, so that a new event's
    run starts without a claim transaction of its own (runtime/dispatcher.py `IngestClaim`).

    Called with the ingest's connection, in the round trip that creates the batch's runs (it
    sees them; not the runs the batch's events wake from their waits, which are left to the
    NOTIFY), it claims due runs for this daemon and returns their ids; their leases commit or
    roll back with the ingest, and whatever it raises rolls the batch back. It keeps the
    claimed runs itself: they may be handed to workers only once the ingest has committed,
    which only the caller of `Ingester.tick` knows.
    """

    def __call__(self, conn: Any) -> set[str]: ...


class Ingester:
    def __init__(
        self, db: Database, direct: Direct, *, batch_size: int, max_event_bytes: int, log: Any
    ) -> None:
        self.db = db
        self.direct = direct  # the ingest itself runs on the daemon's direct connection
        self.batch_size = batch_size
        self.max_event_bytes = max_event_bytes
        self.log = log
        self._registry = Registry()
        self._registry_at = -_SUBSCRIPTIONS_TTL

    def registry(self) -> Registry:
        if time.monotonic() - self._registry_at > _SUBSCRIPTIONS_TTL:
            with self.db.transaction() as conn:
                subs = functions.event_subscriptions(conn)
                watches = functions.cancel_watches(conn)
                options = functions.options(conn)
            triggers: dict[str, list[tuple[str, Expression | None]]] = {}
            for name, entries in subs.items():
                for fid, src in entries:
                    expression = _expression(src, TRIGGER_VARIABLES)
                    if src is not None and expression is None:  # edited by hand, broken
                        self.log.error("trigger expression does not compile", function_id=fid)
                        continue
                    triggers.setdefault(name, []).append((fid, expression))
            policies = {fid: FlowPolicy.from_options(o) for fid, o in options.items()}
            self._registry = Registry(triggers, watches, policies)
            self._registry_at = time.monotonic()
        return self._registry

    def invalidate(self) -> None:
        self._registry_at = -_SUBSCRIPTIONS_TTL

    def tick(self, *, then: ClaimAlong | None = None) -> int:
        """Ingest one batch; returns how many events it took (a full batch means: call again).

        `then(conn)`, if given, runs inside the ingest transaction after the runs were
        created and woken (see `ClaimAlong`). Other daemons are woken (NOTIFY) only if a
        created or woken run was left for them.
        """
        registry = self.registry()
        return self.direct.run(lambda conn: self._ingest(conn, registry, then), retry_for=0)

    def _ingest(self, conn: Any, registry: Registry, then: ClaimAlong | None) -> int:
        # Pipelined: statements that need no answer share a round trip with the next one
        # that does.
        with conn.pipeline(), conn.transaction():
            pending = events.claim_pending(conn, self.batch_size, max_bytes=self.max_event_bytes)
            if not pending:
                return 0
            # the connection's settings pin the claim's plan; the other statements plan freely
            set_local(conn, runs.PLANNER_DEFAULTS)
            accepted = [ev for ev in pending if self._acceptable(conn, ev)]
            waits.lock_names(conn, sorted({ev.name for ev in accepted}), shared=False)
            payloads = [events.event_payload(ev.id, ev.name, ev.data, ev.ts) for ev in accepted]
            proposed = [
                (run, Source(ev.id, ev.seq, ev.received_at, payload))
                for ev, payload in zip(accepted, payloads, strict=True)
                for run in _runs_for(ev, payload, registry)
            ]
            events.mark_ingested(conn, [ev.id for ev in accepted])
            admitted = admit(conn, proposed, registry.policies)
            replaced = runs.cancel(conn, admitted.replaced, reason=_REPLACED)
            creating = runs.create_many_sent(conn, admitted.runs, registry.watches)
            finding = waits.candidates(
                conn,
                [ev.name for ev in accepted],
                [ev.data for ev in accepted],
                [ev.received_at for ev in accepted],
                [ev.id for ev in accepted],
            )
            # The claim goes in the same round trip: it sees the runs just made, not those
            # the waits below wake (they are left to the NOTIFY, like any run not claimed).
            claimed: set[str] = set()
            if admitted.runs and then is not None:
                set_local(conn, runs.CLAIM_SETTINGS)
                claimed = then(conn)  # its fetch sends everything above at once
                set_local(conn, runs.PLANNER_DEFAULTS)
            created, found = creating(), finding()
            runs.create_many(conn, admitted.refused(created))
            resolutions, cancels = _decide(found, payloads)
            resolved = waits.resolve(conn, resolutions)
            woken = resolved.woken
            cancelled = replaced + runs.cancel(
                conn, cancels, reason="cancelled by a cancel_on event"
            )
            if resolved.losers:
                runs.cancel(conn, resolved.losers, reason=waits.LOST_RACE)
            due = set(created) | set(woken)
            if not claimed.issuperset(due):
                notify_runs(conn)  # sent at commit
        if created or woken or cancelled or admitted.buffered:
            self.log.debug(
                "events ingested",
                events=len(pending),
                runs=len(created),
                buffered=admitted.buffered,
                waits_resolved=len(woken),
                runs_cancelled=len(cancelled),
            )
        return len(pending)

    def _acceptable(self, conn: Any, ev: events.PendingEvent) -> bool:
        if ev.size <= self.max_event_bytes or ev.name.startswith(_ENGINE_PREFIX):
            return True
        reason = (
            f"event data is {ev.size} bytes, over max_event_bytes "
            f"({self.max_event_bytes}); nothing was started"
        )
        events.park(conn, ev.id, reason)
        self.log.warning("event parked", event_id=ev.id, size=ev.size)
        return False


def _runs_for(
    ev: events.PendingEvent, payload: dict[str, Any], registry: Registry
) -> list[runs.NewRun]:
    """A run of every function with a trigger that this event satisfies, once each."""
    parent = _failed_run(ev) if ev.name == FAILED_EVENT_NAME else None
    trace = tracecontext.encode(ev.trace_context) if isinstance(ev.trace_context, dict) else None
    started: dict[str, runs.NewRun] = {}
    for fid, expression in registry.triggers.get(ev.name, ()):
        if fid in started or (
            expression is not None and not expression.matches({"event": payload})
        ):
            continue
        policy = registry.policies.get(fid)
        keys = policy.run_keys(payload) if policy is not None and policy.claims else RunKeys()
        started[fid] = runs.NewRun(
            fid,
            [payload],
            event_id=ev.id,
            idempotency_key=f"event:{ev.id}",
            parent_run_id=parent,
            since=ev.received_at,
            trace_context=trace,
            **keys.fields(),
        )
    return list(started.values())


def _failed_run(ev: events.PendingEvent) -> str | None:
    """The failed run an `orchestrator/function.failed` event is about: the parent of the
    on_failure handler's run."""
    value = (ev.data or {}).get("run_id")
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        return None


def _decide(
    found: list[waits.Candidate], payloads: list[dict[str, Any]]
) -> tuple[list[waits.Resolution], list[str]]:
    """Which waiting steps the events resolve (each by the first event, in order, that
    satisfies the expression of one of its waits: of a wait_for_any step, the lowest entry it
    satisfies) and which runs they cancel."""
    resolved: dict[tuple[str, str], waits.Resolution] = {}
    cancels: list[str] = []
    for cand in found:
        key = (cand.run_id, cand.step_id)
        if key in resolved or (cand.kind == "cancel" and cand.run_id in cancels):
            continue
        incoming = payloads[cand.event_index]
        if cand.expression is not None:
            expression = _expression(cand.expression, WAIT_VARIABLES)
            variables = {"event": cand.trigger or {}, "async": incoming}
            if expression is None or not expression.matches(variables):
                continue
        if cand.kind == "cancel":
            cancels.append(cand.run_id)
        else:
            resolved[key] = waits.Resolution(cand.run_id, cand.step_id, incoming, cand.branch)
    return list(resolved.values()), cancels


def _expression(source: str | None, allowed: tuple[str, ...]) -> Expression | None:
    return None if source is None else cached(source, allowed)
