"""Statements on `orchestrator.runs`: create, claim under lease, suspend, finish, rescue.

Every write made on behalf of a worker is fenced: it names the `lease_token` the claim issued
and changes nothing if the token is no longer current (the run was rescued or released).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, text

from orchestrator.db import clock, outbox
from orchestrator.db.direct import Conn, driver
from orchestrator.db.finish import after_finish
from orchestrator.db.ops import Op, Query

NOW_B = clock.SQL_BINARY
NOW = clock.SQL
NOW_T = clock.SQL_TEXT

_DUE = "status IN ('queued', 'sleeping', 'waiting')"
CANCEL_CHANNEL = "orchestrator_cancels"  # NOTIFY: a running run was cancelled
_ACTIVE = "status IN ('queued', 'running', 'sleeping', 'waiting')"
# what db/finish.py reads of the runs a statement ended (`r` is the updated table's alias)
_ENDED_COLUMNS = "r.id, r.function_id, r.status, r.output, r.error, r.events, r.parent_run_id"
RUN_COLUMNS = (
    "id::text AS id, function_id, status, event_id, events, idempotency_key, "
    "parent_run_id::text AS parent_run_id, output, error, attempts, recoveries, due_at, "
    "lease_owner::text AS lease_owner, lease_expires_at, created_at, started_at, updated_at, "
    "finished_at, cancel_requested_at, origin, origin_run_id::text AS origin_run_id, resumes, "
    "state, retries"
)


@dataclass(frozen=True)
class NewRun:
    function_id: str
    events: list[dict[str, Any]]
    event_id: str | None = None
    idempotency_key: str | None = None
    parent_run_id: str | None = None
    id: str | None = None  # a deterministic id (an invoked run's); else the database's
    since: datetime | None = None  # cancel_on sees events received from then (default: now)
    priority: int = 0
    concurrency_keys: list[str] | None = None
    throttle_key: str | None = None
    singleton_key: str | None = None
    flow_key: str | None = None  # the key the function's runs take turns by (db/flow.py)
    skipped: dict[str, str] | None = None  # recorded as `skipped` with this error (flow control)
    trace_context: str | None = None  # JSON: the context its spans continue (tracecontext.py)


@dataclass(frozen=True)
class CancelWatch:
    """A function's `cancel_on` condition, as run creation records it in `waits`."""

    function_id: str
    index: int
    event_name: str
    match_path: str | None
    expression: str | None
    timeout: float | None


@dataclass(frozen=True)
class ClaimedRun:
    id: str
    function_id: str
    lease_token: str
    events: list[dict[str, Any]]
    attempts: int
    recoveries: int
    claimed_at: datetime
    created_at: datetime
    parent_run_id: str | None
    origin: str | None = None  # 'fork': it starts with steps copied from another run
    retries: int = 0  # function-level retries taken before this claim
    origin_run_id: str | None = None  # the run it replays or forks
    trace_context: dict[str, Any] | None = None  # what its spans continue (tracecontext.py)


@dataclass(frozen=True)
class RunRow:
    id: str
    function_id: str
    status: str
    event_id: str | None
    events: list[dict[str, Any]]
    idempotency_key: str | None
    parent_run_id: str | None
    output: Any
    error: Any
    attempts: int
    recoveries: int
    due_at: datetime
    lease_owner: str | None
    lease_expires_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    updated_at: datetime
    finished_at: datetime | None
    cancel_requested_at: datetime | None
    origin: str | None
    origin_run_id: str | None
    resumes: int
    state: dict[str, Any]  # what the run published with ctx.set_state
    retries: int = 0  # function-level retries taken


@dataclass(frozen=True)
class RequeuedRun:
    id: str
    function_id: str
    status: str


def cancel_match_value(events: str, path: str) -> str:
    """SQL for the value a `cancel_on` wait expects: the `path` field (`data.…`) of the
    triggering event, the first of the `events` column."""
    return (
        f"CASE WHEN {path} IS NULL THEN 'null'::jsonb "
        f"ELSE coalesce(({events} -> 0 -> 'data') #> (string_to_array({path}, '.'))[2:], "
        "'null'::jsonb) END"
    )


def insert_cancel_watches(run: str, since: str, now: str) -> str:
    """SQL inserting the `cancel_on` conditions of the runs `run` (a row alias with `id` and
    `events`) as waits from `since`, made at `now` (the SQL of the current time, db/clock.py);
    a FROM clause giving `run` and `c(n, ev, path, expr, timeout)` follows."""
    return f"""INSERT INTO orchestrator.waits
            (run_id, step_id, kind, event_name, match_path, match_value, expression, since,
             expires_at, created_at)
        SELECT {run}.id, '#cancel/' || c.n, 'cancel', c.ev, coalesce(c.path, ''),
               {cancel_match_value(f"{run}.events", "c.path")}, c.expr, {since},
               {since} + make_interval(secs => c.timeout), {now}"""


