"""What retention costs the hot path: claim latency under steady traffic, without and then
with a retention pass deleting a large backlog, measured in the same run.

    python bench/retention.py [--runs 200000] [--steps 3] [--events 200000] [--rate 200]
                              [--baseline 20] [--batch-size 50] [--pause-factor 3]
                              [--database-url URL]

Creates a fresh database (like bench/pickup.py: in --database-url's or
ORCHESTRATOR_BENCH_DATABASE_URL's server if set, otherwise in the embedded Postgres), and
fills it with SQL `generate_series`: `--runs` completed runs from 30 days ago with `--steps`
steps each, `--events` ingested events as old (the first `--runs` of them the old runs'
triggers), and 1,000 live sleeping runs created among them (due in a year), with their
events. Then two threads drive steady traffic, as a daemon would:

- a producer inserts runs of a plain function, `--rate` a second;
- a claimer runs the daemon's claim statement (`runs.claim_due`, on a direct connection with
  the claim settings) every 5 ms and completes what it claimed; the claim statement alone is
  timed.

Phase (a) lasts `--baseline` seconds with no clean-up. Phase (b) lasts as long as one
retention pass (`runtime.retention.Cleaner`, with the daemon's pacing) that deletes the
backlog, on a thread of this process like the daemon's retention thread. Prints p50/p95/p99
claim latency of both phases and their ratio, the rows deleted and the pass's duration; checks
that the old rows are gone and the live runs untouched; writes bench/results/retention.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import threading
import time
import uuid
from typing import Any

import psycopg

from bench.pickup import create_database, drop_database, percentile, server_url, write_result
from orchestrator.config import Config
from orchestrator.db import runs
from orchestrator.db.connect import libpq_url
from orchestrator.db.direct import Direct
from orchestrator.runtime import retention as service

DAY = 86400.0
LIVE = 1000
CLAIM_EVERY = 0.005


def fill(url: str, n_runs: int, n_steps: int, n_events: int) -> float:
    """The backlog and the live runs; returns the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orchestrator.runs (function_id, status, event_id, events, output, "
            "attempts, created_at, started_at, finished_at, updated_at, due_at) "
            "SELECT 'old', 'completed', 'old-' || g, "
            '\'[{"name": "old/event", "data": {}}]\', '
            "'{\"ok\": true}', 1, t, t, t + interval '1 s', t + interval '1 s', t "
            "FROM (SELECT g, now() - interval '30 days' + g * interval '10 ms' AS t "
            "      FROM generate_series(1, %s) g) s",
            (n_runs,),
        )
        conn.execute(
            "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, output, "
            "duration_ms) SELECT r.id, 'step-' || i, i, 'run', 'completed', '{\"v\": 1}', 1 "
            "FROM orchestrator.runs r, generate_series(0, %s - 1) i",
            (n_steps,),
        )
        conn.execute(
            "INSERT INTO orchestrator.runs (function_id, status, event_id, created_at, due_at, "
            "attempts) SELECT 'live', 'sleeping', 'live-' || g, "
            "now() - interval '30 days' + g * interval '2 s', now() + interval '365 days', 1 "
            "FROM generate_series(1, %s) g",
            (LIVE,),
        )
        conn.execute(
            "INSERT INTO orchestrator.events (id, name, received_at, ingested_at) "
            "SELECT event_id, 'live/event', created_at, created_at FROM orchestrator.runs "
            "WHERE function_id = 'live'"
        )
        conn.execute(
            "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, wake_at) "
            "SELECT id, 'nap', 0, 'sleep', 'sleeping', due_at FROM orchestrator.runs "
            "WHERE function_id = 'live'"
        )
        conn.execute(
            "INSERT INTO orchestrator.events (id, name, received_at, ingested_at) "
            "SELECT 'old-' || g, 'old/event', now() - interval '30 days' + g * interval '10 ms', "
            "now() - interval '30 days' + g * interval '10 ms' FROM generate_series(1, %s) g",
            (n_events,),
        )
        for table in ("runs", "steps", "events"):
            conn.execute(f"VACUUM ANALYZE orchestrator.{table}")
    return time.monotonic() - started


