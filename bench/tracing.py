"""The cost of tracing: W1 throughput and pickup latency with tracing off and on, alternating
in the same run.

    python bench/tracing.py [--w1 5000] [--events 100] [--rounds 2]

Each round measures both modes, off then on, each on a fresh database and a fresh daemon
serving this module's `app`:

- W1: `--w1` single-step runs from events inserted in one statement (as bench/throughput.py
  measures it), each event carrying a trace context of its own; runs/s from the insert's
  commit to the last completion;
- pickup: `--events` events inserted one at a time, from the INSERT's commit to the step body's
  start (as bench/pickup.py measures it); p50 and p95.

"Off" is the default daemon (no OTEL_* variables). "On" exports every span over OTLP/HTTP
(`OTEL_TRACES_EXPORTER=otlp`, the batch processor's defaults but a 200 ms delay) to a receiver
this script runs (tests/e2e/otlp.py), which decodes every request as a collector would. Prints
each round's figures and the on/off ratios of the medians over rounds; writes
bench/results/tracing.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.pickup import (
    EVENT,
    Daemon,
    _note_start,
    create_database,
    drop_database,
    measure,
    server_url,
    summary,
    wait_completed,
    write_result,
)
from orchestrator import Context, Orchestrator, event
from tests.e2e.otlp import Receiver

APP_PATH = "bench.tracing:app"
W1_EVENT = "bench/traced-one"
app = Orchestrator()


@app.function("traced-one", trigger=event(W1_EVENT))
def traced_one(ctx: Context) -> dict[str, Any]:
    return ctx.step.run("only", lambda: {"ok": True})


@app.function("pickup", trigger=event(EVENT))
def pickup(ctx: Context) -> None:
    ctx.step.run("first", _note_start, ctx.event.id)


def send_traced_bulk(url: str, n: int) -> Any:
    """Insert `n` events in one statement, each with a trace context of its own (as traced
    senders record them); returns the database time just after its commit."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.events (name, data, trace_context) "
            "SELECT %s, '{}'::jsonb, jsonb_build_object('traceparent', '00-' || "
            "md5(g::text || random()::text) || '-' || "
            "substr(md5(random()::text), 1, 16) || '-01') FROM generate_series(1, %s) g",
            (W1_EVENT, n),
        )
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set `values` in os.environ while a daemon is started (its environment is copied)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def one_mode(server: str, otel: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    name, url = create_database(server)
    log = Path(tempfile.mkdtemp(prefix="tracing-")) / "daemon.log"
    config = {"workers": args.workers, "concurrency": args.concurrency}
    try:
        with environment(otel):
            daemon = Daemon(url, log, config, app=APP_PATH)
        try:
            daemon.wait_serving()
            started = send_traced_bulk(url, args.w1)
            seconds = wait_completed(url, "traced-one", args.w1, started, timeout=900)
            stages = measure(url, args.events, args.interval, args.warmup)[EVENT]
            figures, _ = summary(stages)
        finally:
            daemon.stop()
    finally:
        drop_database(server, name)
    return {
        "w1_runs_per_s": round(args.w1 / seconds, 1),
        "pickup_p50_ms": round(figures["p50_ms"], 3),
        "pickup_p95_ms": round(figures["p95_ms"], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w1", type=int, default=5000)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--interval", type=float, default=0.02)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args(argv)
    server, kind = server_url()
    rounds: list[dict[str, Any]] = []
    with Receiver() as receiver:
        on = receiver.env(delay_ms=200) | {"OTEL_SERVICE_NAME": "orchestrator-bench"}
        for i in range(args.rounds):
            off_figures = one_mode(server, {}, args)
            before = len(receiver.spans())
            on_figures = one_mode(server, on, args)
            exported = len(receiver.spans()) - before
            rounds.append({"off": off_figures, "on": on_figures, "spans_received": exported})
            print(f"round {i + 1}: off {off_figures}  on {on_figures}  spans {exported:,}")
    ratios = {
        key: round(
            statistics.median(r["on"][key] for r in rounds)
            / statistics.median(r["off"][key] for r in rounds),
            3,
        )
        for key in ("w1_runs_per_s", "pickup_p50_ms", "pickup_p95_ms")
    }
    result = {
        "benchmark": "tracing",
        "w1_runs": args.w1,
        "pickup_events": args.events,
        "rounds": rounds,
        "on_over_off": ratios,
        "database": kind,
        "daemon": {"workers": args.workers, "concurrency": args.concurrency},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = write_result("tracing.json", result)
    print(
        f"tracing on / off (medians of {args.rounds} alternating rounds, {kind} Postgres): "
        f"W1 runs/s x{ratios['w1_runs_per_s']}, pickup p50 x{ratios['pickup_p50_ms']}, "
        f"p95 x{ratios['pickup_p95_ms']}  ({out})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
