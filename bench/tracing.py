"""The cost of tracing: W1 throughput and pickup latency with tracing off and on, alternating
in the same run.

    python bench/tracing.py [--w1 5000] [--events 100] [--rounds 2] [--baseline REV]

Each round measures both modes, off then on, each on a fresh database and a fresh daemon
serving this module's `app`:

- W1: `--w1` single-step runs from events inserted in one statement (as bench/throughput.py
  measures it), each event carrying a trace context of its own; runs/s from the insert's
  commit to the last completion;
- pickup: `--events` events inserted one at a time, from the INSERT's commit to the step body's
  start (as bench/pickup.py measures it); p50 and p95.

"Off" is the default daemon (no OTEL_* variables). With `--baseline REV` (a git revision from
before tracing, e.g. the commit that added migration 0016), each round first measures a third
mode, "before": the daemon of that revision's code (extracted with `git archive` into a
temporary directory), so that off/before shows what the tracing code costs when it is off.

"On" exports every span over OTLP/HTTP (`OTEL_TRACES_EXPORTER=otlp`, the batch processor's
defaults but a 200 ms delay) to a receiver this script runs (tests/e2e/otlp.py), which decodes
every request as a collector would. Prints each round's figures and the ratios of the medians
over rounds (on/off, off/before); writes bench/results/tracing.json.

First, in this process, it times what tracing adds to each run's hot path, per run: off (the
no-op tracer, the carrier read of a send outside any span, the log processor outside a span),
and on (a run span with one step span, started and ended, on an SDK provider without export).
These figures are steadier than the daemon's on a shared machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
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

APP_PATH = "bench.tracing:app"
W1_EVENT = "bench/traced-one"
app = Orchestrator()


@app.function("traced-one", trigger=event(W1_EVENT))
def traced_one(ctx: Context) -> dict[str, Any]:
    return ctx.step.run("only", lambda: {"ok": True})


@app.function("pickup", trigger=event(EVENT))
def pickup(ctx: Context) -> None:
    ctx.step.run("first", _note_start, ctx.event.id)


def send_traced_bulk(url: str, n: int, *, traced: bool = True) -> Any:
    """Insert `n` events in one statement, each with a trace context of its own (as traced
    senders record them; none with `traced=False`); returns the database time just after its
    commit."""
    context = (
        "jsonb_build_object('traceparent', '00-' || md5(g::text || random()::text) || '-' || "
        "substr(md5(random()::text), 1, 16) || '-01')"
        if traced
        else "NULL::jsonb"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.events (name, data, trace_context) "
            f"SELECT %s, '{{}}'::jsonb, {context} FROM generate_series(1, %s) g",
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


ROOT = Path(__file__).resolve().parent.parent


def extract(revision: str) -> Path:
    """The code of `revision` in a temporary directory, with this script added (its app)."""
    where = Path(tempfile.mkdtemp(prefix="tracing-baseline-"))
    archive = subprocess.run(
        ["git", "archive", revision], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    shutil.copy(Path(__file__), where / "bench" / "tracing.py")
    return where


class RootedDaemon(Daemon):
    """bench/pickup.py's daemon, running the code under `root` instead of this checkout's."""

    def __init__(self, url: str, log_path: Path, config: dict[str, Any], root: Path) -> None:
        self.log_path = log_path
        env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=url, ORCHESTRATOR_LOG_FORMAT="json")
        env["PYTHONPATH"] = str(root)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update({f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in config.items()})
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "run", "--app", APP_PATH],
                cwd=root,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def one_mode(
    server: str, otel: dict[str, str], args: argparse.Namespace, root: Path | None = None
) -> dict[str, Any]:
    name, url = create_database(server)
    log = Path(tempfile.mkdtemp(prefix="tracing-")) / "daemon.log"
    config = {"workers": args.workers, "concurrency": args.concurrency}
    try:
        with environment(otel):
            daemon = (
                Daemon(url, log, config, app=APP_PATH)
                if root is None
                else RootedDaemon(url, log, config, root)
            )
        try:
            daemon.wait_serving()
            started = send_traced_bulk(url, args.w1, traced=not args.untraced)
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
    parser.add_argument("--baseline", help="a git revision from before tracing, measured too")
    parser.add_argument(
        "--untraced",
        action="store_true",
        help="W1's events carry no trace context (senders that do not trace)",
    )
    args = parser.parse_args(argv)
    from tests.e2e.otlp import Receiver

    server, kind = server_url()
    baseline = extract(args.baseline) if args.baseline else None
    hooks = micro()
    print(f"tracing hooks per run, in process: {hooks}")
    rounds: list[dict[str, Any]] = []
    try:
        with Receiver() as receiver:
            on = receiver.env(delay_ms=200) | {"OTEL_SERVICE_NAME": "orchestrator-bench"}
            for i in range(args.rounds):
                figures: dict[str, Any] = {}
                if baseline is not None:
                    figures["before"] = one_mode(server, {}, args, baseline)
                figures["off"] = one_mode(server, {}, args)
                received = len(receiver.spans())
                figures["on"] = one_mode(server, on, args)
                figures["spans_received"] = len(receiver.spans()) - received
                rounds.append(figures)
                print(f"round {i + 1}: {figures}")
    finally:
        if baseline is not None:
            shutil.rmtree(baseline, ignore_errors=True)
    ratios = {"on_over_off": _ratios(rounds, "on", "off")}
    if baseline is not None:
        ratios["off_over_before"] = _ratios(rounds, "off", "before")
    result = {
        "benchmark": "tracing",
        "w1_runs": args.w1,
        "pickup_events": args.events,
        "rounds": rounds,
        "baseline": args.baseline,
        "hooks": hooks,
        **ratios,
        "database": kind,
        "daemon": {"workers": args.workers, "concurrency": args.concurrency},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = write_result("tracing.json", result)
    print(f"medians of {args.rounds} alternating rounds, {kind} Postgres ({out}):")
    for name, figures in ratios.items():
        print(
            f"  {name.replace('_over_', ' / ')}: W1 runs/s x{figures['w1_runs_per_s']}, "
            f"pickup p50 x{figures['pickup_p50_ms']}, p95 x{figures['pickup_p95_ms']}"
        )
    return 0


def micro(n: int = 20000) -> dict[str, float]:
    """Microseconds per run of the tracing hooks, off and on (no export)."""
    from opentelemetry.sdk.trace import TracerProvider

    from orchestrator import tracecontext
    from orchestrator.engine.executor import Task
    from orchestrator.engine.tracer import NOTRACE
    from orchestrator.log import add_trace_ids
    from orchestrator.runtime.tracing import OtelTracer

    task = Task("r", "f", "t", [], 1, time_now(), time_now(), trace_context=None)
    traced = Task("r", "f", "t", [], 1, time_now(), time_now(), trace_context=CARRIER)
    started = time.perf_counter()
    for _ in range(n):
        NOTRACE.run(task)
        tracecontext.current_json()
        add_trace_ids(None, "info", {"event": "x"})
    off = (time.perf_counter() - started) / n * 1e6
    tracer = OtelTracer(TracerProvider().get_tracer("bench"))
    started = time.perf_counter()
    for _ in range(n):
        run = tracer.run(traced)
        assert run is not None
        step = run.step("only", "run", 1)
        step.end("completed")
        run.end("completed")
    on = (time.perf_counter() - started) / n * 1e6
    return {"off_us_per_run": round(off, 3), "on_us_per_run": round(on, 2)}


CARRIER = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


def time_now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def _ratios(rounds: list[dict[str, Any]], top: str, bottom: str) -> dict[str, float]:
    """Per figure, the median over rounds of `top` over the median of `bottom`."""
    return {
        key: round(
            statistics.median(r[top][key] for r in rounds)
            / statistics.median(r[bottom][key] for r in rounds),
            3,
        )
        for key in ("w1_runs_per_s", "pickup_p50_ms", "pickup_p95_ms")
    }


if __name__ == "__main__":
    raise SystemExit(main())