# New runs, and the cancellation conditions of their functions (`cancel_on`) as waits whose
# expected value is read from the run's triggering event.
_CREATE = f"""
    WITH made AS (
        INSERT INTO orchestrator.runs
            (id, function_id, event_id, events, idempotency_key, parent_run_id, priority,
             created_at, due_at, concurrency_keys, throttle_key, singleton_key, flow_key,
             status, error, finished_at, trace_context)
        SELECT coalesce(i::uuid, gen_random_uuid()), f, e, j::jsonb, k, p::uuid, pr,
               -- a microsecond apart, in the order given, so runs made together are FIFO
               {NOW_B} - (cardinality(%(fids)b::text[]) - n) * interval '1 microsecond',
               {NOW_B} - (cardinality(%(fids)b::text[]) - n) * interval '1 microsecond',
               CASE WHEN ck IS NULL THEN NULL ELSE ARRAY(SELECT jsonb_array_elements_text(
                   ck::jsonb)) END,
               tk, sk, fk, CASE WHEN x IS NULL THEN 'queued' ELSE 'skipped' END, x::jsonb,
               CASE WHEN x IS NULL THEN NULL ELSE {NOW_B} END, tc::jsonb
        FROM unnest(%(ids)b::text[], %(fids)b::text[], %(eids)b::text[], %(events)b::text[],
                    %(keys)b::text[], %(parents)b::text[], %(since)b::timestamptz[],
                    %(priorities)b::int[], %(ckeys)b::text[], %(tkeys)b::text[],
                    %(skeys)b::text[], %(fkeys)b::text[], %(skips)b::text[],
                    %(traces)b::text[]) WITH ORDINALITY
             AS t(i, f, e, j, k, p, s, pr, ck, tk, sk, fk, x, tc, n)
        ON CONFLICT DO NOTHING
        RETURNING id, function_id, events, idempotency_key, status
    ),
    watch AS (
        {insert_cancel_watches("m", f"coalesce(t.s, {NOW_B})", NOW_B)}
        FROM made m
        JOIN unnest(%(ids)b::text[], %(fids)b::text[], %(keys)b::text[],
                    %(since)b::timestamptz[]) AS t(i, f, k, s)
          ON t.f = m.function_id AND (t.i::uuid = m.id OR t.k = m.idempotency_key)
        JOIN unnest(%(c_fids)b::text[], %(c_ns)b::int[], %(c_events)b::text[],
                    %(c_paths)b::text[], %(c_exprs)b::text[], %(c_timeouts)b::float8[])
             AS c(fid, n, ev, path, expr, timeout) ON c.fid = m.function_id
        WHERE m.status = 'queued'
    )
    SELECT id::text FROM made
    """


# The same without cancellation conditions: most functions have none.
_CREATE_PLAIN = (
    _CREATE[: _CREATE.index("    watch AS (")].rstrip().rstrip(",")
    + """
    SELECT id::text FROM made
    """
)


def create_many(
    conn: Conn, new_runs: list[NewRun], watches: list[CancelWatch] | None = None
) -> list[str]:
    """Queue runs due now; a run whose id or (function, idempotency key) exists is skipped.
    `watches` are the `cancel_on` conditions of their functions. `conn` may be a psycopg or
    an SQLAlchemy connection."""
    return create_many_sent(conn, new_runs, watches)()


def create_many_sent(
    conn: Conn, new_runs: list[NewRun], watches: list[CancelWatch] | None = None
) -> Callable[[], list[str]]:
    """`create_many`, sent now; call the result for the ids. In pipeline mode the statement
    then shares a round trip with those sent after it."""
    if not new_runs:
        return list
    fids = {r.function_id for r in new_runs}
    watches = [w for w in watches or [] if w.function_id in fids]
    params = {
        "ids": [r.id for r in new_runs],
        "fids": [r.function_id for r in new_runs],
        "eids": [r.event_id for r in new_runs],
        "events": [json.dumps(r.events, separators=(",", ":")) for r in new_runs],
        "keys": [r.idempotency_key for r in new_runs],
        "parents": [r.parent_run_id for r in new_runs],
        "since": [r.since for r in new_runs],
        "priorities": [r.priority for r in new_runs],
        "ckeys": [_json_or_none(r.concurrency_keys) for r in new_runs],
        "tkeys": [r.throttle_key for r in new_runs],
        "skeys": [r.singleton_key for r in new_runs],
        "fkeys": [r.flow_key for r in new_runs],
        "skips": [_json_or_none(r.skipped) for r in new_runs],
        "traces": [r.trace_context for r in new_runs],
        **watch_params(watches),
        "now": clock.current(),
    }
    cursor = driver(conn).execute(_CREATE if watches else _CREATE_PLAIN, params, prepare=True)
    return lambda: [str(row[0]) for row in cursor.fetchall()]


