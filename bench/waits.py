"""Wait resolution: 10,000 runs waiting for `payment/received`, each on its own order id.

    python bench/waits.py [--runs 10000] [--singles 20] [--workers 2] [--concurrency 32]
                          [--pgbench-seconds 10]

Creates a fresh database (like bench/pickup.py) and measures pgbench's single-row INSERT with
one client on it (the baseline every rate is divided by, from the same run). Then starts a
real daemon, sends `--runs` `order/created` events in one INSERT and waits until every run is
waiting (runs/s into their wait, from the INSERT to the last wait stored). Then:

- single: one `payment/received` at a time, on an otherwise idle daemon, for `--singles`
  different orders; the latency is from the event INSERT's commit to the start of the step
  after the wait (the wait resolved, the run claimed and replayed), and the check that exactly
  that run, and no other, moved on;
- bulk: matching events for every remaining run in one INSERT; the time until all runs have
  completed, from the first payment's `received_at` to the last run's `finished_at` (the
  database clock).

- lookback: on the same database afterwards (every run completed, each of its
  `payment/received` events consumed by its run's wait), the look back a worker makes when it
  stores waits, for `--lookback-waits` waits of existing runs at once: as a plain wait makes it
  (since now: nothing in the window) and as a wait with `lookback="run"` makes it (the window
  holds every event of the name, and each run's own event is skipped as consumed). Medians of
  `--lookback-rounds` rounds, per wait, and their ratio.

Also prints the plan of the resolving query. Writes bench/results/waits.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.pickup import (
    Daemon,
    create_database,
    drop_database,
    percentile,
    server_url,
    wait_for,
    write_result,
)
from bench.throughput import pgbench
from orchestrator import Context, Orchestrator, event
from orchestrator.db import waits
from tests.e2e.apps.common import _conn

APP_PATH = "bench.waits:app"

app = Orchestrator()


def _note(order_id: int) -> None:
    _conn().execute(
        "INSERT INTO public.pickup (event_id, started) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (str(order_id), time.time()),
    )


@app.function("await-payment", trigger=event("order/created"))
def await_payment(ctx: Context) -> int:
    paid = ctx.step.wait_for_event(
        "paid", event="payment/received", match="data.order_id", timeout=timedelta(hours=1)
    )
    assert paid is not None
    ctx.step.run("after", _note, ctx.event.data["order_id"])
    return int(paid.data["order_id"])


def _payment(conn: psycopg.Connection[Any], order_id: int) -> float:
    conn.execute(
        "INSERT INTO orchestrator.events (name, data) "
        "VALUES ('payment/received', jsonb_build_object('order_id', %s::int))",
        (order_id,),
    )
    return time.time()


def _count(conn: psycopg.Connection[Any], query: str) -> int:
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def singles(conn: psycopg.Connection[Any], n: int, total: int) -> list[float]:
    latencies = []
    for k in range(n):
        order_id = (k * 7919) % total
        committed = _payment(conn, order_id)
        wait_for(conn, "SELECT count(*) FROM public.pickup", k + 1, 30)
        row = conn.execute(
            "SELECT started FROM public.pickup WHERE event_id = %s", (str(order_id),)
        ).fetchone()
        if row is None:
            raise SystemExit(f"the run of order {order_id} did not move on; another one did")
        latencies.append((float(row[0]) - committed) * 1000)
        time.sleep(0.1)  # idle again before the next one
    waiting = _count(conn, "SELECT count(*) FROM orchestrator.runs WHERE status = 'waiting'")
    if waiting != total - n:
        raise SystemExit(f"{waiting} runs still waiting, expected {total - n}")
    return latencies


def bulk(conn: psycopg.Connection[Any], total: int, done: set[int]) -> tuple[float, int]:
    rest = [i for i in range(total) if i not in done]
    conn.execute(
        "INSERT INTO orchestrator.events (name, data) SELECT 'payment/received', "
        "jsonb_build_object('order_id', i) FROM unnest(%s::int[]) AS i",
        (rest,),
    )
    wait_for(conn, "SELECT count(*) FROM orchestrator.runs WHERE status = 'completed'", total, 300)
    row = conn.execute(
        "SELECT extract(epoch FROM (SELECT max(finished_at) FROM orchestrator.runs) - "
        "(SELECT min(received_at) FROM orchestrator.events "
        " WHERE name = 'payment/received' AND data->>'order_id' = ANY(%s::text[])))",
        ([str(i) for i in rest],),
    ).fetchone()
    wrong = _count(
        conn,
        "SELECT count(*) FROM orchestrator.runs WHERE output <> events->0->'data'->'order_id'",
    )
    if wrong:
        raise SystemExit(f"{wrong} runs were resolved by another order's event")
    return float(row[0]) if row else 0.0, len(rest)


def lookback_cost(url: str, n: int, rounds: int) -> dict[str, Any]:
    """The look back of `n` waits, plain and with `lookback="run"` (see the module doc)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT id::text, (events -> 0 -> 'data' ->> 'order_id')::int, created_at, now() "
            "FROM orchestrator.runs ORDER BY random() LIMIT %s",
            (n,),
        ).fetchall()

        def batch(back: bool) -> list[waits.Wait]:
            return [
                waits.Wait(
                    run_id, "paid", "payment/received", "data.order_id", str(order), None,
                    since=created if back else now, expires_at=None,
                )
                for run_id, order, created, now in rows
            ]  # fmt: skip

        timings: dict[str, list[float]] = {"plain": [], "lookback": []}
        found = {"plain": 0, "lookback": 0}
        for _ in range(rounds + 1):  # the first round plans the statement
            for name, back in (("plain", False), ("lookback", True)):
                started = time.perf_counter()
                seen = waits.look_back(conn, batch(back))
                timings[name].append((time.perf_counter() - started) * 1e6 / len(rows))
                found[name] = sum(len(events) for events in seen)
    plain, back = (statistics.median(timings[k][1:]) for k in ("plain", "lookback"))
    return {
        "waits": len(rows),
        "plain_us_per_wait": round(plain, 1),
        "lookback_us_per_wait": round(back, 1),
        "ratio": round(back / plain, 2),
        "found": found,  # 0 and 0: the window of a plain wait is empty, the rest was consumed
    }


