"""What sending costs the application: `send`, `send_async`, the outbox, `send_many`.

    python bench/client_send.py [--sends 2000] [--bulk 100000]

Each figure is measured on a fresh database (ORCHESTRATOR_BENCH_DATABASE_URL's server, or
the embedded one, as bench/pickup.py makes it), with no daemon running:

- `send`, one after another, each its own transaction on the app's own connection;
- `send_async`, one after another, and 4 at a time (the pool's size), on the app's own pool;
- `send(conn=...)` in the caller's transaction: many sends, one commit;
- `send_many` of `--bulk` small events in one call.

Prints the figures and writes bench/results/client_send.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pickup import create_database, drop_database, server_url, write_result
from orchestrator import Orchestrator


def _latencies(n: int, send: Callable[[int], Any]) -> dict[str, float]:
    took = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        send(i)
        took.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    took.sort()
    return {
        "per_second": round(n / total),
        "median_ms": round(statistics.median(took) * 1000, 3),
        "p99_ms": round(took[int(len(took) * 0.99)] * 1000, 3),
    }


async def _async_figures(app: Orchestrator, n: int) -> dict[str, Any]:
    await app.send_async("bench/warm-up")
    took = []
    start = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        await app.send_async("bench/async", {"i": i})
        took.append(time.perf_counter() - t0)
    sequential = time.perf_counter() - start
    took.sort()
    gate = asyncio.Semaphore(4)

    async def one(i: int) -> None:
        async with gate:
            await app.send_async("bench/async-4", {"i": i})

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    concurrent = time.perf_counter() - start
    await app.aclose()
    return {
        "sequential": {
            "per_second": round(n / sequential),
            "median_ms": round(statistics.median(took) * 1000, 3),
            "p99_ms": round(took[int(len(took) * 0.99)] * 1000, 3),
        },
        "four_at_a_time_per_second": round(n / concurrent),
    }


def _outbox(url: str, app: Orchestrator, n: int) -> dict[str, float]:
    with psycopg.connect(url) as conn:
        start = time.perf_counter()
        for i in range(n):
            app.send("bench/outbox", {"i": i}, conn=conn)
        conn.commit()
        total = time.perf_counter() - start
    return {"per_second": round(n / total), "mean_ms": round(total / n * 1000, 3)}


def _bulk(app: Orchestrator, n: int) -> dict[str, float]:
    events = [{"name": "bench/bulk", "data": {"i": i}} for i in range(n)]
    start = time.perf_counter()
    ids = app.send_many(events)
    total = time.perf_counter() - start
    assert len(ids) == n
    return {"events": n, "seconds": round(total, 3), "per_second": round(n / total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sends", type=int, default=2000)
    parser.add_argument("--bulk", type=int, default=100_000)
    args = parser.parse_args()
    server, where = server_url()
    name, url = create_database(server)
    app = Orchestrator(url)
    try:
        app.send("bench/warm-up")
        figures: dict[str, Any] = {"server": where, "sends": args.sends}
        figures["send"] = _latencies(args.sends, lambda i: app.send("bench/sync", {"i": i}))
        figures["send_async"] = asyncio.run(_async_figures(app, args.sends))
        figures["send_in_callers_transaction"] = _outbox(url, app, args.sends)
        figures["send_many"] = _bulk(app, args.bulk)
    finally:
        app.close()
        drop_database(server, name)
    print(json.dumps(figures, indent=2))
    write_result("client_send.json", figures)


if __name__ == "__main__":
    main()