def watch_params(watches: list[CancelWatch]) -> dict[str, list[Any]]:
    """The `c_*` arrays statements join `cancel_on` conditions from."""
    return {
        "c_fids": [w.function_id for w in watches],
        "c_ns": [w.index for w in watches],
        "c_events": [w.event_name for w in watches],
        "c_paths": [w.match_path for w in watches],
        "c_exprs": [w.expression for w in watches],
        "c_timeouts": [w.timeout for w in watches],
    }


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


# What a claim does to each run it takes, and what it returns (a `ClaimedRun`); shared with
# the claim of flow-controlled functions (db/flow.py).
CLAIM_SET = f"""
        SET status = 'running', lease_owner = %(owner)s::uuid,
            lease_token = gen_random_uuid(),
            lease_expires_at = {NOW} + make_interval(secs => %(lease)s::float8),
            attempts = r.attempts + 1, started_at = coalesce(r.started_at, {NOW}),
            updated_at = {NOW}
"""
CLAIM_RETURNING = f"""
        RETURNING r.id::text, r.function_id, r.lease_token::text, r.events, r.attempts,
                  r.recoveries, {NOW}, r.created_at, r.parent_run_id::text, r.origin,
                  r.retries, r.origin_run_id::text, r.trace_context
"""


def _claim_sql(suspects: bool) -> str:
    # A run whose worker process died while it was inside a step body (`crashes` > 0) is a
    # suspect: it runs in the quarantine process, one at a time, so a step that kills its
    # process cannot take healthy runs down with it again.
    which = "crashes > 0" if suspects else "crashes = 0"
    return f"""
        WITH picked AS MATERIALIZED (
            SELECT id FROM orchestrator.runs
            WHERE {_DUE} AND due_at <= {NOW} AND {which}
              AND function_id = ANY(%(fids)b::text[]) AND cancel_requested_at IS NULL
            ORDER BY due_at, id
            LIMIT %(limit)s
            FOR UPDATE SKIP LOCKED
        )
        UPDATE orchestrator.runs AS r {CLAIM_SET}
        FROM picked
        WHERE r.id = picked.id {CLAIM_RETURNING}
        """


_CLAIM = _claim_sql(suspects=False)
_CLAIM_SUSPECTS = _claim_sql(suspects=True)

# The claim must walk its partial index in order and stop after `limit` rows, whatever the
# planner believes. With statistics taken before a burst (an empty or mostly finished
# table), it estimates a handful of due rows and picks a bitmap scan that reads and sorts
# every due run instead: 15-18 ms a claim with 15,000 queued, where the index walk takes a
# fraction of a millisecond. The daemon's claim connection carries these settings
# (db/direct.py).
# JIT is off for the same reason: the disabled plan types carry a huge cost, which would make
# the planner compile small statements (a second and more, the first time each is planned).
CLAIM_SETTINGS = {
    "enable_bitmapscan": "off",
    "enable_sort": "off",
    "jit": "off",
    "plan_cache_mode": "auto",
}
# What the other statements of a transaction on that connection (the ingest's) plan with:
# the default plan types, and the generic plan of each prepared statement (the planner keeps
# re-planning the wait lookup, a millisecond each time, for a plan no better than the
# generic one).
PLANNER_DEFAULTS = {
    "enable_bitmapscan": "on",
    "enable_sort": "on",
    "plan_cache_mode": "force_generic_plan",
}


def claim_due(
    conn: Conn,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    function_ids: list[str],
    suspects: bool = False,
) -> list[ClaimedRun]:
    """Claim up to `limit` due runs of the given functions for `owner`, oldest due first.

    `suspects` claims only runs that were inside a step body when a worker died (for the
    quarantine process); otherwise only the others. `conn` is a direct connection (the
    claim is then its own transaction) or an SQLAlchemy one (the claim joins its
    transaction).
    """
    return claim_due_sent(
        conn,
        owner=owner,
        limit=limit,
        lease_seconds=lease_seconds,
        function_ids=function_ids,
        suspects=suspects,
    )()


