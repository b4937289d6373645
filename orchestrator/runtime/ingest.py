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
waits race-free (see db/waits.py), and the shared lock of each name that the `cancel_on`
conditions of the runs it may start watch: an event of that name that another ingest is
taking at that moment has committed before the new runs look back for it (an event received
after their trigger but ingested first cancels them too, `waits.cancels_since`), or that
ingest waits for the new conditions and finds them.

Round trips, each of which pays a wake-up of a sleeping process on both ends when events are
sparse: a batch of plain events (db/plain_ingest.py: no `if`, no flow control at creation or
claim, no `cancel_on`, no wait stored on the name) takes one, in which SQL makes the runs and
the dispatcher's claim and the COMMIT ride along. Any other batch is left by that statement
(the claim still commits) and taken again by the ingest in Python: the events, their names'
locks and the waits they match in one round trip; the writes, the claim and the COMMIT in
the next, unless a resolution or a singleton needs an answer before the COMMIT. Which of the
two goes first follows the last batch.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator import tracecontext
from orchestrator.db import events, functions, plain_ingest, runs, waits
from orchestrator.db.database import Database
from orchestrator.db.direct import Direct, pipelined, set_local
from orchestrator.db.plain_ingest import PlainTriggers
from orchestrator.db.session import notify_runs
from orchestrator.db.waits import WAIT_LOCK_CLASS
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
    plain: PlainTriggers = field(default_factory=lambda: PlainTriggers([], [], []))
    # pairs of an event name and a name that the `cancel_on` conditions of the runs it
    # starts watch (the ingest takes the latter's shared lock, db/events.py)
    watched: tuple[list[str], list[str]] = ([], [])


class ClaimAlong(Protocol):
    """The claim that rides in an ingest transaction: the dispatcher's, so that a new event's
    run starts without a claim transaction of its own (runtime/dispatcher.py `IngestClaim`).

    Called with the ingest's connection after the batch's runs were sent (it sees them; not
    the runs the batch's events wake from their waits, which are left to the NOTIFY), it sends
    the claim of due runs for this daemon and returns a function that reads their ids: the
    ingest's COMMIT may be sent in between, to share the round trip. Their leases commit or
    roll back with the ingest, and whatever it raises rolls the batch back. It keeps the
    claimed runs itself: they may be handed to workers only once the ingest has committed,
    which only the caller of `Ingester.tick` knows.
    """

    def __call__(self, conn: Any) -> Callable[[], set[str]]: ...


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
        # whether the next batch is tried in SQL first (db/plain_ingest.py): until one is not
        # plain, and again once the Python ingest takes one that was
        self._plain_first = True

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
            plain = _plain_triggers(subs, watches, policies)
            watched = _watched_names(subs, watches)
            self._registry = Registry(triggers, watches, policies, plain, watched)
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
        if self._plain_first:
            taken = self._ingest_plain(conn, registry, then)
            if taken is not None:
                return taken
        return self._ingest_python(conn, registry, then)

    def _ingest_plain(self, conn: Any, registry: Registry, then: ClaimAlong | None) -> int | None:
        """One round trip: the events, their names' locks, their runs made in SQL, the claim,
        the COMMIT. Returns how many events it took, or None if the batch was not plain (then
        only the claim was made, of runs due before)."""
        with pipelined(conn) as tx:
            # all of it with the connection's settings (the claim's, db/runs.py): a setting
            # changed in the transaction is one more statement on this path
            taking = self._take(conn, registry)
            making = plain_ingest.ingest_sent(conn, registry.plain, max_bytes=self.max_event_bytes)
            claiming = then(conn) if then is not None else set
            plain_ingest.notify_if_queued(conn)
            tx.commit()
            pending, made = taking(), making()
            claiming()
        if pending and made is None:
            self._plain_first = False
            return None
        if made:
            self.log.debug("events ingested", events=len(pending), runs=made)
        return len(pending)

    def _take(self, conn: Any, registry: Registry) -> Callable[[], list[events.PendingEvent]]:
        return events.claim_pending_sent(
            conn,
            self.batch_size,
            max_bytes=self.max_event_bytes,
            lock_class=WAIT_LOCK_CLASS,
            watched=registry.watched,
        )

    def _ingest_python(self, conn: Any, registry: Registry, then: ClaimAlong | None) -> int:
        # Pipelined: statements that need no answer share a round trip with the next one
        # that does. The common case (no wait or cancellation matched, no singleton) takes two:
        # the events, their names' locks and the waits they match; then everything else with
        # the COMMIT.
        with pipelined(conn) as tx:
            taking = self._take(conn, registry)
            # the connection's settings pin the claim's plan; the other statements plan freely
            set_local(conn, runs.PLANNER_DEFAULTS)
            finding = waits.candidates_pending(conn, max_bytes=self.max_event_bytes)
            pending = taking()
            if not pending:
                return 0
            accepted = [ev for ev in pending if self._acceptable(conn, ev)]
            payloads = [events.event_payload(ev.id, ev.name, ev.data, ev.ts) for ev in accepted]
            proposed = [
                (run, Source(ev.id, ev.seq, ev.received_at, payload))
                for ev, payload in zip(accepted, payloads, strict=True)
                for run in _runs_for(ev, payload, registry)
            ]
            event_ids = [ev.id for ev in accepted]
            events.mark_ingested(conn, event_ids)
            admitted = admit(conn, proposed, registry.policies)
            replaced = runs.cancel(conn, admitted.replaced, reason=_REPLACED)
            creating = runs.create_many_sent(conn, admitted.runs, registry.watches)
            positions = {ev.seq: i for i, ev in enumerate(accepted)}
            found = finding(positions)
            self._plain_first = not found and _plain(pending, accepted, registry.plain)
            if _watched(admitted.runs, registry.watches, {ev.name for ev in accepted}):
                # a new run's cancel_on condition an event of this batch may meet: look again,
                # after the runs are made (their conditions are waits the lookup finds)
                found = waits.candidates_pending(conn, max_bytes=self.max_event_bytes)(positions)
            # a condition an event ingested before it meets (see waits.cancels_since)
            late = _late_cancels(conn, admitted.runs, registry.watches, event_ids)
            # The claim sees the runs just made, not those the waits below wake (they are
            # left to the NOTIFY, like any run not claimed).
            claiming = self._claim_along(conn, then) if admitted.runs else set
            resolutions, cancels = _decide(found, payloads)
            if not resolutions and not cancels and not late and not admitted.may_refuse():
                # nothing below depends on an answer: the COMMIT goes with the writes
                if admitted.runs:
                    runs.notify_if_queued(conn, event_ids)
                tx.commit()
                created, claimed = creating(), claiming()
                woken: list[str] = []
                cancelled = replaced
            else:
                created, claimed = creating(), claiming()
                runs.create_many(conn, admitted.refused(created))
                resolved = waits.resolve(conn, resolutions)
                woken = resolved.woken
                cancels += [run for run in met(late) if run not in cancels]
                cancelled = replaced + runs.cancel(
                    conn, cancels, reason="cancelled by a cancel_on event"
                )
                if resolved.losers:
                    runs.cancel(conn, resolved.losers, reason=waits.LOST_RACE)
                if not claimed.issuperset(set(created) | set(woken)):
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

    @staticmethod
    def _claim_along(conn: Any, then: ClaimAlong | None) -> Callable[[], set[str]]:
        if then is None:
            return set
        set_local(conn, runs.CLAIM_SETTINGS)
        claiming = then(conn)
        set_local(conn, runs.PLANNER_DEFAULTS)
        return claiming

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


