"""What the dashboard and the HTTP API read, and the audit trail of what they do.

Every function takes an SQLAlchemy Connection (the caller owns the transaction) and returns
frozen dataclasses. The reads are plain SELECTs, so they run with the read-only role;
`record_action` writes and needs the runtime role.

Speed on big tables (1,000,000 runs, a run of 1,000 steps) comes from the indexes of
migration 0015, checked by EXPLAIN tests (tests/db/test_ui_plans.py):

- The runs list is newest first, `(created_at, id)` descending, with a keyset cursor
  (`RunPage.next_cursor`, passed back as `RunFilter.before`), so page 1,000 costs what page 1
  does. Each filter walks an index in that order: `runs_created` (none), `runs_status_created`,
  `runs_function_created`, `runs_function_status_created`, `runs_event_name_created` (the
  trigger event's name); a time range bounds the same walk; an id prefix looks runs up by id
  range (the primary key) or by event id prefix (`runs_event`).
- A JSON-path filter on the trigger event's data cannot use an index: it examines at most
  `SCAN_WINDOW` runs (matching the other filters) per page. A page may then hold fewer runs
  than asked, and `next_cursor` continues after the last run examined.
- `status_counts` counts each status up to `COUNT_CAP`: a count of `COUNT_CAP` means "that
  many or more". With a JSON-path filter, it counts among the `SCAN_WINDOW` newest runs.

Each read sets two planner settings for the rest of the caller's transaction
(`set_config(..., true)`, as `READ_SETTINGS`):

- `plan_cache_mode = force_custom_plan`: the driver prepares a statement it has run five
  times, and Postgres may then keep a generic plan, made without the parameters' values.
  For `status = $1` that plan walks `runs_created` and filters, since the average status is
  common: reading every run to find the few queued ones (31 ms on 60,000 runs, seconds on
  millions). Planned with the value, the query walks `runs_status_created`.
- `jit = off`: the planner's estimates for the run_queue view are high enough to make it
  compile expressions, which takes about a second, for statements that run in milliseconds.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

from orchestrator.db import clock, runs, steps
from orchestrator.db.inspection import EventRow
from orchestrator.db.runs import RunRow
from orchestrator.errors import InvalidFilterError
from orchestrator.statuses import RUN_STATUSES

_NOW = clock.SQL_TEXT
COUNT_CAP = 10_000
SCAN_WINDOW = 10_000
MAX_LIMIT = 500
RELATED_LIMIT = 100  # children and copies shown with a run
RUNS_PER_EVENT = 20  # run ids shown with an event


# -- the runs list --------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFilter:
    function_id: str | None = None
    status: str | None = None
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    event_name: str | None = None  # the trigger event's name
    id_prefix: str | None = None  # a run id prefix (hex) or an event id prefix
    data_path: str | None = None  # SQL/JSON path on the trigger event's data: '$.user_id == 7'
    before: str | None = None  # RunPage.next_cursor of the previous page
    limit: int = 50  # 1..MAX_LIMIT


@dataclass(frozen=True)
class RunSummary:
    id: str
    function_id: str
    status: str
    event_id: str | None
    event_name: str | None
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_ms: int | None  # finished_at - started_at
    error_type: str | None


@dataclass(frozen=True)
class RunPage:
    runs: list[RunSummary]
    next_cursor: str | None  # None: this is the last page


_SUMMARY = (
    "r.id::text, r.function_id, r.status, r.event_id, (r.events -> 0) ->> 'name', r.attempts, "
    "r.created_at, r.started_at, r.finished_at, "
    "CASE WHEN r.finished_at IS NOT NULL AND r.started_at IS NOT NULL "
    "THEN (extract(epoch FROM r.finished_at - r.started_at) * 1000)::bigint END, "
    "r.error ->> 'type'"
)
_NEWEST_FIRST = "ORDER BY r.created_at DESC, r.id DESC"
# A data path that is a predicate ('$.a == 1') must hold; any other path must find an item.
_PATH_HOLDS = (
    "coalesce(jsonb_path_match({data}, CAST(:p_path AS jsonpath), '{{}}', true), "
    "jsonb_path_exists({data}, CAST(:p_path AS jsonpath), '{{}}', true))"
)


READ_SETTINGS = {"plan_cache_mode": "force_custom_plan", "jit": "off"}
_SETTINGS = text(
    "SELECT set_config('plan_cache_mode', :p_plans, true), set_config('jit', :p_jit, true)"
)


def _settings(conn: Connection) -> None:
    conn.execute(
        _SETTINGS,
        {"p_plans": READ_SETTINGS["plan_cache_mode"], "p_jit": READ_SETTINGS["jit"]},
    )


def encode_cursor(created_at: datetime, run_id: str) -> str:
    raw = f"{created_at.isoformat()}|{run_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, run_id = raw.split("|")
        return datetime.fromisoformat(at), str(uuid.UUID(run_id))
    except ValueError as exc:
        raise InvalidFilterError(
            f"cursor {cursor!r} was not given by a previous page; start from the first page"
        ) from exc


def _like_prefix(prefix: str) -> str:
    return prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _conditions(f: RunFilter, *, status: bool = True) -> tuple[list[str], dict[str, Any]]:
    """The WHERE conditions (on `r`) of the filter, but for the data path and the cursor."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if f.function_id is not None:
        where.append("r.function_id = :p_fid")
        params["p_fid"] = f.function_id
    if status and f.status is not None:
        if f.status not in RUN_STATUSES:
            raise InvalidFilterError(f"status {f.status!r} is not one of {', '.join(RUN_STATUSES)}")
        where.append("r.status = :p_status")
        params["p_status"] = f.status
    if f.since is not None:
        where.append("r.created_at >= :p_since")
        params["p_since"] = f.since
    if f.until is not None:
        where.append("r.created_at < :p_until")
        params["p_until"] = f.until
    if f.event_name is not None:
        where.append("((r.events -> 0) ->> 'name') = :p_ename")
        params["p_ename"] = f.event_name
    if f.id_prefix:
        where.append(_prefix_condition(f.id_prefix, params))
    return where, params


