"""Run the real daemon as a subprocess and observe it as a user would: SQL and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from tests.conftest import ROOT, eventually

APPS_DIR = Path(__file__).resolve().parent / "apps"


class DaemonProcess:
    """`orchestrator run --app tests.e2e.apps.<module>:app` against one test database."""

    def __init__(self, db_url: str, app: str, log_path: Path, **config: Any) -> None:
        self.db_url = db_url
        self.app = app
        self.log_path = log_path
        self.config = {
            "workers": 2,
            "concurrency": 4,
            "poll_interval": 0.5,
            "lease_duration": 5,
            "heartbeat_interval": 0.5,
            "rescue_interval": 0.5,
            "dead_daemon_after": 1.5,
            "shutdown_grace": 10,
            "log_format": "json",
        } | config
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["ORCHESTRATOR_DATABASE_URL"] = self.db_url
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        for key, value in self.config.items():
            env[f"ORCHESTRATOR_{key.upper()}"] = str(value)
        return env

    def start(self, *, wait: bool = True) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "run", "--app", self.app],
            cwd=ROOT,
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self.wait_serving()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_serving(self, timeout: float = 60.0) -> None:
        def serving() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.logs()}")
            return '"daemon serving"' in self.logs()

        eventually(serving, timeout=timeout, what="daemon serving")

    def worker_pids(self) -> list[int]:
        """The worker processes: children of the fork server the daemon started."""
        servers = [p for p in _children(self.pid) if "forkserver" in _cmdline(p)]
        return [p for server in servers for p in _children(server)]

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(60)

    def stop(self) -> None:
        stop_all([self])

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        """Every line of the daemon's output: its JSON log lines, and anything else it wrote
        (a traceback, a warning printed to stderr) as {"event": line, "level": "unparsed"},
        so that a check for bad lines cannot miss one by its shape."""
        return [_parsed(line) for line in self.logs().splitlines() if line.strip()]

    def problems(self) -> list[dict[str, Any]]:
        """The lines a healthy daemon does not write: errors, and lines that are not JSON."""
        return [e for e in self.log_events() if e.get("level") in PROBLEM_LEVELS]


PROBLEM_LEVELS = ("error", "critical", "exception", "unparsed")


def _parsed(line: str) -> dict[str, Any]:
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if isinstance(entry, dict):
        return entry
    return {"event": line, "level": "unparsed"}


def stop_all(daemons: list[DaemonProcess], timeout: float = 15.0) -> None:
    """SIGTERM every daemon still running, then wait for them together (their shutdowns
    overlap); one still running after `timeout` is killed with its process group."""
    running = [d.proc for d in daemons if d.proc is not None and d.proc.poll() is None]
    for proc in running:
        proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for proc in running:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


# One connection per test database for the tests' own reads and writes, kept for the test:
# polling with a new connection every 50 ms would load the machine the daemon runs on.
_conns: dict[str, psycopg.Connection[Any]] = {}


def sql(db_url: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = _conns.get(db_url)
    if conn is None or conn.closed or conn.broken:
        conn = _conns[db_url] = psycopg.connect(db_url, autocommit=True)
    cur = conn.execute(query, params)
    return cur.fetchall() if cur.description else []


def close_connections() -> None:
    for conn in _conns.values():
        conn.close()
    _conns.clear()


def run_of(db_url: str, event_id: str) -> str:
    """The id of the run the event `event_id` started (waiting for it to be created)."""
    return str(
        eventually(
            lambda: scalar(
                db_url, "SELECT id::text FROM orchestrator.runs WHERE event_id = %s", (event_id,)
            ),
            what=f"run of event {event_id} created",
        )
    )


def effects(url: str, run_id: str) -> dict[str, int]:
    """How many times each step body of the run executed (tests.e2e.apps.common.record)."""
    rows = sql(url, "SELECT step, count(*) FROM effects WHERE run_id = %s GROUP BY step", (run_id,))
    return dict(rows)


def scalar(db_url: str, query: str, params: Any = None) -> Any:
    rows = sql(db_url, query, params)
    return rows[0][0] if rows else None


def run_cli(
    args: tuple[str, ...], env: dict[str, str], cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    """`orchestrator ARGS` as a user runs it, with this checkout importable."""
    env = dict(env, PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def cli(db_url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = run_cli(args, dict(os.environ, ORCHESTRATOR_DATABASE_URL=db_url))
    if check and result.returncode != 0:
        raise AssertionError(f"orchestrator {' '.join(args)} failed: {result.stderr}")
    return result


TERMINAL = ("completed", "failed", "cancelled")


def send(url: str, name: str, data: dict[str, Any] | None = None) -> str:
    """Insert an event by plain SQL, as any producer would; returns its id."""
    return str(
        scalar(
            url,
            "INSERT INTO orchestrator.events (name, data) VALUES (%s, %s) RETURNING id",
            (name, Jsonb(data or {})),
        )
    )


def finished_run(url: str, event_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for the run of `event_id` to reach a terminal status; returns its row."""

    def check() -> list[tuple[Any, ...]]:
        return sql(
            url,
            "SELECT id::text, status, output, error FROM orchestrator.runs "
            "WHERE event_id = %s AND status = ANY(%s)",
            (event_id, list(TERMINAL)),
        )

    rows = eventually(check, timeout=timeout, what=f"run of event {event_id} finished")
    run_id, status, output, error = rows[0]
    return {"id": run_id, "status": status, "output": output, "error": error}


def start_both(
    daemon_factory: Callable[..., DaemonProcess], app: str, **config: Any
) -> list[DaemonProcess]:
    """Two daemons serving `app` against one database, started side by side."""
    daemons = [daemon_factory(app, start=False, **config) for _ in range(2)]
    for d in daemons:
        d.start(wait=False)
    for d in daemons:
        d.wait_serving()
    return daemons


def count(url: str, query: str, params: Any = None) -> int:
    return int(scalar(url, query, params))
