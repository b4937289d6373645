"""Scale-out: W1 and W2 with 1, 2 and 4 daemons sharing one Postgres.

    python bench/scale.py [--w1 10000] [--w2 2000] [--daemons 1,2,4] [--pgbench-seconds 5]

On one fresh database (like bench/pickup.py), serving bench/throughput.py's app:

- baseline: pgbench single-row INSERT with 1 client, in the same run;
- for each daemon count N: N daemons with the default configuration (2 worker processes x 32
  threads) are started and serving before any event goes in; then W1 (`--w1` single-step runs
  from one bulk INSERT) and W2 (`--w2` three-step runs), each as runs/s from the insert's
  commit to the last `finished_at`, with its ratio to pgbench(1) and to the 1-daemon figure;
- how the runs were spread over the daemons. No column records who ran a run (`lease_owner`
  is cleared at the finish), so each daemon serves /metrics on its own port and the spread is
  its `orchestrator_runs_finished_total{function=...,status="completed"}`;
- while W1 drains: `pg_stat_activity` sampled every 100 ms, the engine's backends that are
  not idle grouped by application name (digits folded to N) and wait event ("CPU" when active
  with no wait event), reported as average active sessions (samples / number of samples), with
  the statements they were running; and the CPU seconds (utime + stime from /proc/<pid>/stat) of the
  daemons' main processes, their other processes (fork server, workers, quarantine), the
  engine's Postgres backends, and Postgres's own processes (WAL writer, checkpointer,
  autovacuum...; server-wide), per 1,000 runs, with the host's busy share over the window.

The daemons are stopped, and events, runs and steps truncated, between settings. Writes
bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

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
from bench.throughput import APP_PATH, pgbench

WORKLOADS = {"W1": ("bench/one", "bench-one", 1), "W2": ("bench/three", "bench-three", 3)}
SAMPLE_EVERY = 0.1
TICKS = os.sysconf("SC_CLK_TCK")
ACTIVITY_SQL = """
SELECT pid, coalesce(application_name, ''), backend_type, coalesce(state, ''),
       wait_event_type, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 160),
       datname IS NOT DISTINCT FROM current_database()
FROM pg_stat_activity WHERE pid <> pg_backend_pid()
"""

# -- processes and their CPU -------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; None if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def cpu_seconds(pid: int) -> float | None:
    fields = _stat_fields(pid)
    return None if fields is None else (int(fields[11]) + int(fields[12])) / TICKS


def session_members(sid: int) -> list[int]:
    """Every process in session `sid` (a daemon is started as a session leader)."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat_fields(int(entry))
            if fields is not None and int(fields[3]) == sid:
                members.append(int(entry))
    return members


def host_busy_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of the whole host, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


# -- sampling pg_stat_activity ------------------------------------------------------------------


def _group(app: str) -> str:
    return re.sub(r"\d+", "N", app)