def claim_due_sent(
    conn: Conn,
    *,
    owner: str,
    limit: int,
    lease_seconds: float,
    function_ids: list[str],
    suspects: bool = False,
) -> Callable[[], list[ClaimedRun]]:
    """`claim_due`, sent now; call the result for the runs. In pipeline mode the claim then
    shares a round trip with the statements sent after it (a COMMIT, say)."""
    if limit <= 0 or not function_ids:
        return list
    params = {
        "owner": owner,
        "limit": limit,
        "lease": lease_seconds,
        "fids": function_ids,
        "now": clock.current(),
    }
    stmt = _CLAIM_SUSPECTS if suspects else _CLAIM
    cursor = driver(conn).execute(stmt, params, prepare=True)
    return lambda: [ClaimedRun(*row) for row in cursor.fetchall()]


# Hint every daemon (at commit) if a run made from these events is still queued: the
# ingest's own claim did not take it. The runs of each event by `runs_event` (OFFSET 0 keeps
# the status test outside: with it inside, a plan without statistics reads every queued run
# through `runs_status_created`).
_NOTIFY_QUEUED = """
    SELECT pg_notify('orchestrator_runs', '')
    WHERE EXISTS (
        SELECT FROM unnest(%(eids)b::text[]) AS e(id)
        CROSS JOIN LATERAL (SELECT r.status FROM orchestrator.runs r
                            WHERE r.event_id = e.id OFFSET 0) made
        WHERE made.status = 'queued'
    )
    """


def notify_if_queued(conn: Conn, event_ids: list[str]) -> None:
    """Hint every daemon that runs became due if a run of these events is still queued;
    delivered when the transaction commits. Needs no answer: in pipeline mode it shares a
    round trip with what follows."""
    driver(conn).execute(_NOTIFY_QUEUED, {"eids": event_ids}, prepare=True)


def _next_due_sql(condition: str) -> str:
    return (
        f"SELECT extract(epoch FROM min(d.due_at) - {NOW_T}) "
        f"FROM unnest(CAST(:p_fids AS text[])) AS f(id) CROSS JOIN LATERAL ("
        f"SELECT due_at FROM orchestrator.runs WHERE {_DUE} AND function_id = f.id "
        f"AND {condition} ORDER BY due_at LIMIT 1) AS d"
    )


_NEXT_DUE = _next_due_sql("true")
_NEXT_FUTURE = _next_due_sql(f"due_at > {NOW_T}")


def seconds_until_next_due(
    conn: Connection, function_ids: list[str], *, future: bool = False
) -> float | None:
    """Seconds (by the database clock) until the next run of these functions is due; with
    `future`, the next that is not due yet (a flow-controlled function's due runs may be
    held back by its limits: the claim of that function says when to look again)."""
    if not function_ids:
        return None
    # One probe of `runs_function_due` per function, each stopping at its first row: a
    # min() over `function_id = ANY(...)` can read every idle run of those functions (half
    # a second a pass with a million sleeping runs).
    sql = _NEXT_FUTURE if future else _NEXT_DUE
    params = {"p_fids": function_ids, "p_now": clock.current()}
    value = conn.execute(text(sql), params).scalar()
    return None if value is None else float(value)


def renew_leases(
    conn: Connection, *, owner: str, run_ids: Collection[str], lease_seconds: float
) -> set[str]:
    """Extend the leases `owner` holds on these runs (the ones it is executing); returns the
    ids it still holds.

    Only the runs named: a run leased to `owner` in the database that it is not executing (a
    claim that committed but whose answer was lost with the connection) must not be kept
    alive by its renewals; its lease expires and a rescue requeues it.
    """
    if not run_ids:
        return set()
    rows = conn.execute(
        text(
            # rows locked in id order, like every other multi-row lock here (no deadlocks)
            f"UPDATE orchestrator.runs SET lease_expires_at = {NOW_T} + "
            "make_interval(secs => :p_lease) WHERE id IN (SELECT id FROM orchestrator.runs "
            "WHERE id = ANY(CAST(:p_ids AS uuid[])) AND status = 'running' "
            "AND lease_owner = CAST(:p_owner AS uuid) ORDER BY id FOR UPDATE) "
            "AND status = 'running' AND lease_owner = CAST(:p_owner AS uuid) "
            "RETURNING id::text"
        ),
        {
            "p_owner": owner,
            "p_ids": sorted(run_ids),
            "p_lease": lease_seconds,
            "p_now": clock.current(),
        },
    )
    return {row[0] for row in rows}


