"""Database-side time of the dashboard's reads (orchestrator/db/ui.py) on big tables.

    python -m bench.ui [--runs 1000000] [--steps 1000] [--calls 50] [--database-url URL]

Creates a fresh database in --database-url's server, else ORCHESTRATOR_BENCH_DATABASE_URL's,
else ORCHESTRATOR_TEST_DATABASE_URL's, else the embedded Postgres; fills it with SQL
`generate_series`: `--runs` runs of 20 functions over the last 30 days (mostly completed,
some failed, cancelled, queued, running, sleeping, waiting), each with its trigger event
(50 event names, `data.user_id` among 10,000 values, one event in 1,000 parked), and one
more run with `--steps` steps; then VACUUM ANALYZE. Then calls each query function
`--calls` times in its own read transaction and prints p50/p95 in milliseconds.

Then starts the real `orchestrator ui` (a subprocess on 127.0.0.1, ui_auth = false) on that
database and times whole requests over one kept-alive httpx connection: the runs page (all,
failed, one function), the 1,000-step run's page, and the same through /api/v1; p50/p95 of
`--calls` requests each (after two unmeasured ones), with the rows each answer holds (runs,
or steps) and its size. Last, the 1,000-step page's server time split in-process: the
queries (ui.run_detail), the context (the Gantt) and the template. Writes
bench/results/ui.json; the database is dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from sqlalchemy import Connection

from bench.pickup import create_database, drop_database, percentile, server_url, write_result
from bench.scale import free_port
from orchestrator.db import ui
from orchestrator.db.connect import libpq_url
from orchestrator.db.database import Database
from orchestrator.ui import run_pages, views
from orchestrator.ui.deps import Principal

BIG_RUN = "00000000-0000-4000-8000-00000000b16e"

_FILL = [
    "INSERT INTO orchestrator.functions (id, triggers, options, version) "
    "SELECT 'fn-' || lpad(g::text, 2, '0'), "
    "jsonb_build_array(jsonb_build_object('event', 'shop/order.' || g)), "
    "'{\"concurrency\": [{\"limit\": 5}]}', 'v1' FROM generate_series(0, 19) g",
    # runs: the status by i %% 1000, so that the rare ones are rare
    "INSERT INTO orchestrator.runs (function_id, status, event_id, events, attempts, error, "
    "created_at, started_at, finished_at, updated_at, due_at) "
    "SELECT 'fn-' || lpad((i %% 20)::text, 2, '0'), s.status, 'ev-' || i, "
    "jsonb_build_array(jsonb_build_object('id', 'ev-' || i, 'name', 'shop/order.' || (i %% 50), "
    "'data', jsonb_build_object('user_id', i %% 10000), 'ts', t)), 1, "
    "CASE WHEN s.status = 'failed' THEN '{\"type\": \"ValueError\"}'::jsonb END, t, "
    "CASE WHEN s.status <> 'queued' THEN t + interval '10 ms' END, "
    "CASE WHEN s.status IN ('completed', 'failed', 'cancelled') "
    "THEN t + (50 + i %% 1000) * interval '1 ms' END, t, t "
    "FROM (SELECT i, now() - interval '30 days' + i * (interval '30 days' / %(n)s) AS t "
    "      FROM generate_series(1, %(n)s) i) g "
    "CROSS JOIN LATERAL (SELECT CASE WHEN i %% 1000 = 0 THEN 'queued' "
    "WHEN i %% 1000 = 1 THEN 'running' WHEN i %% 1000 = 2 THEN 'sleeping' "
    "WHEN i %% 1000 = 3 THEN 'waiting' WHEN i %% 1000 < 24 THEN 'failed' "
    "WHEN i %% 1000 < 26 THEN 'cancelled' ELSE 'completed' END AS status) s",
    "INSERT INTO orchestrator.events (id, name, data, ts, received_at, ingested_at, error) "
    "SELECT 'ev-' || i, 'shop/order.' || (i %% 50), jsonb_build_object('user_id', i %% 10000), "
    "t, t, t, CASE WHEN i %% 1000 = 500 THEN 'no function' END "
    "FROM (SELECT i, now() - interval '30 days' + i * (interval '30 days' / %(n)s) AS t "
    "      FROM generate_series(1, %(n)s) i) g",
    "INSERT INTO orchestrator.runs (id, function_id, status, events, attempts, created_at, "
    "started_at, updated_at, due_at) VALUES (%(big)s, 'fn-00', 'running', "
    '\'[{"name": "shop/big", "data": {}}]\', 1, now() - interval \'1 hour\', '
    "now() - interval '1 hour', now(), now())",
    "INSERT INTO orchestrator.steps (run_id, step_id, position, kind, status, output, "
    "duration_ms, created_at, updated_at) SELECT %(big)s, 'step-' || lpad(p::text, 4, '0'), "
    "p, 'run', 'completed', jsonb_build_object('n', p, 'note', repeat('x', 200)), 100, "
    "now() - interval '1 hour' + p * interval '3 s', "
    "now() - interval '1 hour' + p * interval '3 s' + interval '100 ms' "
    "FROM generate_series(0, %(steps)s - 1) p",
]


def fill(url: str, n_runs: int, n_steps: int) -> float:
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        for statement in _FILL:
            conn.execute(statement, {"n": n_runs, "steps": n_steps, "big": BIG_RUN})
        conn.execute("VACUUM ANALYZE")
    return time.monotonic() - started


def cases(conn: Connection) -> dict[str, Callable[[Connection], Any]]:
    """The calls to time; cursors and ids are read once, from the filled database."""
    deep = ui.list_runs(conn, ui.RunFilter(limit=500))
    for _ in range(19):  # page 20 of 500-run pages
        deep = ui.list_runs(conn, ui.RunFilter(limit=500, before=deep.next_cursor))
    newest = deep.runs[0].created_at
    events, cursor = ui.list_events(conn, limit=50)
    week = ui.RunFilter(since=newest - timedelta(days=7), until=newest - timedelta(days=6))
    return {
        "list_runs": lambda c: ui.list_runs(c, ui.RunFilter()),
        "list_runs page 21 (cursor)": lambda c: ui.list_runs(
            c, ui.RunFilter(before=deep.next_cursor)
        ),
        "list_runs function": lambda c: ui.list_runs(c, ui.RunFilter(function_id="fn-07")),
        "list_runs status failed": lambda c: ui.list_runs(c, ui.RunFilter(status="failed")),
        "list_runs status queued": lambda c: ui.list_runs(c, ui.RunFilter(status="queued")),
        "list_runs function+status": lambda c: ui.list_runs(
            c, ui.RunFilter(function_id="fn-03", status="sleeping")
        ),
        "list_runs time range": lambda c: ui.list_runs(c, week),
        "list_runs event name": lambda c: ui.list_runs(c, ui.RunFilter(event_name="shop/order.7")),
        "list_runs run id prefix": lambda c: ui.list_runs(
            c, ui.RunFilter(id_prefix=deep.runs[3].id[:6])
        ),
        "list_runs event id prefix": lambda c: ui.list_runs(c, ui.RunFilter(id_prefix="ev-12345")),
        "list_runs data path (rare)": lambda c: ui.list_runs(
            c, ui.RunFilter(data_path="$.user_id == 77")
        ),
        "status_counts": lambda c: ui.status_counts(c, ui.RunFilter()),
        "status_counts function": lambda c: ui.status_counts(c, ui.RunFilter(function_id="fn-07")),
        "status_counts time range": lambda c: ui.status_counts(c, week),
        "status_counts event name": lambda c: ui.status_counts(
            c, ui.RunFilter(event_name="shop/order.7")
        ),
        "run_detail (1,000 steps)": lambda c: ui.run_detail(c, BIG_RUN),
        "run_detail (plain run)": lambda c: ui.run_detail(c, deep.runs[0].id),
        "function_stats": lambda c: ui.function_stats(c, "fn-07"),
        "functions_overview (20)": ui.functions_overview,
        "list_events": ui.list_events,
        "list_events cursor": lambda c: ui.list_events(c, before=cursor),
        "list_events name": lambda c: ui.list_events(c, name="shop/order.7"),
        "list_events parked": lambda c: ui.list_events(c, parked=True),
        "get_event": lambda c: ui.get_event(c, events[0].id),
        "queue_overview": ui.queue_overview,
        "schedules": ui.schedules,
        "daemons": ui.daemons,
    }


def time_calls(db: Database, call: Callable[[Connection], Any], n: int) -> list[float]:
    took = []
    for _ in range(n):
        with db.transaction() as conn:
            started = time.perf_counter()
            call(conn)
            took.append((time.perf_counter() - started) * 1000)
    return sorted(took)


# -- over HTTP, the real server ------------------------------------------------------------------

HTTP_CASES = {
    "GET /runs": "/runs",
    "GET /runs?status=failed": "/runs?status=failed",
    "GET /runs?function_id=fn-07": "/runs?function_id=fn-07",
    "GET /runs/<1,000-step run>": f"/runs/{BIG_RUN}",
    "GET /api/v1/runs": "/api/v1/runs",
    "GET /api/v1/runs/<1,000-step run>": f"/api/v1/runs/{BIG_RUN}",
}
_HTML_ROWS = re.compile(r'<tr (?:data-run=|id="step-)')


@contextmanager
def ui_server(url: str) -> Iterator[str]:
    """`orchestrator ui` on a free loopback port, without authentication; its base URL."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("orchestrator")), "ui", "--database-url", url]
    env = dict(os.environ, ORCHESTRATOR_UI_AUTH="false")
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*command, "--address", f"127.0.0.1:{port}"], env=env, stdout=log, stderr=log
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_answering(base, proc, log)
            yield base
        finally:
            proc.terminate()
            proc.wait(30)