def live_state(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url) as conn:
        return conn.execute(
            "SELECT r.id, r.status, r.due_at, e.id, count(s.step_id) FROM orchestrator.runs r "
            "LEFT JOIN orchestrator.steps s ON s.run_id = r.id "
            "LEFT JOIN orchestrator.events e ON e.id = r.event_id WHERE r.function_id = 'live' "
            "GROUP BY r.id, e.id ORDER BY r.id"
        ).fetchall()


class Traffic:
    """The producer and the claimer threads; `samples` holds (time, claim ms, runs claimed)."""

    def __init__(self, url: str, rate: float) -> None:
        self.url = url
        self.rate = rate
        self.stop = threading.Event()
        self.samples: list[tuple[float, float, int]] = []
        self.produced = 0
        self.threads = [
            threading.Thread(target=self._produce, name="producer"),
            threading.Thread(target=self._claim, name="claimer"),
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()

    def _produce(self) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            next_at = time.perf_counter()
            while not self.stop.is_set():
                conn.execute("INSERT INTO orchestrator.runs (function_id) VALUES ('work')")
                self.produced += 1
                next_at += 1 / self.rate
                time.sleep(max(0.0, next_at - time.perf_counter()))

    def _claim(self) -> None:
        direct = Direct(self.url, application_name="bench-claimer", settings=runs.CLAIM_SETTINGS)
        conn = direct.connection()
        owner = str(uuid.uuid4())
        next_at = time.perf_counter()
        try:
            while not self.stop.is_set():
                began = time.perf_counter()
                claimed = runs.claim_due(
                    conn, owner=owner, limit=16, lease_seconds=30, function_ids=["work"]
                )
                took = (time.perf_counter() - began) * 1000
                self.samples.append((began, took, len(claimed)))
                if claimed:
                    conn.execute(
                        "UPDATE orchestrator.runs SET status = 'completed', finished_at = now(), "
                        "updated_at = now(), lease_owner = NULL, lease_token = NULL, "
                        "lease_expires_at = NULL WHERE id = ANY(%s::uuid[])",
                        ([c.id for c in claimed],),
                    )
                next_at += CLAIM_EVERY
                time.sleep(max(0.0, next_at - time.perf_counter()))
        finally:
            direct.close()

    def window(self, start: float, end: float) -> list[float]:
        return [ms for at, ms, _ in self.samples if start <= at < end]


def latency(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "claims": len(ordered),
        **{f"p{q}_ms": round(percentile(ordered, q), 3) for q in (50, 95, 99)},
        "max_ms": round(ordered[-1], 3),
    }


def clean(url: str, args: argparse.Namespace) -> service.PassResult:
    """One retention pass with the daemon's pacing."""
    policy = service.Policy(
        completed=7 * DAY, failed=30 * DAY, events=7 * DAY, batch_size=args.batch_size
    )
    return service.Cleaner(url, policy, pause_factor=args.pause_factor).run_pass()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=200.0, help="runs produced per second")
    parser.add_argument("--baseline", type=float, default=20.0, help="seconds of phase (a)")
    parser.add_argument("--batch-size", type=int, default=Config().retention_batch_size)
    parser.add_argument("--pause-factor", type=float, default=service.PAUSE_FACTOR)
    parser.add_argument("--database-url", help="a server to create the database in")
    args = parser.parse_args(argv)

    if args.database_url:
        server, kind = libpq_url(args.database_url), "configured"
    else:
        server, kind = server_url()
    name, url = create_database(server)
    try:
        filled = fill(url, args.runs, args.steps, args.events)
        before = live_state(url)
        traffic = Traffic(url, args.rate)
        traffic.start()
        time.sleep(2)  # warm-up, not measured
        a_start = time.perf_counter()
        time.sleep(args.baseline)
        b_start = time.perf_counter()
        result = clean(url, args)
        b_end = time.perf_counter()
        traffic.finish()
        after = live_state(url)
        with psycopg.connect(url) as conn:
            left = conn.execute(
                "SELECT (SELECT count(*) FROM orchestrator.runs WHERE function_id = 'old'), "
                "(SELECT count(*) FROM orchestrator.steps s JOIN orchestrator.runs r "
                " ON r.id = s.run_id WHERE r.function_id = 'old'), "
                "(SELECT count(*) FROM orchestrator.events WHERE name = 'old/event'), "
                "(SELECT count(*) FROM orchestrator.runs WHERE function_id = 'work' "
                " AND status = 'completed'), "
                "(SELECT count(*) FROM orchestrator.runs WHERE function_id = 'work')"
            ).fetchone()
            pg_version = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    finally:
        drop_database(server, name)
    assert left is not None
    old_runs, old_steps, old_events, work_done, work_all = left

    a = latency(traffic.window(a_start, b_start))
    b = latency(traffic.window(b_start, b_end))
    ratio = {k: round(b[k] / a[k], 2) for k in ("p50_ms", "p95_ms", "p99_ms")}
    ok = old_runs == old_steps == old_events == 0 and after == before and len(after) == LIVE
    result_json = {
        "benchmark": "retention",
        "backlog": {"runs": args.runs, "steps": args.runs * args.steps, "events": args.events},
        "fill_seconds": round(filled, 1),
        "rate": args.rate,
        "a_without_cleanup": a | {"seconds": round(b_start - a_start, 1)},
        "b_with_cleanup": b | {"seconds": round(b_end - b_start, 1)},
        "ratio_b_over_a": ratio,
        "pass": result.counts()
        | {
            "batch_size": args.batch_size,
            "pause_factor": args.pause_factor,
            "batch_mean_ms": round(result.busy / max(1, result.batches) * 1000, 2),
        },
        "check": {
            "old_rows_left": old_runs + old_steps + old_events,
            "live_untouched": after == before,
            "work_runs_completed": f"{work_done}/{work_all}",
            "ok": ok,
        },
        "database": kind,
        "postgres": pg_version,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    out = write_result("retention.json", result_json)
    _print(result_json, args)
    print(f"written to {out}")
    return 0 if ok else 1


def _print(r: dict[str, Any], args: argparse.Namespace) -> None:
    backlog, p = r["backlog"], r["pass"]
    print(
        f"retention under load ({r['database']} Postgres {r['postgres']}; backlog "
        f"{backlog['runs']:,} runs, {backlog['steps']:,} steps, {backlog['events']:,} events, "
        f"filled in {r['fill_seconds']} s; {args.rate:g} runs/s produced, a claim every "
        f"{CLAIM_EVERY * 1000:g} ms):"
    )
    print(f"  {'phase':<22}{'claims':>8}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for label, key in (
        ("(a) no clean-up", "a_without_cleanup"),
        ("(b) clean-up", "b_with_cleanup"),
    ):
        f = r[key]
        print(
            f"  {label + ' ' + str(f['seconds']) + ' s':<22}{f['claims']:>8}{f['p50_ms']:>9.3f}"
            f"{f['p95_ms']:>9.3f}{f['p99_ms']:>9.3f}{f['max_ms']:>9.3f}"
        )
    q = r["ratio_b_over_a"]
    print(f"  {'ratio (b)/(a)':<30}{q['p50_ms']:>9.2f}{q['p95_ms']:>9.2f}{q['p99_ms']:>9.2f}")
    print(
        f"  pass: deleted {p['runs_completed'] + p['runs_failed']:,} runs, {p['steps']:,} steps, "
        f"{p['events']:,} events in {p['seconds']} s ({p['batches']} batches of "
        f"{p['batch_size']}, {p['busy_seconds']} s busy: a batch {p['batch_mean_ms']} ms on "
        f"average, {p['slowest_batch_ms']} ms at most; pause {p['pause_factor']:g} x batch, "
        f"at least {service.MIN_PAUSE * 1000:g} ms)"
    )
    c = r["check"]
    print(
        f"  check: old rows left {c['old_rows_left']}, live runs untouched {c['live_untouched']}, "
        f"work runs completed {c['work_runs_completed']}: {'ok' if c['ok'] else 'FAILED'}"
    )


if __name__ == "__main__":
    sys.exit(main())