@dataclass
class Sampler:
    """Samples pg_stat_activity and the CPU of the given processes on a thread, until stopped."""

    url: str
    daemon_pids: list[int]
    samples: int = 0
    waits: Counter[tuple[str, str]] = field(default_factory=Counter)
    statements: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    first: dict[tuple[str, int], float] = field(default_factory=dict)
    last: dict[tuple[str, int], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._conn = psycopg.connect(self.url, autocommit=True, application_name="bench-scale")
        self._host = host_busy_ticks()
        self._started = time.monotonic()
        for sid in self.daemon_pids:
            for pid in session_members(sid):
                self._note("daemon" if pid == sid else "workers", pid, baseline=True)
        self._sample(baseline=True)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        for key in list(self.first):
            if key[0] in ("daemon", "workers"):
                self._note(key[0], key[1], baseline=False)
        self._sample(baseline=False)
        self._conn.close()
        self.wall = time.monotonic() - self._started
        busy, total = host_busy_ticks()
        self.host_busy = (busy - self._host[0]) / max(1, total - self._host[1])

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._count(self._sample(baseline=False))
            self.samples += 1

    def _note(self, kind: str, pid: int, *, baseline: bool) -> None:
        seconds = cpu_seconds(pid)
        if seconds is None:
            return
        key = (kind, pid)
        # a process first seen after the start began after it: all its CPU is in the window
        self.first.setdefault(key, seconds if baseline else 0.0)
        self.last[key] = seconds

    def _sample(self, *, baseline: bool) -> list[tuple[Any, ...]]:
        rows = self._conn.execute(ACTIVITY_SQL).fetchall()
        for pid, app, backend_type, _, _, _, _, ours in rows:
            if backend_type != "client backend":
                self._note("postgres", pid, baseline=baseline)
            elif ours and app.startswith("orchestrator"):
                self._note("backends", pid, baseline=baseline)
        return rows

    def _count(self, rows: list[tuple[Any, ...]]) -> None:
        for _, app, _, state, wtype, wevent, query, ours in rows:
            if not (ours and app.startswith("orchestrator")) or state in ("idle", ""):
                continue
            if state == "active":
                wait = f"{wtype}:{wevent}" if wtype else "CPU"
            else:  # idle in transaction: the client is working between two statements
                wait = f"{state}:{wevent}"
            self.waits[(_group(app), wait)] += 1
            if state == "active":
                self.statements[(_group(app), wait, query.strip())] += 1

    def cpu(self) -> dict[str, float]:
        totals = dict.fromkeys(("daemon", "workers", "backends", "postgres"), 0.0)
        for key, seconds in self.last.items():
            totals[key[0]] += seconds - self.first[key]
        return totals


# -- daemons ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Fleet:
    daemons: list[Daemon]
    ports: list[int]

    @classmethod
    def start(cls, url: str, n: int, logs: Path) -> Fleet:
        ports = [free_port() for _ in range(n)]
        daemons = [
            Daemon(url, logs / f"daemon-{i}.log", {"http_address": f"127.0.0.1:{port}"}, APP_PATH)
            for i, port in enumerate(ports)
        ]
        fleet = cls(daemons, ports)
        try:
            for daemon in daemons:
                daemon.wait_serving()
        except BaseException:
            fleet.stop()
            raise
        return fleet

    def stop(self) -> list[int]:
        with ThreadPoolExecutor(len(self.daemons)) as pool:
            return list(pool.map(Daemon.stop, self.daemons))

    def finished(self, function_id: str) -> list[int]:
        """Completed runs of `function_id` per daemon, from each daemon's /metrics."""
        pattern = re.compile(
            r'^orchestrator_runs_finished_total\{function="'
            + re.escape(function_id)
            + r'",status="completed"\} (\S+)$',
            re.MULTILINE,
        )
        counts = []
        for port in self.ports:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                match = pattern.search(r.read().decode())
            counts.append(int(float(match.group(1))) if match else 0)
        return counts


def spread(fleet: Fleet, function_id: str, n: int) -> list[int]:
    """Per-daemon counts once they add up to `n` (a worker's report may trail its commit)."""
    deadline = time.monotonic() + 10
    counts = fleet.finished(function_id)
    while sum(counts) < n and time.monotonic() < deadline:
        time.sleep(0.1)
        counts = fleet.finished(function_id)
    return counts


# -- one setting --------------------------------------------------------------------------------


def workload(url: str, workload: str, n: int, fleet: Fleet) -> tuple[dict[str, Any], Sampler]:
    name, function_id, steps = WORKLOADS[workload]
    sampler = Sampler(url, [d.proc.pid for d in fleet.daemons])
    sampler.start()
    try:
        started = send_bulk(url, name, n, {})
        seconds = wait_completed(url, function_id, n, started, timeout=600)
    finally:
        sampler.stop()
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT extract(epoch FROM max(created_at) - %s)::float8 FROM orchestrator.runs "
            "WHERE function_id = %s",
            (started, function_id),
        ).fetchone()
    figures: dict[str, Any] = {"runs": n, "seconds": round(seconds, 3)}
    # the last ingest transaction's start: ingestion over by then, or the whole window long
    figures["last_created_s"] = round(float(row[0]), 3) if row else None
    figures["runs_per_s"] = round(n / seconds, 1)
    if steps > 1:
        figures["steps_per_s"] = round(steps * n / seconds, 1)
    figures["per_daemon"] = spread(fleet, function_id, n)
    return figures, sampler


def contention(sampler: Sampler, runs: int, top: int = 8) -> dict[str, Any]:
    per_sample = max(1, sampler.samples)
    cpu = sampler.cpu()
    return {
        "samples": sampler.samples,
        "top_waits": [
            {"app": app, "wait": wait, "aas": round(count / per_sample, 3)}
            for (app, wait), count in sampler.waits.most_common(top)
        ],
        "active_statements": [
            {"app": app, "wait": wait, "statement": q, "aas": round(count / per_sample, 3)}
            for (app, wait, q), count in sampler.statements.most_common(top)
        ],
        "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
        "cpu_s_per_1000_runs": {k: round(v / runs * 1000, 3) for k, v in cpu.items()},
        "window_s": round(sampler.wall, 2),
        "cores_used": round(sum(cpu.values()) / sampler.wall, 2),
        "host_busy": round(sampler.host_busy, 3),
    }