def _wait_answering(base: str, proc: subprocess.Popen[bytes], log: Any) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise SystemExit(f"orchestrator ui exited ({proc.returncode}):\n{log.read().decode()}")
        try:
            httpx.get(base + "/api/v1/me", timeout=2)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"orchestrator ui did not answer on {base} within 60 s")


def rows(response: httpx.Response) -> int:
    """The runs, or the steps, that an answer holds."""
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        return len(body["steps"] if "steps" in body else body["runs"])
    return len(_HTML_ROWS.findall(response.text))


def time_http(client: httpx.Client, path: str, n: int) -> tuple[list[float], httpx.Response]:
    for _ in range(2):  # warm: templates compiled, the pool's connections open
        client.get(path).raise_for_status()
    took = []
    for _ in range(n):
        started = time.perf_counter()
        response = client.get(path)
        took.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
    return sorted(took), response


def http_figures(url: str, n: int) -> dict[str, Any]:
    figures = {}
    print(f"\n{'request':<36} {'p50 ms':>9} {'p95 ms':>9} {'rows':>6} {'KiB':>7}   ({n} each)")
    with ui_server(url) as base:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=base, limits=limits, timeout=60) as client:
            for label, path in HTTP_CASES.items():
                took, last = time_http(client, path, n)
                p50, p95 = percentile(took, 50), percentile(took, 95)
                size = len(last.content) / 1024
                figures[label] = {"p50_ms": p50, "p95_ms": p95, "rows": rows(last), "kib": size}
                print(f"{label:<36} {p50:>9.2f} {p95:>9.2f} {rows(last):>6} {size:>7.0f}")
    return figures