def _prefix_condition(prefix: str, params: dict[str, Any]) -> str:
    params["p_elike"] = _like_prefix(prefix)
    bounds = runs.uuid_bounds(prefix)
    if bounds is None:
        return "r.event_id LIKE :p_elike"
    params["p_low"], params["p_high"] = bounds
    return (
        "(r.id BETWEEN CAST(:p_low AS uuid) AND CAST(:p_high AS uuid) OR r.event_id LIKE :p_elike)"
    )


def _keyset(before: str | None, where: list[str], params: dict[str, Any]) -> None:
    if before is None:
        return
    params["p_cat"], params["p_cid"] = decode_cursor(before)
    # spelled out so that an index on created_at alone bounds the walk
    where.append(
        "r.created_at <= :p_cat AND (r.created_at < :p_cat OR r.id < CAST(:p_cid AS uuid))"
    )


def _check_path(conn: Connection, path: str) -> None:
    try:
        with conn.begin_nested():
            conn.execute(text("SELECT CAST(:p_path AS jsonpath)"), {"p_path": path})
    except DBAPIError as exc:
        message = str(exc.orig).splitlines()[0] if exc.orig else str(exc)
        raise InvalidFilterError(
            f"data path {path!r} is not an SQL/JSON path ({message}); write e.g. "
            "'$.user_id == 7' or '$.items[*] ? (@.sku == \"A1\")'"
        ) from exc


def _where(where: list[str]) -> str:
    return ("WHERE " + " AND ".join(where)) if where else ""


def _summary(row: Any) -> RunSummary:
    return RunSummary(*row[:11])