def _requeue_sql(
    where: str, *, count_recovery: bool, crashed: bool = False, sweep: bool = False
) -> str:
    # A sweep (rescuing expired or dead leases) skips rows another transaction holds; the
    # next sweep gets them. A targeted hand-back (these leases, now) must not skip a row that
    # is briefly locked (a lease renewal, say), or the run would stay 'running' until its
    # lease expired: it waits for the lock instead.
    lock = "FOR UPDATE SKIP LOCKED" if sweep else "FOR UPDATE"
    bump = "r.recoveries + 1" if count_recovery else "r.recoveries"
    capped = f"({bump}) > :p_cap" if count_recovery else "false"
    # An interrupted run goes back to the head of the line (see `line` below), so work
    # already under way finishes before other work starts, and another daemon takes it over at
    # its next free thread however long the backlog. A run whose worker process died under it
    # again backs off (1 s, 2 s, 4 s, … up to 30 s) so that a crash-looping run cannot take
    # down one worker process after another. A sweep never backs off: the run's daemon died
    # or stalled, not its worker, and the sweep already waited out `dead_daemon_after` or the
    # lease; a delay would put the run behind every run due meanwhile.
    head = f"least({NOW_T}, r.created_at - line.shift)"
    due = (
        f"CASE WHEN ({bump}) <= 1 THEN {head} "
        f"ELSE {NOW_T} + make_interval(secs => least(30, power(2, ({bump}) - 2))) END"
        if count_recovery and not sweep
        else head
    )
    return f"""
    WITH picked AS MATERIALIZED (
        SELECT id, created_at FROM orchestrator.runs WHERE status = 'running' AND ({where})
        ORDER BY id LIMIT :p_limit {lock}
    ),
    line AS (
        -- How far back to move the picked runs' due times from their created_at so that the
        -- last made of them is due just before the first run in line. Their created_at alone
        -- is not enough: a run made later can be due earlier (runs are due from their
        -- transaction's start, and a concurrent ingest may commit after this run was
        -- claimed). All move by the same amount, so they keep their order.
        SELECT greatest(interval '0', (SELECT max(created_at) FROM picked) - min(due_at)
                        + interval '1 microsecond') AS shift
        FROM orchestrator.runs WHERE {_DUE}
    ),
    changed AS (
    UPDATE orchestrator.runs AS r
    SET recoveries = {bump},{" crashes = r.crashes + 1," if crashed else ""}
        status = CASE WHEN {capped} THEN 'failed' ELSE 'queued' END,
        error = CASE WHEN {capped} THEN jsonb_build_object(
            'type', 'RecoveryCapError', 'code', 'recovery_cap',
            'message', format('run was interrupted %s times (worker crash, kill or lost lease); '
                              'max_recoveries is %s', {bump}, :p_cap))
            ELSE r.error END,
        finished_at = CASE WHEN {capped} THEN {NOW_T} ELSE NULL END,
        due_at = {due},
        lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
        updated_at = {NOW_T}
    FROM picked, line
    WHERE r.id = picked.id
    RETURNING {_ENDED_COLUMNS}
    )
    {after_finish("changed", NOW_T)}
    SELECT id::text, function_id, status FROM changed
    """


_RESCUE_EXPIRED = text(_requeue_sql(f"lease_expires_at < {NOW_T}", count_recovery=True, sweep=True))
_RESCUE_OWNER = text(
    _requeue_sql("lease_owner = CAST(:p_owner AS uuid)", count_recovery=True, sweep=True)
)
_LEASE_PAIRS = (
    "(id, lease_token) IN (SELECT * FROM unnest(CAST(:p_ids AS uuid[]), CAST(:p_tokens AS uuid[])))"
)
_REQUEUE_CRASHED = text(_requeue_sql(_LEASE_PAIRS, count_recovery=True, crashed=True))
_REQUEUE_INTERRUPTED = text(_requeue_sql(_LEASE_PAIRS, count_recovery=True))
_RELEASE = text(_requeue_sql(_LEASE_PAIRS, count_recovery=False))


def rescue_expired(conn: Connection, *, max_recoveries: int, limit: int = 500) -> list[RequeuedRun]:
    """Requeue runs whose lease expired (their daemon stalled or died)."""
    params = {"p_cap": max_recoveries, "p_limit": limit, "p_now": clock.current()}
    return [RequeuedRun(*row) for row in conn.execute(_RESCUE_EXPIRED, params)]


def rescue_owner(
    conn: Connection, *, owner: str, max_recoveries: int, limit: int = 5000
) -> list[RequeuedRun]:
    """Requeue every run leased by a daemon known to be dead, without waiting for expiry."""
    params = {
        "p_owner": owner,
        "p_cap": max_recoveries,
        "p_limit": limit,
        "p_now": clock.current(),
    }
    return [RequeuedRun(*row) for row in conn.execute(_RESCUE_OWNER, params)]


