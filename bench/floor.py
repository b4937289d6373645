"""The floor under W1: what the database work of single-step runs costs with nothing else.

    python bench/floor.py [--runs 20000] [--batch 500] [--pgbench-seconds 5]

W1 runs/s is bounded by the CPU its database work takes, however fast the Python around it
gets. This drives that work from one client per core with no function, no worker, no daemon
and ideal batches (`--batch` events per ingest and claim, `--group` runs per group write),
and reports runs/s and the Postgres backends' CPU per run, against pgbench's single-row
INSERT with 1 client in the same run:

- engine: the engine's own statements for a W1 run, as its daemon and workers send them:
  per batch, one transaction takes the events and their names' locks
  (`events.claim_pending_sent`), makes the runs in SQL (`plain_ingest.ingest_sent`) and
  claims them (`runs.claim_due_sent`); then one group write (`checkpoints.write_group`)
  records each run's step and finish, fenced by its lease;
- minimum: the fewest row writes that keep the engine's promises, written by hand: an
  event marked ingested and its run inserted already leased (`running`) in one statement,
  then the step row and the finish in one (fenced by the lease token). One write fewer on
  `runs` than the engine, no locks, no NOTIFY, no JSON of the event copied into the run.

Both run against the real schema (`migrations/`), with every index the documented SQL API
keeps; `--cancelled N` keeps N cancelled runs of another function in `runs` as history.
Events are inserted in one statement before each measurement, as in W1, and the
clock runs from the first claim to the last write. Writes bench/results/floor.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pickup import create_database, drop_database, send_bulk, server_url, write_result
from bench.throughput import pgbench
from orchestrator.db import checkpoints, events, functions, plain_ingest, runs
from orchestrator.db.checkpoints import GroupWrite
from orchestrator.db.database import Database
from orchestrator.db.direct import pipelined
from orchestrator.db.plain_ingest import PlainTriggers
from orchestrator.db.steps import StepRecord
from orchestrator.db.waits import WAIT_LOCK_CLASS

EVENT = "bench/floor"
FUNCTION = "bench-floor"
OUTPUT = json.dumps({"i": 0, "ok": True})
Conns = tuple[psycopg.Connection[Any], psycopg.Connection[Any]]
Step = Callable[[Conns, int, int, str], int]


# runs cancelled earlier, kept until retention removes them (another function's)
_CANCELLED = """
    INSERT INTO orchestrator.runs (id, function_id, events, status, finished_at)
    SELECT gen_random_uuid(), 'bench-floor-old', '[]', 'cancelled', now()
    FROM generate_series(1, %s)
"""


def engine_batch(conns: Conns, batch: int, group: int, owner: str) -> int:
    """One batch as the engine writes it; returns how many runs it finished."""
    conn = conns[0]
    triggers = PlainTriggers([EVENT], [FUNCTION], [])
    with pipelined(conn) as tx:
        taken = events.claim_pending_sent(
            conn, batch, max_bytes=2**31 - 1, lock_class=WAIT_LOCK_CLASS
        )
        made = plain_ingest.ingest_sent(conn, triggers, max_bytes=2**31 - 1)
        claimed = runs.claim_due_sent(
            conn, owner=owner, limit=batch, lease_seconds=60, function_ids=[FUNCTION]
        )
        tx.commit()
        if not taken():
            return 0
        if made() is None:
            raise SystemExit("the floor's events were not taken as plain")
        leased = claimed()
    step = StepRecord("only", 0, "run", "completed", 1, output_json=OUTPUT, duration_ms=0)
    writes = [
        GroupWrite(r.id, r.lease_token, step=step, final_status="completed", output_json=OUTPUT)
        for r in leased
    ]
    for i in range(0, len(writes), group):
        checkpoints.write_group(conns[1], writes[i : i + group])
    return len(writes)


_MIN_INGEST = """
    WITH ev AS (
        SELECT id, name FROM orchestrator.events
        WHERE ingested_at IS NULL AND name = %(name)s
        ORDER BY seq LIMIT %(limit)s FOR UPDATE SKIP LOCKED
    ),
    marked AS (
        UPDATE orchestrator.events e SET ingested_at = now() FROM ev WHERE e.id = ev.id
    )
    INSERT INTO orchestrator.runs
        (id, function_id, event_id, events, idempotency_key, created_at, due_at, status,
         lease_owner, lease_token, lease_expires_at, started_at, updated_at, attempts)
    SELECT gen_random_uuid(), %(fid)s, ev.id, '[]'::jsonb, 'event:' || ev.id, now(), now(),
           'running', %(owner)s::uuid, gen_random_uuid(), now() + interval '60 seconds', now(),
           now(), 1
    FROM ev
    RETURNING id, lease_token
"""

_MIN_FINISH = """
    WITH input AS (
        SELECT * FROM unnest(%(ids)s::uuid[], %(tokens)s::uuid[]) AS t(id, token)
    ),
    held AS (
        SELECT r.id FROM orchestrator.runs r JOIN input i ON r.id = i.id
        AND r.lease_token = i.token WHERE r.status = 'running'
        ORDER BY r.id FOR NO KEY UPDATE OF r
    ),
    saved AS (
        INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, attempt,
                                        output, duration_ms, created_at, updated_at)
        SELECT id, 'only', 0, 'run', 'completed', 1, %(output)s::jsonb, 0, now(), now()
        FROM held
    )
    UPDATE orchestrator.runs r SET status = 'completed', output = %(output)s::jsonb,
        finished_at = now(), updated_at = now(), lease_owner = NULL, lease_token = NULL,
        lease_expires_at = NULL
    FROM held WHERE r.id = held.id
