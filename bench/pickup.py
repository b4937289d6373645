"""Pickup latency: from an event INSERT's commit to the moment the first step body starts.

    python bench/pickup.py [--events 200] [--interval 0.02] [--workers 2] [--concurrency 32]

Creates a fresh database (in ORCHESTRATOR_BENCH_DATABASE_URL's server if set, otherwise in the
embedded Postgres under .orchestrator/bench-pgdata), migrates it, starts a real daemon as a
subprocess serving this module's `app`, waits until it is idle, then inserts events one at a
time with plain SQL on an autocommit connection. The time the INSERT returns (commit done) and
the time the step body starts are both taken with `time.time()` on this machine. Prints
p50/p95/p99/max in milliseconds and writes bench/results/pickup.json.

The same is measured, in the same run, for an `async def` function whose step body is
`async def` (run on a worker's event loop): its events alternate with the plain function's,
and its figures go under "async" in the JSON, with the ratio of the two p50s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from orchestrator import Context, Orchestrator, event
from orchestrator.context import AsyncContext
from tests.e2e.apps.common import _conn

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
APP_PATH = "bench.pickup:app"  # bench/ is a namespace package under the repository root
EVENT = "bench/pickup"
ASYNC_EVENT = "bench/pickup-async"
NOTE_SQL = "INSERT INTO public.pickup (event_id, started) VALUES (%s, %s) ON CONFLICT DO NOTHING"

# -- the app the daemon serves ------------------------------------------------------------------

app = Orchestrator()


def _note_start(event_id: str) -> None:
    started = time.time()  # first thing the step body does
    _conn().execute(NOTE_SQL, (event_id, started))


@app.function("pickup", trigger=event(EVENT))
def pickup(ctx: Context) -> None:
    ctx.step.run("first", _note_start, ctx.event.id)


_async_conns: list[psycopg.AsyncConnection[Any]] = []  # one per worker (one loop each)


async def _note_start_async(event_id: str) -> None:
    started = time.time()  # first thing the step body does
    if not _async_conns:
        url = os.environ["ORCHESTRATOR_DATABASE_URL"]
        _async_conns.append(await psycopg.AsyncConnection.connect(url, autocommit=True))
    await _async_conns[0].execute(NOTE_SQL, (event_id, started))


@app.function("pickup-async", trigger=event(ASYNC_EVENT))
async def pickup_async(ctx: AsyncContext) -> None:
    await ctx.step.run("first", _note_start_async, ctx.event.id)


# -- the benchmark ------------------------------------------------------------------------------


def server_url() -> tuple[str, str]:
    url = os.environ.get("ORCHESTRATOR_BENCH_DATABASE_URL")
    if url:
        from orchestrator.db.connect import libpq_url

        return libpq_url(url), "configured"
    from orchestrator.db.connect import embedded_url

    return embedded_url(str(ROOT / ".orchestrator" / "bench-pgdata")), "embedded"


def with_database(url: str, name: str) -> str:
    from orchestrator.db.connect import libpq_url

    return libpq_url(make_url(url).set(database=name).render_as_string(hide_password=False))


def create_database(server: str) -> tuple[str, str]:
    from orchestrator.db import migrate
    from orchestrator.db.database import Database

    name = f"orchestrator_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = with_database(server, name)
    db = Database(url, pool_size=1)
    migrate.upgrade(db.engine)
    db.dispose()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.pickup (event_id text PRIMARY KEY, started double precision)"
        )
    return name, url


def drop_database(server: str, name: str) -> None:
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Daemon:
    def __init__(
        self, url: str, log_path: Path, config: dict[str, Any], app: str = APP_PATH
    ) -> None:
        self.log_path = log_path
        env = dict(os.environ, ORCHESTRATOR_DATABASE_URL=url, ORCHESTRATOR_LOG_FORMAT="json")
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env.update({f"ORCHESTRATOR_{k.upper()}": str(v) for k, v in config.items()})
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "orchestrator.cli", "run", "--app", app],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_serving(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"daemon exited with {self.proc.returncode}; see {self.log_path}")
            if '"daemon serving"' in self.log_path.read_text(errors="replace"):
                return
            time.sleep(0.05)
        raise SystemExit(f"daemon not serving after {timeout}s; see {self.log_path}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        return self.proc.returncode


def wait_for(conn: psycopg.Connection[Any], query: str, want: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(query).fetchone()
        if row and row[0] == want:
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout}s waiting for {query!r} to be {want}")


def fill_idle(url: str, n: int, function_id: str) -> float:
    """Insert `n` idle runs of `function_id`, half sleeping and half waiting (for an event,
    with a timeout), all due a year from now; returns the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        for status, count in (("sleeping", n - n // 2), ("waiting", n // 2)):
            conn.execute(
                "INSERT INTO orchestrator.runs (function_id, status, due_at, attempts) "
                "SELECT %s, %s, now() + interval '365 days', 1 FROM generate_series(1, %s)",
                (function_id, status, count),
            )
        conn.execute("VACUUM ANALYZE orchestrator.runs")
    return time.monotonic() - started


def wait_idle(conn: psycopg.Connection[Any], expected_started: int) -> None:
    """Every event ingested, every run finished, every step body recorded."""
    wait_for(conn, "SELECT count(*) FROM public.pickup", expected_started, 60)
    wait_for(conn, "SELECT count(*) FROM orchestrator.events WHERE ingested_at IS NULL", 0, 60)
    wait_for(
        conn,
        "SELECT count(*) FROM orchestrator.runs "
        "WHERE status NOT IN ('completed', 'sleeping', 'waiting')",
        0,
        60,
    )


def insert_event(conn: psycopg.Connection[Any], event_id: str, name: str = EVENT) -> float:
    """INSERT one event (autocommit: the statement's return means committed); return that time."""
    conn.execute(
        "INSERT INTO orchestrator.events (id, name, data) VALUES (%s, %s, '{}')", (event_id, name)
    )
    return time.time()


def send_bulk(url: str, name: str, n: int, data: dict[str, Any]) -> datetime:
    """Insert `n` events in one statement; returns the database time just after its commit."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.events (name, data) SELECT %s, %s::jsonb "
            "FROM generate_series(1, %s)",
            (name, json.dumps(data), n),
        )
        row = conn.execute("SELECT clock_timestamp()").fetchone()
        assert row is not None
        return row[0]


def wait_completed(url: str, function_id: str, n: int, started: datetime, timeout: float) -> float:
    """Seconds from `started` to the last completion, once `n` runs have completed.

    Polls rarely (a count over the runs table costs the database milliseconds, which would be
    taken from the engine being measured) and reads the end from the runs' own finish times.
    """
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*), max(finished_at) FROM orchestrator.runs "
                "WHERE function_id = %s AND status = 'completed'",
                (function_id,),
            ).fetchone()
            if row and row[0] >= n:
                return float((row[1] - started).total_seconds())
            time.sleep(0.25)
    raise SystemExit(f"{function_id}: {n} runs did not complete in {timeout}s")


def write_result(filename: str, result: dict[str, Any]) -> Path:
    """Write a benchmark's figures to bench/results/`filename` (read by bench/report.py)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / filename
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    rank = max(1, math.ceil(q / 100 * len(sorted_ms)))
    return sorted_ms[min(rank, len(sorted_ms)) - 1]


def measure(
    url: str, events: int, interval: float, warmup: int, names: tuple[str, ...] = (EVENT,)
) -> dict[str, dict[str, list[float]]]:
    """Pickup of `events` events of each name in `names`, sent in turn (so that every kind
    sees the same daemon, database and machine), after `warmup` of each; by name."""
    with psycopg.connect(url, autocommit=True) as conn:
        for i in range(warmup):
            for name in names:
                insert_event(conn, f"{name}:warmup-{i}", name)
                time.sleep(interval)
        wait_idle(conn, warmup * len(names))
        time.sleep(0.5)  # let the daemon settle back into waiting for a notification
        committed: dict[str, float] = {}
        for i in range(events):
            for name in names:
                event_id = f"{name}:pickup-{i}"
                committed[event_id] = insert_event(conn, event_id, name)
                time.sleep(interval)
        wait_idle(conn, (warmup + events) * len(names))
        rows = conn.execute(
            "SELECT p.event_id, p.started, extract(epoch FROM r.created_at)::float8, "
            "extract(epoch FROM r.started_at)::float8 FROM public.pickup p "
            "JOIN orchestrator.runs r ON r.event_id = p.event_id "
            "WHERE p.event_id = ANY(%s)",
            (list(committed),),
        ).fetchall()
    stages: dict[str, dict[str, list[float]]] = {
        name: {"total": [], "ingest": [], "claim": [], "execute": []} for name in names
    }
    for event_id, body, created, claimed in rows:
        at = committed[event_id]
        mine = stages[event_id.rsplit(":", 1)[0]]
        mine["total"].append((body - at) * 1000)
        mine["ingest"].append((created - at) * 1000)  # commit -> ingest transaction began
        mine["claim"].append((claimed - created) * 1000)  # -> claim transaction began
        mine["execute"].append((body - claimed) * 1000)  # -> step body started in a worker
    return stages


def summary(stages: dict[str, list[float]]) -> tuple[dict[str, float], dict[str, Any]]:
    """The total's percentiles, and each stage's p50 and p95."""
    ordered = sorted(stages["total"])
    breakdown = {
        name: {
            "p50_ms": round(percentile(sorted(v), 50), 3),
            "p95_ms": round(percentile(sorted(v), 95), 3),
        }
        for name, v in stages.items()
        if name != "total"
    }
    figures = {
        "p50_ms": percentile(ordered, 50),
        "p95_ms": percentile(ordered, 95),
        "p99_ms": percentile(ordered, 99),
        "max_ms": ordered[-1],
        "min_ms": ordered[0],
        "mean_ms": statistics.fmean(ordered),
    }
    return figures, breakdown


def print_figures(title: str, figures: dict[str, float], breakdown: dict[str, Any]) -> None:
    print(f" {title}:")
    for key in ("p50_ms", "p95_ms", "p99_ms", "max_ms"):
        print(f"  {key[:-3]:>4}  {figures[key]:8.2f} ms")
    print("  stages (p50 / p95; database timestamps are transaction starts):")
    for name, figs in breakdown.items():
        print(f"    {name:<8} {figs['p50_ms']:7.2f} / {figs['p95_ms']:7.2f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200)
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--idle", type=int, default=0, help="sleeping runs to fill in first (W5)")
    args = parser.parse_args(argv)

    server, kind = server_url()
    name, url = create_database(server)
    RESULTS.mkdir(parents=True, exist_ok=True)
    config = {"workers": args.workers, "concurrency": args.concurrency}
    if args.idle:
        fill_idle(url, args.idle, "pickup")
    log_path = Path(tempfile.mkdtemp(prefix="pickup-")) / "daemon.log"  # kept if the run fails
    daemon = Daemon(url, log_path, config)
    try:
        daemon.wait_serving()
        by_kind = measure(url, args.events, args.interval, args.warmup, (EVENT, ASYNC_EVENT))
        stages, async_stages = by_kind[EVENT], by_kind[ASYNC_EVENT]
        with psycopg.connect(url) as conn:
            pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    finally:
        code = daemon.stop()
        drop_database(server, name)

    figures, breakdown = summary(stages)
    async_figures, async_breakdown = summary(async_stages)
    ratio = round(async_figures["p50_ms"] / figures["p50_ms"], 3)
    result = {
        "benchmark": "pickup",
        "what": "event INSERT commit returned -> first step body started",
        "events": len(stages["total"]),
        "idle_runs": args.idle,
        "interval_ms": args.interval * 1000,
        **{k: round(v, 3) for k, v in figures.items()},
        "stages": breakdown,
        "async": {k: round(v, 3) for k, v in async_figures.items()} | {"stages": async_breakdown},
        "async_over_sync_p50": ratio,
        "database": kind,
        "postgres": pg_version,
        "daemon": config | {"exit_code": code},
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    shutil.rmtree(log_path.parent, ignore_errors=True)
    out = write_result("pickup.json" if not args.idle else "pickup-idle.json", result)
    print(
        f"pickup latency over {len(stages['total'])} events each ({kind} Postgres {pg_version}, "
        f"{args.workers}x{args.concurrency} workers, {args.interval * 1000:g} ms apart, "
        f"{args.idle:,} idle runs):"
    )
    print_figures("plain def function, plain step body", figures, breakdown)
    print_figures("async def function, async def step body", async_figures, async_breakdown)
    print(f"async / plain p50: {ratio}")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