def requeue_crashed(
    conn: Connection, leases: list[tuple[str, str]], *, max_recoveries: int
) -> list[RequeuedRun]:
    """Requeue runs whose worker process died inside their step body: a recovery and a crash
    each (a crashed run is a suspect, see `claim_due`)."""
    return _by_leases(conn, _REQUEUE_CRASHED, leases, max_recoveries)


def requeue_interrupted(
    conn: Connection, leases: list[tuple[str, str]], *, max_recoveries: int
) -> list[RequeuedRun]:
    """Requeue runs interrupted through no fault of their own that can be pinned down: a
    recovery each, no crash."""
    return _by_leases(conn, _REQUEUE_INTERRUPTED, leases, max_recoveries)


def release(conn: Connection, leases: list[tuple[str, str]]) -> list[RequeuedRun]:
    """Give runs back to the queue on shutdown; not counted as a recovery."""
    return _by_leases(conn, _RELEASE, leases, 0)


def _by_leases(
    conn: Connection, stmt: Any, leases: list[tuple[str, str]], cap: int
) -> list[RequeuedRun]:
    if not leases:
        return []
    params = {
        "p_ids": [run_id for run_id, _ in leases],
        "p_tokens": [token for _, token in leases],
        "p_cap": cap,
        "p_limit": len(leases),
        "p_now": clock.current(),
    }
    return [RequeuedRun(*row) for row in conn.execute(stmt, params)]


def suspend(
    conn: Connection,
    run_id: str,
    token: str,
    *,
    status: str,
    delay_seconds: float = 0.0,
    until: datetime | None = None,
    state_json: str | None = None,
    retry_error: str | None = None,
) -> datetime | None:
    """Release the lease; the run is due at `until`, or `delay_seconds` from the database's now.
    `state_json` (an object, or None) is merged into the run's state. With `retry_error` (the
    failed attempt's error), it is a function-level retry: `retries` goes up by one and
    `error` holds that error until the run ends.

    Returns the new due time, or None if the lease was lost. Locks the run row, so the caller
    may write step rows in the same transaction without a further fence.
    """
    return conn.execute(
        text(
            "UPDATE orchestrator.runs SET status = :p_status, "
            "due_at = coalesce(CAST(:p_until AS timestamptz), "
            f"                  {NOW_T} + make_interval(secs => :p_delay)), "
            f"updated_at = {NOW_T}, state = coalesce(state || CAST(:p_state AS jsonb), state), "
            "retries = retries + CASE WHEN CAST(:p_error AS jsonb) IS NULL THEN 0 ELSE 1 END, "
            "error = coalesce(CAST(:p_error AS jsonb), error), "
            "lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL "
            "WHERE id = CAST(:p_id AS uuid) AND lease_token = CAST(:p_token AS uuid) "
            "AND status = 'running' RETURNING due_at"
        ),
        {
            "p_id": run_id,
            "p_token": token,
            "p_status": status,
            "p_delay": delay_seconds,
            "p_until": until,
            "p_state": state_json,
            "p_error": retry_error,
            "p_now": clock.current(),
        },
    ).scalar()


def hold(conn: Connection, run_id: str, token: str) -> str | None:
    """Lock the run row if the lease token still holds; returns its status, else None."""
    status: str | None = conn.execute(
        text(
            "SELECT status FROM orchestrator.runs WHERE id = CAST(:p_id AS uuid) "
            "AND lease_token = CAST(:p_token AS uuid) AND status = 'running' FOR NO KEY UPDATE"
        ),
        {"p_id": run_id, "p_token": token},
    ).scalar()
    return status


def merge_state(conn: Connection, run_id: str, state_json: str | None) -> None:
    """Merge the keys of `state_json` (an object; None: nothing) into the run's state, when
    this transaction already holds the run row (after `hold`)."""
    if state_json is None:
        return
    conn.execute(
        text(
            "UPDATE orchestrator.runs SET state = state || CAST(:p_state AS jsonb) "
            "WHERE id = CAST(:p_id AS uuid)"
        ),
        {"p_id": run_id, "p_state": state_json},
    )


def uuid_bounds(prefix: str) -> tuple[str, str] | None:
    """A run id or an unambiguous hex prefix of one → the inclusive uuid range it covers."""
    hexed = prefix.lower().replace("-", "")
    if not 1 <= len(hexed) <= 32 or any(c not in "0123456789abcdef" for c in hexed):
        return None

    def fmt(h: str) -> str:
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"

    return fmt(hexed.ljust(32, "0")), fmt(hexed.ljust(32, "f"))