def list_runs(conn: Connection, f: RunFilter) -> RunPage:
    """A page of runs, newest first, matching every filter given."""
    _settings(conn)
    if not 1 <= f.limit <= MAX_LIMIT:
        raise InvalidFilterError(f"limit {f.limit} is out of range; use 1 to {MAX_LIMIT}")
    where, params = _conditions(f)
    _keyset(f.before, where, params)
    params["p_limit"] = f.limit
    if f.data_path:
        return _list_by_path(conn, f, where, params)
    rows = conn.execute(
        text(
            f"SELECT {_SUMMARY} FROM orchestrator.runs r {_where(where)} {_NEWEST_FIRST} "
            "LIMIT :p_limit + 1"
        ),
        params,
    ).all()
    found = [_summary(row) for row in rows[: f.limit]]
    more = len(rows) > f.limit
    return RunPage(found, encode_cursor(found[-1].created_at, found[-1].id) if more else None)


def runs_with_counts(conn: Connection, f: RunFilter) -> tuple[RunPage, dict[str, int]]:
    """A page of runs and the counts per status under the same filter: what the runs page
    and GET /api/v1/runs show."""
    return list_runs(conn, f), status_counts(conn, f)


def _list_by_path(
    conn: Connection, f: RunFilter, where: list[str], params: dict[str, Any]
) -> RunPage:
    assert f.data_path is not None
    _check_path(conn, f.data_path)
    params |= {"p_path": f.data_path, "p_scan": SCAN_WINDOW}
    rows = conn.execute(
        text(
            f"""
            WITH w AS MATERIALIZED (
                SELECT r.id, r.created_at, (r.events -> 0) -> 'data' AS data
                FROM orchestrator.runs r {_where(where)} {_NEWEST_FIRST} LIMIT :p_scan
            ), hits AS (
                SELECT id FROM w WHERE {_PATH_HOLDS.format(data="w.data")}
                ORDER BY created_at DESC, id DESC LIMIT :p_limit + 1
            ), tail AS (
                SELECT (SELECT count(*) FROM w) AS n, last.created_at, last.id::text AS id
                FROM (SELECT 1) one
                LEFT JOIN (SELECT created_at, id FROM w ORDER BY created_at, id LIMIT 1) last
                    ON true
            )
            SELECT {_SUMMARY}, tail.n, tail.created_at, tail.id
            FROM tail LEFT JOIN (hits JOIN orchestrator.runs r ON r.id = hits.id) ON true
            {_NEWEST_FIRST}
            """
        ),
        params,
    ).all()
    found = [_summary(row) for row in rows if row[0] is not None]
    scanned, last_at, last_id = rows[0][11:14]
    if len(found) > f.limit:
        found = found[: f.limit]
        return RunPage(found, encode_cursor(found[-1].created_at, found[-1].id))
    more = scanned >= SCAN_WINDOW
    return RunPage(found, encode_cursor(last_at, last_id) if more else None)


def status_counts(conn: Connection, f: RunFilter) -> dict[str, int]:
    """How many runs of each status match the filter (its status and cursor aside), each
    counted up to `COUNT_CAP` (a value of `COUNT_CAP` means that many or more)."""
    _settings(conn)
    where, params = _conditions(f, status=False)
    if f.data_path:
        return _counts_by_path(conn, f.data_path, where, params)
    params["p_cap"] = COUNT_CAP
    capped = ", ".join(
        f"(SELECT count(*) FROM (SELECT 1 FROM orchestrator.runs r "
        f"{_where([*where, f'r.status = {s!r}'])} LIMIT :p_cap) c{n})"
        for n, s in enumerate(RUN_STATUSES)
    )
    row = conn.execute(text(f"SELECT {capped}"), params).one()
    return dict(zip(RUN_STATUSES, (int(n) for n in row), strict=True))