"""


def minimum_batch(conns: Conns, batch: int, group: int, owner: str) -> int:
    rows = (
        conns[0]
        .execute(
            _MIN_INGEST,
            {"name": EVENT, "limit": batch, "fid": FUNCTION, "owner": owner},
            prepare=True,
        )
        .fetchall()
    )
    if not rows:
        return 0
    for i in range(0, len(rows), group):
        part = rows[i : i + group]
        conns[1].execute(
            _MIN_FINISH,
            {"ids": [r[0] for r in part], "tokens": [r[1] for r in part], "output": OUTPUT},
            prepare=True,
        )
    return len(rows)


def backend_cpu(conn: psycopg.Connection[Any]) -> float:
    """CPU seconds of this connection's backend so far (the server runs on this host)."""
    fields = Path(f"/proc/{conn.info.backend_pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def connect(url: str) -> Conns:
    """A client's two connections, as the engine has them: the daemon's (claim settings) for
    the ingest and the claim, a worker committer's (`checkpoints.SETTINGS`) for the group writes."""
    claims = " ".join(f"-c {k}={v}" for k, v in runs.CLAIM_SETTINGS.items())
    commits = " ".join(f"-c {k}={v}" for k, v in checkpoints.SETTINGS.items())
    return (
        psycopg.connect(url, autocommit=True, options=claims),
        psycopg.connect(url, autocommit=True, options=commits),
    )


def measure(
    url: str, clients: int, n: int, *, batch: int, group: int, step: Step
) -> dict[str, Any]:
    pairs = [connect(url) for _ in range(clients)]
    conns = [c for pair in pairs for c in pair]
    try:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("TRUNCATE orchestrator.events, orchestrator.steps CASCADE")
            admin.execute("DELETE FROM orchestrator.runs WHERE function_id = %s", (FUNCTION,))
        send_bulk(url, EVENT, n, {})
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute("VACUUM ANALYZE orchestrator.events")
        done = [0] * clients
        cpu_before = [backend_cpu(c) for c in conns]
        own_before = time.process_time()

        errors: list[BaseException] = []

        def drain(i: int) -> None:
            try:
                drain_all(i)
            except BaseException as exc:
                errors.append(exc)

        def drain_all(i: int) -> None:
            owner = str(uuid.uuid4())  # a lease owner is a daemon id
            while True:
                got = step(pairs[i], batch, group, owner)
                if not got:
                    return
                done[i] += got

        started = time.monotonic()
        threads = [threading.Thread(target=drain, args=(i,)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - started
        if errors:
            raise errors[0]
        backend = sum(backend_cpu(c) for c in conns) - sum(cpu_before)
        client = time.process_time() - own_before
        with psycopg.connect(url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed' "
                "AND function_id = %s",
                (FUNCTION,),
            ).fetchone()
        assert row is not None and row[0] == n == sum(done), (row, n, done)
        return {
            "clients": clients,
            "runs": n,
            "seconds": round(seconds, 3),
            "runs_per_s": round(n / seconds, 1),
            "backend_us_per_run": round(backend / n * 1e6, 1),
            "client_us_per_run": round(client / n * 1e6, 1),
        }
    finally:
        for c in conns:
            c.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=500, help="events per ingest and claim")
    parser.add_argument("--group", type=int, default=50, help="runs per group write")
    parser.add_argument("--pgbench-seconds", type=int, default=5)
    parser.add_argument(
        "--cancelled", type=int, default=0, help="cancelled runs kept in the table (history)"
    )
    parser.add_argument("--only", choices=("engine", "minimum"), help="one of the two")
    args = parser.parse_args(argv)
    server, kind = server_url()
    name, url = create_database(server)
    results: dict[str, Any] = {"database": kind, "batch": args.batch, "group": args.group}
    try:
        db = Database(url, pool_size=1)
        with db.transaction() as registering:  # as a daemon registers its functions
            functions.upsert(
                registering,
                FUNCTION,
                triggers=[{"type": "event", "name": EVENT}],
                options={},
                version="floor",
            )
        db.dispose()
        with psycopg.connect(url, autocommit=True) as conn:
            if args.cancelled:
                conn.execute(_CANCELLED, (args.cancelled,))
                conn.execute("VACUUM ANALYZE orchestrator.runs")
        results["cancelled"] = args.cancelled
        results["pgbench_1"] = pgbench(url, 1, args.pgbench_seconds)
        for label, step in (("engine", engine_batch), ("minimum", minimum_batch)):
            if args.only and label != args.only:
                continue
            for clients in (1, 2):
                key = f"{label}_{clients}"
                results[key] = measure(
                    url, clients, args.runs, batch=args.batch, group=args.group, step=step
                )
                results[key]["over_pgbench_1"] = round(
                    results[key]["runs_per_s"] / results["pgbench_1"], 2
                )
                print(key, results[key], flush=True)
    finally:
        drop_database(server, name)
    print(f"pgbench(1) {results['pgbench_1']:.0f} tps ({kind})")
    for key, value in results.items():
        if isinstance(value, dict):
            print(
                f"{key:10} {value['runs_per_s']:>9,.0f} runs/s  {value['over_pgbench_1']:>5} x "
                f"pgbench(1)  backend {value['backend_us_per_run']} us/run  "
                f"client {value['client_us_per_run']} us/run"
            )
    write_result("floor.json", results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