def get(conn: Conn, run_id: str) -> RunRow | None:
    """The run with this id, or with this unambiguous id prefix (at least 1 hex digit)."""
    return outbox.run(get_op(run_id), conn)


def ids_with_prefix(conn: Connection, prefix: str, limit: int) -> list[str]:
    """The ids (at most `limit`, in order) of the runs whose id starts with the hex `prefix`;
    says why `get` found nothing: no such run, or a prefix shared by several."""
    bounds = uuid_bounds(prefix)
    if bounds is None:
        return []
    return list(
        conn.execute(
            text(
                "SELECT id::text FROM orchestrator.runs WHERE id BETWEEN CAST(:p_low AS uuid) "
                "AND CAST(:p_high AS uuid) ORDER BY id LIMIT :p_limit"
            ),
            {"p_low": bounds[0], "p_high": bounds[1], "p_limit": limit},
        ).scalars()
    )


def list_runs(
    conn: Connection,
    *,
    status: str | None = None,
    function_id: str | None = None,
    limit: int = 50,
) -> list[RunRow]:
    return [
        RunRow(*row)
        for row in conn.execute(
            text(
                f"SELECT {RUN_COLUMNS} FROM orchestrator.runs "
                "WHERE (CAST(:p_status AS text) IS NULL OR status = :p_status) "
                "AND (CAST(:p_fid AS text) IS NULL OR function_id = :p_fid) "
                "ORDER BY created_at DESC, id DESC LIMIT :p_limit"
            ),
            {"p_status": status, "p_fid": function_id, "p_limit": limit},
        )
    ]


_UNKNOWN_FUNCTIONS = text(
    """
    WITH RECURSIVE ids AS (
        (SELECT function_id FROM orchestrator.runs ORDER BY function_id LIMIT 1)
        UNION ALL
        SELECT (SELECT r.function_id FROM orchestrator.runs r
                WHERE r.function_id > ids.function_id ORDER BY r.function_id LIMIT 1)
        FROM ids WHERE ids.function_id IS NOT NULL
    )
    SELECT function_id FROM ids
    WHERE function_id IS NOT NULL
      AND NOT EXISTS (SELECT 1 FROM orchestrator.functions f WHERE f.id = ids.function_id)
    """
)

_FAIL_UNKNOWN = text(
    f"""
    WITH changed AS (
    UPDATE orchestrator.runs AS r
    SET status = 'failed', finished_at = {NOW_T}, updated_at = {NOW_T},
        error = jsonb_build_object(
            'type', 'UnknownFunctionError', 'code', 'unknown_function',
            'message', format('function %L is not registered by any daemon (no row in '
                              'orchestrator.functions); nothing can run it', function_id))
    WHERE function_id = ANY(CAST(:p_ids AS text[])) AND {_DUE}
    RETURNING {_ENDED_COLUMNS}
    )
    {after_finish("changed", NOW_T)}
    SELECT id::text, function_id, status FROM changed
    """
)


def fail_unknown_functions(conn: Connection) -> list[RequeuedRun]:
    """Fail waiting runs whose function no daemon ever registered (rows made by hand).

    Finds the distinct function ids with a skip scan of `runs_function_created`, so the cost
    grows with the number of functions, not of runs.
    """
    unknown = [row[0] for row in conn.execute(_UNKNOWN_FUNCTIONS)]
    if not unknown:
        return []
    params = {"p_ids": unknown, "p_now": clock.current()}
    return [RequeuedRun(*row) for row in conn.execute(_FAIL_UNKNOWN, params)]


