"""Statements on `orchestrator.runs` for flow-controlled functions.

A limited function's runs are claimed under the function's advisory lock (`lock_function`),
held to the end of the claiming transaction: a statement that runs after it sees every claim
of that function committed before, so the runs counted as executing (`running`) are exact,
whichever daemon claimed them. Only a claim moves a run into `running`; everything else moves
runs out of it, which can only make the count smaller.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchestrator.db import clock
from orchestrator.db.direct import Conn, driver
from orchestrator.db.runs import CLAIM_RETURNING, CLAIM_SET, ClaimedRun

FLOW_LOCK_CLASS = 0x6F72666C  # the first key of the per-function flow-control locks
_DUE = "status IN ('queued', 'sleeping', 'waiting')"
_NOW = clock.SQL


@dataclass(frozen=True)
class Candidate:
    """A due run of a limited function, in the order the claim considers it."""

    id: str
    concurrency_keys: list[str] | None
    throttle_key: str | None
    fresh: bool  # never started: a throttle applies to it


def lock_function(conn: Conn, function_id: str) -> None:
    """Wait for the function's flow-control lock, held until the transaction ends."""
    driver(conn).execute(
        "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (FLOW_LOCK_CLASS, function_id)
    )


def running(conn: Conn, function_id: str) -> tuple[datetime, list[tuple[list[str] | None, int]]]:
    """The database's now, and how many runs of the function execute, by concurrency keys."""
    rows = (
        driver(conn)
        .execute(
            f"SELECT {_NOW}, concurrency_keys, count(*) FROM orchestrator.runs "
            "WHERE function_id = %(fid)s AND status = 'running' GROUP BY concurrency_keys "
            f"UNION ALL SELECT {_NOW}, NULL, 0",
            {"fid": function_id, "now": clock.current()},
            prepare=True,
        )
        .fetchall()
    )
    return rows[0][0], [(row[1], int(row[2])) for row in rows if row[2]]


_WHERE_DUE = (
    f"function_id = %(fid)s AND {_DUE} AND due_at <= {_NOW} "
    "AND cancel_requested_at IS NULL AND (crashes > 0) = %(suspects)s"
)
_COLUMNS = "id::text, concurrency_keys, throttle_key, started_at IS NULL, priority, due_at"


def _order(priority: bool) -> str:
    return "priority DESC, due_at, id" if priority else "due_at, id"


def _candidates_sql(priority: bool) -> str:
    return (
        f"SELECT {_COLUMNS} FROM orchestrator.runs WHERE {_WHERE_DUE} "
        f"ORDER BY {_order(priority)} LIMIT %(n)s"
    )


def _heads_sql(priority: bool, *, after: bool) -> str:
    # The keys in order from the first after `after`, by a skip scan of runs_flow_key (one
    # index probe per key, however long its queue), and each key's first due runs.
    start = "AND flow_key > %(after)s" if after else "AND flow_key IS NOT NULL"
    return f"""
        WITH RECURSIVE keys(k, n) AS (
            (SELECT flow_key, 1 FROM orchestrator.runs
             WHERE function_id = %(fid)s {start} AND {_DUE}
             ORDER BY flow_key LIMIT 1)
            UNION ALL
            SELECT (SELECT r.flow_key FROM orchestrator.runs r
                    WHERE r.function_id = %(fid)s AND r.flow_key > keys.k AND r.{_DUE}
                    ORDER BY r.flow_key LIMIT 1), keys.n + 1
            FROM keys WHERE keys.k IS NOT NULL AND keys.n < %(keys)s
        )
        SELECT head.*, keys.k, keys.n FROM keys LEFT JOIN LATERAL (
            SELECT {_COLUMNS} FROM orchestrator.runs
            WHERE {_WHERE_DUE} AND flow_key = keys.k
            ORDER BY {_order(priority)} LIMIT %(per_key)s
        ) head ON true
        WHERE keys.k IS NOT NULL
        """


def candidates(
    conn: Conn,
    function_id: str,
    *,
    limit: int,
    priority: bool = False,
    suspects: bool = False,
) -> list[Candidate]:
    """Due runs of the function in claim order: by priority (if it has one), then by due
    time."""
    params = {"fid": function_id, "suspects": suspects, "n": limit, "now": clock.current()}
    rows = driver(conn).execute(_candidates_sql(priority), params).fetchall()
    return [Candidate(*row[:4]) for row in rows]


def fair_candidates(
    conn: Conn,
    function_id: str,
    *,
    after: str | None,
    keys: int,
    per_key: int,
    priority: bool = False,
    suspects: bool = False,
) -> tuple[list[Candidate], str | None]:
    """Due runs taking turns by key (`runs.flow_key`): the keys from the first after `after`
    (from the first key if None), wrapping around, `keys` of them at most, and at most
    `per_key` runs of each, ranked so that every key's first runs come before any key's
    next ones. Returns them and the last key read, where the next call goes on from."""
    params = {
        "fid": function_id,
        "suspects": suspects,
        "per_key": per_key,
        "keys": keys,
        "now": clock.current(),
    }
    sql = _heads_sql(priority, after=after is not None)
    rows = driver(conn).execute(sql, {**params, "after": after}).fetchall()
    read = len({row[-1] for row in rows})  # keys read (each row carries its key's ordinal)
    last = _last_key(rows) if read >= keys else None
    if after is not None and read < keys:  # wrap around to the first keys
        params["keys"] = keys - read
        more = driver(conn).execute(_heads_sql(priority, after=False), params).fetchall()
        seen = {row[-2] for row in rows}
        wrapped = [row for row in more if row[-2] not in seen]
        rows = wrapped + rows
        last = _last_key(wrapped)
    return [Candidate(*row[:4]) for row in _by_rank(rows, priority)], last