def plan(url: str) -> str:
    params = {
        "names": ["payment/received"],
        "datas": [json.dumps({"order_id": 1})],
        "received": [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())],
        "ids": ["e"],
    }
    with psycopg.connect(url) as conn:
        rows = conn.execute("EXPLAIN " + waits._CANDIDATES, params).fetchall()
    return "\n".join(str(r[0]) for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--singles", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--lookback-waits", type=int, default=500)
    parser.add_argument("--lookback-rounds", type=int, default=5)
    args = parser.parse_args(argv)

    server, kind = server_url()
    name, url = create_database(server)
    config = {"workers": args.workers, "concurrency": args.concurrency}
    log_path = Path(tempfile.mkdtemp(prefix="waits-")) / "daemon.log"
    try:
        base = pgbench(url, 1, args.pgbench_seconds)
    except BaseException:
        drop_database(server, name)
        raise
    daemon = Daemon(url, log_path, config, app=APP_PATH)
    try:
        daemon.wait_serving()
        with psycopg.connect(url, autocommit=True) as conn:
            started = time.monotonic()
            conn.execute(
                "INSERT INTO orchestrator.events (name, data) SELECT 'order/created', "
                "jsonb_build_object('order_id', i) FROM generate_series(0, %s - 1) AS i",
                (args.runs,),
            )
            wait_for(conn, "SELECT count(*) FROM orchestrator.waits", args.runs, 300)
            to_waiting = time.monotonic() - started
            conn.execute("ANALYZE orchestrator.waits")
            time.sleep(1.0)  # idle
            single = singles(conn, args.singles, args.runs)
            done = {(k * 7919) % args.runs for k in range(args.singles)}
            bulk_s, bulk_n = bulk(conn, args.runs, done)
        the_plan = plan(url)
        back = lookback_cost(url, args.lookback_waits, args.lookback_rounds)
    finally:
        code = daemon.stop()
        drop_database(server, name)

    ordered = sorted(single)
    bulk_rate = bulk_n / bulk_s if bulk_s else None
    waiting_rate = args.runs / to_waiting
    result = {
        "benchmark": "waits",
        "runs": args.runs,
        "pgbench_1": base,
        "to_waiting_s": round(to_waiting, 3),
        "to_waiting_runs_per_s": round(waiting_rate, 1),
        "to_waiting_ratio_to_pgbench_1": round(waiting_rate / base, 3),
        "single": {
            "events": len(single),
            "p50_ms": round(percentile(ordered, 50), 3),
            "max_ms": round(ordered[-1], 3),
            "mean_ms": round(statistics.fmean(ordered), 3),
        },
        "bulk": {
            "events": bulk_n,
            "seconds": round(bulk_s, 3),
            "runs_per_s": round(bulk_rate, 1) if bulk_rate else None,
            "ratio_to_pgbench_1": round(bulk_rate / base, 3) if bulk_rate else None,
        },
        "lookback": back,
        "plan_uses_index": "waits_match" in the_plan and "Seq Scan on waits" not in the_plan,
        "database": kind,
        "daemon": config | {"exit_code": code},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = write_result("waits.json", result)
    print(f"baseline pgbench single-row INSERT, 1 client: {base:,.0f} tps ({kind} Postgres)")
    print(
        f"{args.runs:,} runs waiting on payment/received in {to_waiting:.1f} s "
        f"({waiting_rate:,.0f} runs/s, {waiting_rate / base:.3f} x pgbench(1))"
    )
    print(
        f"  one event resolves exactly its run: p50 {result['single']['p50_ms']} ms, "
        f"max {result['single']['max_ms']} ms over {len(single)} events (commit -> next step)"
    )
    print(
        f"  {bulk_n:,} matching events in one INSERT: all resolved and completed in "
        f"{bulk_s:.2f} s ({result['bulk']['runs_per_s']} runs/s, "
        f"{result['bulk']['ratio_to_pgbench_1']} x pgbench(1))"
    )
    print(
        f"  look back of {back['waits']} waits at once, {args.runs:,} events of the name: "
        f'plain {back["plain_us_per_wait"]} us/wait, lookback="run" '
        f"{back['lookback_us_per_wait']} us/wait ({back['ratio']} x plain; found "
        f"{back['found']['plain']} and {back['found']['lookback']}: each run's event consumed)"
    )
    print("  plan of the resolving query:")
    print("\n".join("    " + line for line in the_plan.splitlines()))
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