# Cancellation: the runs and, for those given with `children`, their unfinished descendants
# (invoked runs). Every one ends `cancelled` at once, a running one too: its lease is revoked
# (owner and token cleared), so anything its execution still writes is refused by the fence,
# and it leaves `running`, so its flow-control slots are free at once. The NOTIFY tells the
# daemons: theirs stops executing it (runtime/cancellations.py), and any may claim a run that
# waited for its slot.
_CANCEL = f"""
    WITH RECURSIVE tree(id, deep) AS (
        SELECT * FROM unnest(%(ids)s::uuid[], %(children)s::bool[])
        UNION
        SELECT c.id, true FROM orchestrator.runs c JOIN tree t ON c.parent_run_id = t.id
        WHERE t.deep AND c.{_ACTIVE}
    ),
    given AS (
        SELECT id, bool_or(deep) AS deep FROM unnest(%(ids)s::uuid[], %(children)s::bool[])
            AS g(id, deep) GROUP BY id
    ),
    picked AS MATERIALIZED (
        SELECT r.id, r.status AS was FROM orchestrator.runs r
        WHERE r.id IN (SELECT id FROM tree) AND r.{_ACTIVE}
        ORDER BY r.id
        FOR UPDATE
    ),
    changed AS (
        UPDATE orchestrator.runs r
        SET cancel_requested_at = coalesce(r.cancel_requested_at, {NOW}),
            cancel_children = coalesce((SELECT g.deep FROM given g WHERE g.id = r.id), true),
            status = 'cancelled', finished_at = {NOW},
            lease_owner = NULL, lease_token = NULL, lease_expires_at = NULL,
            -- the first reason given is kept
            error = CASE WHEN r.error ->> 'code' = 'cancelled' THEN r.error ELSE
                jsonb_build_object('type', 'RunCancelledError', 'code', 'cancelled',
                                   'message', %(reason)s::text) END,
            updated_at = {NOW}
        FROM picked p WHERE r.id = p.id
        RETURNING {_ENDED_COLUMNS}, p.was
    )
    {after_finish("changed", NOW)}
    SELECT id::text, function_id, status, was FROM changed
    """
_NOTIFY_CANCELLED = f"SELECT pg_notify('{CANCEL_CHANNEL}', '')"

# Cancellations requested by hand (`UPDATE runs SET cancel_requested_at = now()`, and
# `cancel_children = false` to leave invoked runs running): applied as above, by the
# Cancellations service of any daemon, through the partial index `runs_cancel_requested`.
_REQUESTED = f"""
    SELECT id::text, cancel_children FROM orchestrator.runs
    WHERE cancel_requested_at IS NOT NULL AND {_ACTIVE}
    ORDER BY id LIMIT %(limit)s
    """


@dataclass(frozen=True)
class CancelledRun:
    """A run a cancellation ended; `was` its status before (`running`: an execution stops)."""

    id: str
    function_id: str
    status: str
    was: str


def cancelled_among(conn: Conn, run_ids: Collection[str]) -> set[str]:
    """Those of these runs (the ones a daemon executes) that a cancellation ended."""
    if not run_ids:
        return set()
    rows = driver(conn).execute(
        "SELECT id::text FROM orchestrator.runs WHERE id = ANY(%s::uuid[]) "
        "AND status = 'cancelled'",
        (sorted(run_ids),),
    )
    return {row[0] for row in rows}


def cancel(
    conn: Conn, run_ids: list[str], *, reason: str, children: bool = True
) -> list[CancelledRun]:
    """Cancel runs, and with `children` their unfinished descendants (invoked runs); returns
    each run ended, with its status before."""
    if not run_ids:
        return []
    return outbox.run(cancel_op(run_ids, reason=reason, children=children), conn)


def cancel_requested(conn: Conn, *, limit: int = 500) -> list[CancelledRun]:
    """Apply the cancellations requested with an UPDATE (see `_REQUESTED`)."""
    rows = driver(conn).execute(_REQUESTED, {"limit": limit}).fetchall()
    if not rows:
        return []
    reason = "run was cancelled (cancel_requested_at was set)"
    op = cancel_op([r[0] for r in rows], reason=reason, children=[bool(r[1]) for r in rows])
    return outbox.run(op, conn)


# -- the same statements as operations (db/ops.py), for both faces of the client ---------------


def get_op(run_id: str) -> Op[RunRow | None]:
    """The run with this id or unambiguous id prefix, else None, as an operation."""
    low, high = uuid_bounds(run_id) or (None, None)  # not an id: NULL bounds match nothing
    rows = yield Query(
        f"SELECT {RUN_COLUMNS} FROM orchestrator.runs "
        "WHERE id BETWEEN %(low)s::uuid AND %(high)s::uuid ORDER BY id LIMIT 2",
        {"low": low, "high": high},
    )
    return RunRow(*rows[0]) if len(rows) == 1 else None


def cancel_op(
    run_ids: list[str], *, reason: str, children: bool | list[bool] = True
) -> Op[list[CancelledRun]]:
    """`cancel` as an operation: each run ended, with its status before. `children` applies
    to every run given, or one flag per run."""
    flags = children if isinstance(children, list) else [children] * len(run_ids)
    params = {"ids": run_ids, "children": flags, "reason": reason, "now": clock.current()}
    rows = yield Query(_CANCEL, params)
    ended = [CancelledRun(*row) for row in rows]
    if any(run.was == "running" for run in ended):  # delivered when the transaction commits
        yield Query(_NOTIFY_CANCELLED, {})
    return ended