def _plain_triggers(
    subs: dict[str, list[tuple[str, str | None]]],
    watches: list[runs.CancelWatch],
    policies: dict[str, FlowPolicy],
) -> PlainTriggers:
    """The triggers the ingest in SQL serves (db/plain_ingest.py), and the names it leaves
    to the ingest in Python."""
    watched = {w.function_id for w in watches}
    pairs: list[tuple[str, str]] = []
    others = [FAILED_EVENT_NAME]
    for name, entries in subs.items():
        fids = list(dict.fromkeys(fid for fid, _ in entries))
        if any(src is not None for _, src in entries) or not all(
            fid not in watched and _plain_policy(policies.get(fid)) for fid in fids
        ):
            others.append(name)
        else:
            pairs.extend((name, fid) for fid in fids)
    return PlainTriggers([n for n, _ in pairs], [f for _, f in pairs], others)


def _plain_policy(policy: FlowPolicy | None) -> bool:
    """No flow control that acts when a run is made or claimed (timeouts act later)."""
    if policy is None:
        return True
    return not (policy.claims or policy.rate_limit or policy.idempotency or policy.singleton)


def _plain(
    pending: list[events.PendingEvent],
    accepted: list[events.PendingEvent],
    plain: PlainTriggers,
) -> bool:
    """Whether the ingest in SQL would have taken this batch (its waits aside)."""
    return len(accepted) == len(pending) and not {ev.name for ev in pending} & set(plain.others)


def _watched_names(
    subs: dict[str, list[tuple[str, str | None]]], watches: list[runs.CancelWatch]
) -> tuple[list[str], list[str]]:
    """Each event name paired with every name the `cancel_on` conditions of the functions it
    triggers watch."""
    by_function: dict[str, set[str]] = {}
    for w in watches:
        by_function.setdefault(w.function_id, set()).add(w.event_name)
    pairs = sorted(
        {
            (name, watched)
            for name, entries in subs.items()
            for fid, _ in entries
            for watched in by_function.get(fid, ())
        }
    )
    return [name for name, _ in pairs], [watched for _, watched in pairs]


def _late_cancels(
    conn: Any, made: list[runs.NewRun], watches: list[runs.CancelWatch], event_ids: list[str]
) -> Callable[[], list[waits.LateCancel]] | None:
    """Sends the look back of new runs' `cancel_on` conditions, if any run has one."""
    fids = {w.function_id for w in watches}
    if not any(run.function_id in fids for run in made):
        return None
    return waits.cancels_since(conn, event_ids)


def met(late: Callable[[], list[waits.LateCancel]] | None) -> list[str]:
    """The runs whose `cancel_on` condition an event the look back found meets (its `if`
    expression evaluated here); also the cron scheduler's (runtime/cron.py)."""
    met: list[str] = []
    for found in late() if late is not None else []:
        if met and met[-1] == found.run_id:
            continue
        if found.expression is not None:
            expression = _expression(found.expression, WAIT_VARIABLES)
            variables = {"event": found.trigger or {}, "async": found.event}
            if expression is None or not expression.matches(variables):
                continue
        met.append(found.run_id)
    return met


def _watched(made: list[runs.NewRun], watches: list[runs.CancelWatch], names: set[str]) -> bool:
    """Whether a run about to be made has a cancel_on condition on one of these names."""
    fids = {w.function_id for w in watches if w.event_name in names}
    return any(run.function_id in fids for run in made)


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