def setting(url: str, n: int, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    fleet = Fleet.start(url, n, logs)
    try:
        w1, sampler = workload(url, "W1", args.w1, fleet)
        w2, w2_sampler = workload(url, "W2", args.w2, fleet)
    finally:
        codes = fleet.stop()
    with psycopg.connect(url, autocommit=True) as conn:
        config = conn.execute(
            "SELECT DISTINCT workers, concurrency FROM orchestrator.daemons"
        ).fetchall()
        conn.execute("TRUNCATE orchestrator.events, orchestrator.runs CASCADE")
    return {
        "daemons": n,
        "daemon_config": [{"workers": w, "concurrency": c} for w, c in config],
        "W1": w1,
        "W2": w2,
        "W1_contention": contention(sampler, args.w1),
        "W2_contention": contention(w2_sampler, args.w2),
        "exit_codes": codes,
    }


def add_ratios(results: list[dict[str, Any]], base: float) -> None:
    one = {w: results[0][w]["runs_per_s"] for w in WORKLOADS}
    for r in results:
        for w in WORKLOADS:
            r[w]["ratio_to_pgbench_1"] = round(r[w]["runs_per_s"] / base, 3)
            r[w]["ratio_to_first"] = round(r[w]["runs_per_s"] / one[w], 3)


# -- output -------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    print(
        f"pgbench single-row INSERT, 1 client: {result['pgbench_1']:,.0f} tps; each daemon "
        f"{result['settings'][0]['daemon_config']}; ratios: x pgbench(1) / x the first setting"
    )
    header = (
        f"{'N':>2}  {'W1 runs/s':>10} {'ratios':>13} {'W1 s (made)':>12}  {'W2 runs/s':>10} "
        f"{'ratios':>13}  {'W1 per daemon':<24} {'W1 CPU s/1k: dmn/wrk/pg/pgaux':<30} "
        f"{'cores':>5} {'host':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in result["settings"]:
        c = r["W1_contention"]
        cpu = c["cpu_s_per_1000_runs"]
        ratios = {
            w: f"{r[w]['ratio_to_pgbench_1']:.3f} / {r[w]['ratio_to_first']:.2f}" for w in WORKLOADS
        }
        cpu_text = "/".join(f"{cpu[k]:.2f}" for k in ("daemon", "workers", "backends", "postgres"))
        print(
            f"{r['daemons']:>2}  {r['W1']['runs_per_s']:>10,.1f} {ratios['W1']:>13} "
            f"{r['W1']['seconds']:>5.2f} ({r['W1']['last_created_s']:>4.2f})  "
            f"{r['W2']['runs_per_s']:>10,.1f} {ratios['W2']:>13}  "
            f"{'/'.join(map(str, r['W1']['per_daemon'])):<24} {cpu_text:<30} "
            f"{c['cores_used']:>5.2f} {c['host_busy']:>5.0%}"
        )
    print(
        "(made: when the last run was created, i.e. ingestion done; CPU: daemons' main "
        "processes / their workers / engine backends / Postgres's own processes; cores: their "
        "sum over the W1 window; host: the whole machine's busy share, other work included)"
    )
    for r in result["settings"]:
        top = ", ".join(
            f"{w['app']} {w['wait']} {w['aas']}" for w in r["W1_contention"]["top_waits"][:5]
        )
        print(f" N={r['daemons']} W1 top waits (average active sessions): {top}")
        for s in r["W1_contention"]["active_statements"][:4]:
            print(f"     {s['aas']:>6} {s['app']} {s['wait']}: {s['statement'][:70]}")


def _counts(text: str) -> list[int]:
    return [int(v) for v in text.split(",")]


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    server, kind = server_url()
    name, url = create_database(server)
    logs = Path(tempfile.mkdtemp(prefix="scale-"))  # kept if the run fails
    try:
        base = pgbench(url, 1, args.pgbench_seconds)
        settings = []
        for n in args.daemons:
            log(f"{n} daemon(s)...")
            settings.append(setting(url, n, args, logs))
        with psycopg.connect(url) as conn:
            version = conn.execute("SHOW server_version").fetchone()
    finally:
        drop_database(server, name)
    shutil.rmtree(logs, ignore_errors=True)
    add_ratios(settings, base)
    return {
        "benchmark": "scale",
        "database": kind,
        "postgres": version[0] if version else "",
        "pgbench_1": round(base, 1),
        "daemon_counts": args.daemons,
        "spread_from": "each daemon's /metrics: orchestrator_runs_finished_total, completed",
        "settings": settings,
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--w1", type=int, default=10_000)
    parser.add_argument("--w2", type=int, default=2_000)
    parser.add_argument("--daemons", type=_counts, default=[1, 2, 4], help="e.g. 1,2,4")
    parser.add_argument("--pgbench-seconds", type=int, default=5)
    args = parser.parse_args(argv)
    result = run(args)
    print_table(result)
    print(f"written to {write_result('scale.json', result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