def _last_key(rows: list[Any]) -> str | None:
    return str(max(rows, key=lambda row: row[-1])[-2]) if rows else None


def _by_rank(rows: list[Any], priority: bool) -> list[Any]:
    """Each key's rows together and in claim order → every key's first, then every key's
    second, … (within a rank: priority, due time, id); keys without a due run left out."""
    ranked = []
    previous: Any = None
    rank = 0
    for row in rows:
        if row[0] is None:  # a key whose runs are not due
            continue
        key = row[-2]
        rank = rank + 1 if rank and key == previous else 1
        previous = key
        ranked.append((rank, -row[4] if priority else 0, row[5], row[0], row))
    return [item[-1] for item in sorted(ranked, key=lambda item: item[:4])]


def backfill_flow_keys(conn: Conn, function_id: str) -> int:
    """Give the due runs of a function without a `flow_key` (made before the function had a
    keyed limit, or by a daemon running older code) the empty key, so the fair claim sees
    them."""
    return (
        driver(conn)
        .execute(
            f"UPDATE orchestrator.runs SET flow_key = '' WHERE function_id = %s "
            f"AND flow_key IS NULL AND {_DUE}",
            (function_id,),
        )
        .rowcount
    )


_CLAIM_IDS = f"""
    WITH picked AS MATERIALIZED (
        SELECT id FROM orchestrator.runs
        WHERE id = ANY(%(ids)b::uuid[]) AND {_DUE} AND due_at <= {_NOW}
          AND cancel_requested_at IS NULL
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    )
    UPDATE orchestrator.runs AS r {CLAIM_SET}
    FROM picked
    WHERE r.id = picked.id {CLAIM_RETURNING}
    """


def claim_ids(
    conn: Conn, run_ids: list[str], *, owner: str, lease_seconds: float
) -> list[ClaimedRun]:
    """Claim these runs (chosen by the flow-control claim) if they are still due."""
    if not run_ids:
        return []
    params = {"ids": run_ids, "owner": owner, "lease": lease_seconds, "now": clock.current()}
    rows = driver(conn).execute(_CLAIM_IDS, params, prepare=True).fetchall()
    order = {run_id: i for i, run_id in enumerate(run_ids)}
    return sorted((ClaimedRun(*row) for row in rows), key=lambda c: order[c.id])


def active_singletons(conn: Conn, pairs: list[tuple[str, str]]) -> list[tuple[str, str, str]]:
    """The active (not cancelled) runs holding these (function, singleton key) pairs, as
    (function id, key, run id)."""
    if not pairs:
        return []
    rows = driver(conn).execute(
        "SELECT r.function_id, r.singleton_key, r.id::text FROM orchestrator.runs r "
        "JOIN unnest(%s::text[], %s::text[]) AS t(f, k) "
        "  ON r.function_id = t.f AND r.singleton_key = t.k "
        "WHERE r.singleton_key IS NOT NULL AND r.cancel_requested_at IS NULL "
        "AND r.status IN ('queued', 'running', 'sleeping', 'waiting')",
        ([f for f, _ in pairs], [k for _, k in pairs]),
    )
    return [(row[0], row[1], row[2]) for row in rows]


def active_runs(conn: Conn, function_id: str) -> list[str]:
    """The ids of the function's active runs (queued, running, sleeping or waiting)."""
    rows = driver(conn).execute(
        f"SELECT id::text FROM orchestrator.runs WHERE function_id = %(f)s AND {_DUE} "
        "UNION ALL SELECT id::text FROM orchestrator.runs "
        "WHERE function_id = %(f)s AND status = 'running'",
        {"f": function_id},
    )
    return [row[0] for row in rows]


def past_timeouts(
    conn: Conn, function_id: str, *, start: float | None, finish: float | None, limit: int = 500
) -> list[tuple[str, str]]:
    """Runs of the function past their timeouts, as (run id, which): not started within
    `start` seconds of being created (of falling due, for a run started with a delay), or not
    finished within `finish` seconds of starting."""
    rows = driver(conn).execute(
        f"""
        (SELECT id::text, 'start' FROM orchestrator.runs
         WHERE %(start)s::float8 IS NOT NULL AND function_id = %(f)s AND status = 'queued'
           AND started_at IS NULL AND cancel_requested_at IS NULL
           AND greatest(created_at, due_at) <= {_NOW} - make_interval(secs => %(start)s::float8)
         LIMIT %(limit)s)
        UNION ALL
        (SELECT id::text, 'finish' FROM orchestrator.runs
         WHERE %(finish)s::float8 IS NOT NULL AND function_id = %(f)s
           AND ({_DUE} OR status = 'running') AND cancel_requested_at IS NULL
           AND started_at <= {_NOW} - make_interval(secs => %(finish)s::float8)
         LIMIT %(limit)s)
        """,
        {
            "f": function_id,
            "start": start,
            "finish": finish,
            "limit": limit,
            "now": clock.current(),
        },
    )
    return [(row[0], row[1]) for row in rows]
