"""Many async runs waiting on I/O at once: 5,000 runs whose one step awaits `asyncio.sleep(2)`.

    python bench/async_sleep.py [--runs 5000] [--seconds 2] [--workers 2]

One daemon with `--workers` worker processes and the default `async_concurrency` (500 runs
per worker on its event loop) serves an `async def` function whose step body is
`await asyncio.sleep(seconds)`, standing for a call to a slow service. The events are
inserted in one statement; the figure is the wall time from that commit to the last
completion, against two references: what the same work would take on the plain-function
threads (runs x seconds / (workers x concurrency), `concurrency` 32 threads per worker), and
the floor of the async lane (runs x seconds / (workers x async_concurrency)).

Creates a fresh database like bench/pickup.py (ORCHESTRATOR_BENCH_DATABASE_URL's server, or
the embedded one); writes bench/results/async_sleep.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pickup import (
    Daemon,
    create_database,
    drop_database,
    send_bulk,
    server_url,
    wait_completed,
    write_result,
)
from orchestrator import Orchestrator, event
from orchestrator.config import Config
from orchestrator.context import AsyncContext

APP_PATH = "bench.async_sleep:app"
app = Orchestrator()


async def slow_call(seconds: float) -> float:
    await asyncio.sleep(seconds)
    return seconds


@app.function("bench-async-sleep", trigger=event("bench/async-sleep"))
async def async_sleep(ctx: AsyncContext) -> float:
    return await ctx.step.run("call", slow_call, float(ctx.event.data["seconds"]))


def measure(url: str, runs: int, seconds: float) -> float:
    """Seconds from the events' commit to the last of the `runs` completions."""
    started = send_bulk(url, "bench/async-sleep", runs, {"seconds": seconds})
    return wait_completed(url, "bench-async-sleep", runs, started, timeout=900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=2.0, help="each step's await")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    defaults = Config()
    threads, lane = defaults.concurrency, defaults.async_concurrency
    server, kind = server_url()
    name, url = create_database(server)
    log = Path(tempfile.mkdtemp(prefix="async-sleep-")) / "daemon.log"
    try:
        daemon = Daemon(url, log, {"workers": args.workers}, app=APP_PATH)
        try:
            daemon.wait_serving()
            wall = measure(url, args.runs, args.seconds)
        finally:
            daemon.stop()
    finally:
        drop_database(server, name)
    on_threads = args.runs * args.seconds / (args.workers * threads)
    floor = math.ceil(args.runs / (args.workers * lane)) * args.seconds
    result: dict[str, Any] = {
        "runs": args.runs,
        "step_await_s": args.seconds,
        "workers": args.workers,
        "async_concurrency": lane,
        "wall_s": round(wall, 2),
        "runs_per_s": round(args.runs / wall, 1),
        "on_threads_s": round(on_threads, 1),
        "speedup_vs_threads": round(on_threads / wall, 1),
        "async_floor_s": floor,
        "database": kind,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(
        f"{args.runs:,} async runs awaiting {args.seconds:g} s each, {args.workers} workers x "
        f"{lane} async runs ({kind} Postgres): {wall:.1f} s from send to last completion "
        f"({result['runs_per_s']:,} runs/s)"
    )
    print(
        f"  on the plain threads ({args.workers} x {threads}) the same awaits would take "
        f"{on_threads:.0f} s: x{result['speedup_vs_threads']}; the async lane's floor is "
        f"{floor:g} s"
    )
    write_result("async_sleep.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
