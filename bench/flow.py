"""What flow control costs: runs/s of the same one-step function with and without limits, and
the time of one limited claim against a large backlog.

    python bench/flow.py [--runs 3000] [--backlog 20000] [--workers 2] [--concurrency 32]

Creates a fresh database (like bench/pickup.py) and starts a real daemon. Then, for each
function in turn, sends `--runs` events in one INSERT and times them from the first run's
creation to the last one's end, by the database clock:

- `plain`: no flow control (the baseline, measured in the same run);
- `limited`: `Concurrency(limit=workers * concurrency)`, a limit as large as the daemon, so
  only the cost of the limited claim shows (each claim under the function's lock);
- `keyed`: `Concurrency(limit=1, key=...)` over 500 keys: the claim takes turns by key;
- `throttled`: `Throttle(100,000 per second)`, which never binds here: its cost only.

Then `--backlog` runs of `keyed` are queued with the daemon stopped, and one claim of that
function (room 64) is timed 20 times in this process: the fairness window reads the whole
due backlog. Writes bench/results/flow.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import structlog

from bench.pickup import Daemon, create_database, drop_database, server_url, wait_for, write_result
from orchestrator import Concurrency, Context, Orchestrator, Throttle, event

APP_PATH = "bench.flow:app"
CAPACITY = 64  # workers * concurrency of the daemon (set in main)
KEYS = 500

app = Orchestrator()


def _one_step(ctx: Context) -> int:
    return int(ctx.step.run("work", lambda: 1))


app.function("plain", trigger=event("b/plain"))(_one_step)
app.function("limited", trigger=event("b/limited"), concurrency=Concurrency(CAPACITY))(_one_step)
app.function("keyed", trigger=event("b/keyed"), concurrency=Concurrency(1, key="event.data.k"))(
    _one_step
)
app.function("throttled", trigger=event("b/throttled"), throttle=Throttle(100_000, 1.0))(_one_step)


def run_function(conn: psycopg.Connection[Any], fid: str, n: int) -> float:
    conn.execute(
        "INSERT INTO orchestrator.events (name, data) SELECT %s, jsonb_build_object('k', "
        "i %% %s) FROM generate_series(1, %s) AS i",
        (f"b/{fid}", KEYS, n),
    )
    wait_for(
        conn,
        f"SELECT count(*) FROM orchestrator.runs WHERE function_id = '{fid}' "
        "AND status = 'completed'",
        n,
        600,
    )
    row = conn.execute(
        "SELECT extract(epoch FROM max(finished_at) - min(created_at)) FROM orchestrator.runs "
        "WHERE function_id = %s",
        (fid,),
    ).fetchone()
    return float(row[0]) if row else 0.0


def claim_latency(url: str, backlog: int) -> list[float]:
    """Milliseconds of one claim of `keyed` with `backlog` runs of it queued."""
    from orchestrator.db import runs
    from orchestrator.db.direct import Direct
    from orchestrator.runtime.flow import FlowClaimer

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.runs (function_id, events, concurrency_keys, flow_key) "
            "SELECT 'keyed', '[]', ARRAY[(i %% %s)::text], (i %% %s)::text "
            "FROM generate_series(1, %s) AS i",
            (KEYS * 10, KEYS * 10, backlog),
        )
        conn.execute("ANALYZE orchestrator.runs")
    direct = Direct(url, application_name="bench-flow", settings=runs.CLAIM_SETTINGS)
    claimer = FlowClaimer(
        direct,
        {"keyed": app.functions["keyed"]},
        owner="00000000-0000-0000-0000-0000000000be",
        lease_seconds=60,
        poll_interval=1.0,
        log=structlog.get_logger(),
    )
    times = []
    try:
        for _ in range(20):
            claimer.poke()
            started = time.perf_counter()
            claimed = claimer.claim({False: 64, True: 0})  # room for 64 runs of plain functions
            times.append((time.perf_counter() - started) * 1000)
            if len(claimed) != 64:
                raise SystemExit(f"claimed {len(claimed)} of the backlog, expected 64")
    finally:
        direct.close()
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3000)
    parser.add_argument("--backlog", type=int, default=20_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    if args.workers * args.concurrency != CAPACITY:
        raise SystemExit(f"workers * concurrency must be {CAPACITY} (the limited function's)")

    server, kind = server_url()
    name, url = create_database(server)
    config = {"workers": args.workers, "concurrency": args.concurrency}
    log_path = Path(tempfile.mkdtemp(prefix="flow-")) / "daemon.log"
    seconds: dict[str, float] = {}
    daemon = Daemon(url, log_path, config, app=APP_PATH)
    try:
        daemon.wait_serving()
        with psycopg.connect(url, autocommit=True) as conn:
            run_function(conn, "plain", min(args.runs, 500))  # warm-up
            conn.execute("DELETE FROM orchestrator.runs")
            for fid in ("plain", "limited", "keyed", "throttled", "plain"):
                key = fid if fid not in seconds else f"{fid}_again"
                seconds[key] = run_function(conn, fid, args.runs)
                conn.execute("DELETE FROM orchestrator.runs")
                time.sleep(1.0)
        code = daemon.stop()
        claims = sorted(claim_latency(url, args.backlog))
    finally:
        daemon.stop()
        drop_database(server, name)

    base = args.runs / statistics.fmean([seconds["plain"], seconds["plain_again"]])
    rates = {fid: round(args.runs / s, 1) for fid, s in seconds.items()}
    result = {
        "benchmark": "flow",
        "runs": args.runs,
        "runs_per_s": rates,
        "ratio_to_plain": {fid: round(r / base, 3) for fid, r in rates.items()},
        "keyed_claim_ms": {
            "backlog": args.backlog,
            "p50": round(claims[len(claims) // 2], 2),
            "max": round(claims[-1], 2),
        },
        "database": kind,
        "daemon": config | {"exit_code": code},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_result("flow.json", result)
    print(f"flow control ({kind} Postgres), {args.runs:,} one-step runs each:")
    for fid, rate in rates.items():
        print(f"  {fid:<12} {rate:>8.1f} runs/s  ({result['ratio_to_plain'][fid]:.3f} x plain)")
    print(
        f"  one claim of a keyed function with {args.backlog:,} due runs: "
        f"p50 {result['keyed_claim_ms']['p50']} ms, max {result['keyed_claim_ms']['max']} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