def _counts_by_path(
    conn: Connection, path: str, where: list[str], params: dict[str, Any]
) -> dict[str, int]:
    _check_path(conn, path)
    params |= {"p_path": path, "p_scan": SCAN_WINDOW}
    rows = conn.execute(
        text(
            f"""
            WITH w AS MATERIALIZED (
                SELECT r.status, (r.events -> 0) -> 'data' AS data
                FROM orchestrator.runs r {_where(where)} {_NEWEST_FIRST} LIMIT :p_scan
            )
            SELECT status, count(*) FROM w WHERE {_PATH_HOLDS.format(data="w.data")}
            GROUP BY status
            """
        ),
        params,
    ).all()
    counts = dict.fromkeys(RUN_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


# -- one run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """A step's latest attempt as the steps table keeps it (earlier ones are not stored)."""

    step_id: str
    attempt: int
    status: str
    started_at: datetime
    ended_at: datetime | None


@dataclass(frozen=True)
class TimelineBar:
    label: str
    kind: str  # queued, running, sleeping, waiting, retrying, failed, completed
    start: datetime
    end: datetime | None  # None: still going
    note: str = ""  # what the bar stands for, beyond its kind: "attempts 1-2 failed"


@dataclass(frozen=True)
class WaitRow:
    step_id: str
    branch: int  # the entry of a wait_for_any
    kind: str  # 'event' (a step's wait) or 'cancel' (the function's cancel_on)
    event_name: str
    match: str | None  # 'data.order_id == 42': the field that must equal the value
    expression: str | None  # the `if_` CEL expression
    expires_at: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class ActionRow:
    id: int
    at: datetime
    actor: str
    via: str
    action: str
    run_id: str | None
    new_run_id: str | None
    event_id: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class RunDetail:
    run: RunRow
    steps: list[steps.StepRow]
    waits: list[WaitRow]
    parent: RunSummary | None
    children: list[RunSummary]  # runs it invoked (the first RELATED_LIMIT)
    origin: RunSummary | None  # the run it was replayed or forked from
    copies: list[RunSummary]  # its replays and forks (the first RELATED_LIMIT)
    event: EventRow | None  # the trigger event, while retention keeps it
    actions: list[ActionRow]
    timeline: list[TimelineBar]


def _run_id(run_id: str) -> str | None:
    try:
        return str(uuid.UUID(run_id))
    except (ValueError, AttributeError, TypeError):
        return None


def run_detail(conn: Connection, run_id: str) -> RunDetail | None:
    """Everything the run page shows about one run (by its full id), or None."""
    _settings(conn)
    rid = _run_id(run_id)
    if rid is None:
        return None
    run = runs.get(conn, rid)  # a full id: exactly that run
    if run is None:
        return None
    recorded = steps.load(conn, rid)
    return RunDetail(
        run=run,
        steps=recorded,
        waits=_waits(conn, rid),
        parent=_summary_by_id(conn, run.parent_run_id),
        children=_related(conn, "parent_run_id", rid),
        origin=_summary_by_id(conn, run.origin_run_id),
        copies=_related(conn, "origin_run_id", rid),
        event=_event_row(conn, run.event_id),
        actions=actions_for(conn, rid),
        timeline=timeline(run, recorded),
    )


def _summary_by_id(conn: Connection, run_id: str | None) -> RunSummary | None:
    if run_id is None:
        return None
    row = conn.execute(
        text(f"SELECT {_SUMMARY} FROM orchestrator.runs r WHERE r.id = CAST(:p_id AS uuid)"),
        {"p_id": run_id},
    ).first()
    return _summary(row) if row else None


def _related(conn: Connection, column: str, run_id: str) -> list[RunSummary]:
    rows = conn.execute(
        text(
            f"SELECT {_SUMMARY} FROM orchestrator.runs r WHERE r.{column} = CAST(:p_id AS uuid) "
            "ORDER BY r.created_at, r.id LIMIT :p_limit"
        ),
        {"p_id": run_id, "p_limit": RELATED_LIMIT},
    )
    return [_summary(row) for row in rows]


def _event_row(conn: Connection, event_id: str | None) -> EventRow | None:
    if event_id is None:
        return None
    row = conn.execute(
        text(
            "SELECT id, name, data, ts, received_at, ingested_at, error "
            "FROM orchestrator.events WHERE id = :p_id"
        ),
        {"p_id": event_id},
    ).first()
    return EventRow(*row) if row else None


def _waits(conn: Connection, run_id: str) -> list[WaitRow]:
    rows = conn.execute(
        text(
            "SELECT step_id, branch, kind, event_name, "
            "CASE WHEN match_path <> '' THEN match_path || ' == ' || match_value::text END, "
            "expression, expires_at, created_at FROM orchestrator.waits "
            "WHERE run_id = CAST(:p_id AS uuid) ORDER BY created_at, step_id, branch"
        ),
        {"p_id": run_id},
    )
    return [WaitRow(*row) for row in rows]


def attempts(recorded: list[steps.StepRow]) -> list[Attempt]:
    """Each step's latest attempt: it ended when the step was last written, and began its
    duration before that (a step without a duration, a sleep or a wait, when first written)."""
    return [Attempt(s.step_id, s.attempt, s.status, _began(s), s.updated_at) for s in recorded]


def _began(s: steps.StepRow) -> datetime:
    if s.duration_ms is None:
        return s.created_at
    return s.updated_at - timedelta(milliseconds=s.duration_ms)


def timeline(run: RunRow, recorded: list[steps.StepRow]) -> list[TimelineBar]:
    """Gantt bars, derived from the run's times and its steps' rows: the wait for a first
    worker, then per step its earlier attempts (one 'retrying' bar: `steps` keeps one row per
    step), its latest attempt, sleep, wait or retry back-off, and the time the run then stood
    queued before its next step began; last, the run's current work if it is running."""
    bars = [TimelineBar("queued", "queued", run.created_at, run.started_at)]
    resumable_at: datetime | None = None  # when the run's last suspension ended
    for s in recorded:
        mine = _step_bars(s, run.due_at if run.status == s.status else None)
        if resumable_at is not None and mine[0].start > resumable_at:
            bars.append(TimelineBar(mine[0].label, "queued", resumable_at, mine[0].start,
                                    "waiting for a worker after the suspension"))  # fmt: skip
        bars += mine
        resumable_at = _suspension_end(s)
    if run.status == "running":
        last = max((b.end for b in bars if b.end is not None), default=run.created_at)
        bars.append(TimelineBar("running", "running", max(last, run.started_at or last), None))
    return bars


_SUSPENDING_KINDS = ("sleep", "wait", "wait_any", "invoke", "signal", "wait_for_signal")


def _suspended(s: steps.StepRow) -> bool:
    """A step that suspended the run (a sleep, a wait, an invoke), rather than ran a body."""
    return s.kind in _SUSPENDING_KINDS and s.duration_ms is None


def _suspension_end(s: steps.StepRow) -> datetime | None:
    """When a finished suspension let the run be claimed again: a sleep at its wake time
    (the row is written later, when the run replays it), a wait when its event came."""
    if s.status != "completed" or not _suspended(s):
        return None
    return min(s.updated_at, s.wake_at or s.updated_at)


def _step_bars(s: steps.StepRow, run_due: datetime | None) -> list[TimelineBar]:
    """`run_due`: when the run falls due, if it is suspended as this step is."""
    label = s.step_id if s.attempt <= 1 else f"{s.step_id} (attempt {s.attempt})"
    if s.status in ("sleeping", "waiting"):
        end = s.wake_at or (run_due if s.status == "sleeping" else None)
        return [TimelineBar(label, s.status, s.created_at, end)]
    if _suspended(s):
        kind = "sleeping" if s.kind == "sleep" else "waiting"
        return [TimelineBar(label, kind, s.created_at, _suspension_end(s) or s.updated_at)]
    bars = _earlier_attempts(s, label)
    bars.append(TimelineBar(label, _ran_kind(s.status), _began(s), s.updated_at))
    if s.status == "retrying":
        note = f"back-off before attempt {s.attempt + 1}"
        bars.append(TimelineBar(label, "retrying", s.updated_at, s.wake_at, note))
    return bars


def _earlier_attempts(s: steps.StepRow, label: str) -> list[TimelineBar]:
    """The attempts before the latest, with their back-offs, as one bar: from the step's
    first write to when its latest attempt began."""
    began = _began(s)
    if s.attempt <= 1 or began <= s.created_at:
        return []
    failed = "attempt 1 failed" if s.attempt == 2 else f"attempts 1-{s.attempt - 1} failed"
    return [TimelineBar(label, "retrying", s.created_at, began, failed)]


def _ran_kind(status: str) -> str:
    return {"completed": "completed", "retrying": "failed", "failed": "failed"}.get(
        status, "running"
    )


# -- functions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionStats:
    id: str
    triggers: list[Any]
    options: dict[str, Any]
    version: str
    served_by: list[str]  # 'hostname:pid' of the live daemons serving it
    counts: dict[str, int]  # per status, each up to COUNT_CAP
    p50_ms: float | None  # durations of the runs completed in the last hour
    p95_ms: float | None
    per_minute: list[tuple[datetime, int]]  # completions per minute, the last 60 minutes


def functions_overview(conn: Connection) -> list[FunctionStats]:
    _settings(conn)
    ids = conn.execute(text("SELECT id FROM orchestrator.functions ORDER BY id")).scalars()
    return [s for s in (function_stats(conn, fid) for fid in list(ids)) if s is not None]


def function_stats(conn: Connection, function_id: str) -> FunctionStats | None:
    _settings(conn)
    row = conn.execute(
        text("SELECT id, triggers, options, version FROM orchestrator.functions WHERE id = :p_f"),
        {"p_f": function_id},
    ).first()
    if row is None:
        return None
    p50, p95 = _durations(conn, function_id)
    return FunctionStats(
        id=row[0],
        triggers=row[1],
        options=row[2],
        version=row[3],
        served_by=_served_by(conn, function_id),
        counts=status_counts(conn, RunFilter(function_id=function_id)),
        p50_ms=p50,
        p95_ms=p95,
        per_minute=_per_minute(conn, function_id),
    )


def _served_by(conn: Connection, function_id: str) -> list[str]:
    rows = conn.execute(
        text(
            "SELECT hostname || ':' || pid FROM orchestrator.daemons "
            "WHERE status = 'running' AND (functions IS NULL OR :p_f = ANY(functions)) "
            "ORDER BY started_at, id"
        ),
        {"p_f": function_id},
    )
    return [str(r) for r in rows.scalars()]


_LAST_HOUR = (
    "r.function_id = :p_f AND r.status = 'completed' "
    f"AND r.finished_at > {_NOW} - interval '1 hour'"
)


def _durations(conn: Connection, function_id: str) -> tuple[float | None, float | None]:
    row = conn.execute(
        text(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY d) FROM ("
            "SELECT extract(epoch FROM r.finished_at - r.started_at) * 1000 AS d "
            f"FROM orchestrator.runs r WHERE {_LAST_HOUR}) x"
        ),
        {"p_f": function_id, "p_now": clock.current()},
    ).one()
    return (
        None if row[0] is None else float(row[0]),
        None if row[1] is None else float(row[1]),
    )


def _per_minute(conn: Connection, function_id: str) -> list[tuple[datetime, int]]:
    rows = conn.execute(
        text(
            "SELECT g.m, (SELECT count(*) FROM orchestrator.runs r "
            "WHERE r.function_id = :p_f AND r.status = 'completed' "
            "AND r.finished_at >= g.m AND r.finished_at < g.m + interval '1 minute') "
            f"FROM generate_series(date_trunc('minute', {_NOW}) - interval '59 minutes', "
            f"date_trunc('minute', {_NOW}), interval '1 minute') AS g(m) ORDER BY g.m"
        ),
        {"p_f": function_id, "p_now": clock.current()},
    )
    return [(m, int(n)) for m, n in rows]


# -- events ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSummary:
    id: str
    name: str
    data: dict[str, Any]
    ts: datetime
    received_at: datetime
    ingested_at: datetime | None
    error: str | None  # why it was parked
    run_ids: list[str]  # the runs it started (the first RUNS_PER_EVENT)


_EVENT = (
    "e.id, e.name, e.data, e.ts, e.received_at, e.ingested_at, e.error, "
    "ARRAY(SELECT r.id::text FROM orchestrator.runs r WHERE r.event_id = e.id "
    "ORDER BY r.created_at, r.id LIMIT :p_per_event), e.seq"
)


def list_events(
    conn: Connection,
    *,
    name: str | None = None,
    parked: bool = False,
    before: str | None = None,
    limit: int = 50,
) -> tuple[list[EventSummary], str | None]:
    """Events newest first (in the order received), named `name`, only parked ones; and
    the cursor of the next page (pass it as `before`), or None."""
    _settings(conn)
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidFilterError(f"limit {limit} is out of range; use 1 to {MAX_LIMIT}")
    where = ["e.name = :p_name"] if name is not None else []
    where += ["e.error IS NOT NULL"] if parked else []
    params: dict[str, Any] = {"p_name": name, "p_limit": limit, "p_per_event": RUNS_PER_EVENT}
    if before is not None:
        where.append("e.seq < :p_seq")
        params["p_seq"] = _event_cursor(before)
    rows = conn.execute(
        text(
            f"SELECT {_EVENT} FROM orchestrator.events e "
            f"{_where(where)} ORDER BY e.seq DESC LIMIT :p_limit + 1"
        ),
        params,
    ).all()
    found = [EventSummary(*row[:8]) for row in rows[:limit]]
    return found, (str(rows[limit - 1][8]) if len(rows) > limit else None)


def _event_cursor(before: str) -> int:
    try:
        return int(before)
    except ValueError as exc:
        raise InvalidFilterError(
            f"cursor {before!r} was not given by a previous page; start from the first page"
        ) from exc


def get_event(conn: Connection, event_id: str) -> EventSummary | None:
    _settings(conn)
    row = conn.execute(
        text(f"SELECT {_EVENT} FROM orchestrator.events e WHERE e.id = :p_id"),
        {"p_id": event_id, "p_per_event": RUNS_PER_EVENT},
    ).first()
    return EventSummary(*row[:8]) if row else None


# -- queue, schedules, daemons --------------------------------------------------------------


@dataclass(frozen=True)
class QueueOverview:
    by_reason: dict[str, int]  # rows of the run_queue view per reason
    concurrency: list[tuple[str, str, int, int]]  # function, key, running, limit
    limiters: list[tuple[str, str, str, datetime]]  # function, kind, key, next_at (its tat)


def queue_overview(conn: Connection) -> QueueOverview:
    """What holds due work back (the run_queue view), the concurrency keys in use, and the
    throttles and rate limits whose theoretical arrival time is still ahead."""
    _settings(conn)
    reasons = conn.execute(
        text("SELECT reason, count(*) FROM orchestrator.run_queue GROUP BY reason ORDER BY 1")
    )
    concurrency = conn.execute(
        text(
            "SELECT r.function_id, coalesce(r.concurrency_keys[c.n], ''), count(*), "
            "(c.spec ->> 'limit')::int FROM orchestrator.runs r "
            "JOIN orchestrator.functions f ON f.id = r.function_id "
            "CROSS JOIN LATERAL jsonb_array_elements(CASE WHEN jsonb_typeof("
            "f.options -> 'concurrency') = 'array' THEN f.options -> 'concurrency' "
            "ELSE '[]'::jsonb END) WITH ORDINALITY AS c(spec, n) "
            "WHERE r.status = 'running' GROUP BY 1, 2, 4 ORDER BY 1, 2"
        )
    )
    limiters = conn.execute(
        text(
            "SELECT function_id, kind, key, tat FROM orchestrator.limiters "
            f"WHERE tat > {_NOW} ORDER BY function_id, kind, key LIMIT :p_limit"
        ),
        {"p_now": clock.current(), "p_limit": MAX_LIMIT},
    )
    return QueueOverview(
        by_reason={reason: int(n) for reason, n in reasons},
        concurrency=[(f, k, int(n), int(lim)) for f, k, n, lim in concurrency],
        limiters=[(f, kind, key, tat) for f, kind, key, tat in limiters],
    )


@dataclass(frozen=True)
class ScheduleRow:
    function_id: str
    cron: str
    tz: str
    next_fire_at: datetime
    last_fired_at: datetime | None
    last_run_id: str | None


def schedules(conn: Connection) -> list[ScheduleRow]:
    _settings(conn)
    rows = conn.execute(
        text(
            "SELECT function_id, cron, tz, next_fire_at, last_fired_at, last_run_id::text "
            "FROM orchestrator.schedules ORDER BY next_fire_at, function_id"
        )
    )
    return [ScheduleRow(*row) for row in rows]


@dataclass(frozen=True)
class DaemonRow:
    id: str
    hostname: str
    pid: int
    version: str
    status: str
    started_at: datetime
    heartbeat_at: datetime
    leader: bool
    workers: int
    concurrency: int
    running_runs: int  # runs it holds the lease of


def daemons(conn: Connection) -> list[DaemonRow]:
    """The daemons running or stopping, then the latest stopped or dead (MAX_LIMIT in all)."""
    _settings(conn)
    rows = conn.execute(
        text(
            "SELECT d.id::text, d.hostname, d.pid, d.version, d.status, d.started_at, "
            "d.heartbeat_at, d.is_leader, d.workers, d.concurrency, "
            "(SELECT count(*) FROM orchestrator.runs r "
            "WHERE r.status = 'running' AND r.lease_owner = d.id) "
            "FROM orchestrator.daemons d "
            "ORDER BY d.status NOT IN ('running', 'stopping'), d.started_at DESC, d.id "
            "LIMIT :p_limit"
        ),
        {"p_limit": MAX_LIMIT},
    )
    return [DaemonRow(*row) for row in rows]


# -- the audit trail ------------------------------------------------------------------------


def record_action(
    conn: Connection,
    *,
    actor: str,
    via: str,
    action: str,
    run_id: str | None = None,
    new_run_id: str | None = None,
    event_id: str | None = None,
    detail: Mapping[str, Any] | None = None,
) -> None:
    """Record that `actor` did `action` (via 'session', 'token' or 'cli'), in the caller's
    transaction: commit it with the action itself."""
    conn.execute(
        text(
            "INSERT INTO orchestrator.ui_actions (at, actor, via, action, run_id, new_run_id, "
            f"event_id, detail) VALUES ({_NOW}, :p_actor, :p_via, :p_action, "
            "CAST(:p_run AS uuid), CAST(:p_new AS uuid), :p_event, CAST(:p_detail AS jsonb))"
        ),
        {
            "p_actor": actor,
            "p_via": via,
            "p_action": action,
            "p_run": run_id,
            "p_new": new_run_id,
            "p_event": event_id,
            "p_detail": json.dumps(dict(detail or {})),
            "p_now": clock.current(),
        },
    )


def actions_for(conn: Connection, run_id: str) -> list[ActionRow]:
    """What was done to the run, oldest first."""
    _settings(conn)
    rid = _run_id(run_id)
    if rid is None:
        return []
    rows = conn.execute(
        text(
            "SELECT id, at, actor, via, action, run_id::text, new_run_id::text, event_id, "
            "detail FROM orchestrator.ui_actions WHERE run_id = CAST(:p_id AS uuid) "
            "ORDER BY id"
        ),
        {"p_id": rid},
    )
    return [ActionRow(*row) for row in rows]