def page_split(db: Database, n: int) -> dict[str, float]:
    """The 1,000-step page's server time in-process, p50 of each part, in ms."""
    me = Principal("local", "operator", "local", None, True)
    parts: dict[str, list[float]] = {"queries": [], "context": [], "template": []}
    for _ in range(n):
        t0 = time.perf_counter()
        with db.transaction() as conn:
            d = ui.run_detail(conn, BIG_RUN)
        assert d is not None
        t1 = time.perf_counter()
        ctx = run_pages.run_context(d, show_payloads=True)
        t2 = time.perf_counter()
        views.render_html("run.html", me, **ctx)
        t3 = time.perf_counter()
        for part, ms in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[part].append(ms * 1000)
    split = {part: percentile(sorted(ms), 50) for part, ms in parts.items()}
    shown = ", ".join(f"{part} {ms:.1f}" for part, ms in split.items())
    print(f"\n1,000-step page in-process, p50 ms: {shown}")
    return split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    given = (
        args.database_url
        or os.environ.get("ORCHESTRATOR_BENCH_DATABASE_URL")
        or os.environ.get("ORCHESTRATOR_TEST_DATABASE_URL")
    )
    server, where = (libpq_url(given), "configured") if given else server_url()
    name, url = create_database(server)
    db = Database(url, pool_size=1)
    try:
        print(f"filling {args.runs:,} runs and a run of {args.steps:,} steps ({where} server)")
        print(f"filled in {fill(url, args.runs, args.steps):.1f}s")
        with db.transaction() as conn:
            calls = cases(conn)
        figures = {}
        print(f"{'query':<32} {'p50 ms':>9} {'p95 ms':>9}   ({args.calls} calls each)")
        for label, call in calls.items():
            took = time_calls(db, call, args.calls)
            figures[label] = {"p50_ms": percentile(took, 50), "p95_ms": percentile(took, 95)}
            print(f"{label:<32} {figures[label]['p50_ms']:>9.2f} {figures[label]['p95_ms']:>9.2f}")
        requests = http_figures(url, args.calls)
        split = page_split(db, args.calls)
        write_result(
            "ui.json",
            {"runs": args.runs, "steps": args.steps, "calls": args.calls,
             "python": platform.python_version(), "queries": figures, "http": requests,
             "run_page_split_ms": split},
        )  # fmt: skip
    finally:
        db.dispose()
        drop_database(server, name)


if __name__ == "__main__":
    main()
