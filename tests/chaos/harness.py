"""A fault-test environment: a fresh database on the private cluster, real daemons serving the
workload app, helpers to send load and inject faults, and the checker."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from orchestrator.db import migrate
from orchestrator.db.database import Database
from tests.chaos.apps.workload import EFFECTS_SQL
from tests.chaos.checker import Report, check
from tests.chaos.cluster import PrivateCluster
from tests.e2e.harness import DaemonProcess

APP = "tests.chaos.apps.workload:app"
DAEMON_DEFAULTS: dict[str, Any] = {
    "workers": 2,
    "concurrency": 4,
    "poll_interval": 0.5,
    "lease_duration": 4,
    "heartbeat_interval": 0.5,
    "rescue_interval": 0.5,
    "dead_daemon_after": 1.5,
    "leader_ttl": 2,
    "shutdown_grace": 5,
    "max_recoveries": 5,
    "log_format": "json",
}


class ChaosEnv:
    def __init__(self, cluster: PrivateCluster, logs: Path, **daemon_config: Any) -> None:
        self.cluster = cluster
        self.logs = logs
        self.name = f"chaos_{uuid.uuid4().hex[:10]}"
        self.config = DAEMON_DEFAULTS | daemon_config
        self.daemons: list[DaemonProcess] = []
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{self.name}"')
        self.url = cluster.url.rsplit("/", 1)[0] + f"/{self.name}"
        db = Database(self.url, pool_size=1)
        migrate.upgrade(db.engine)
        db.dispose()
        self.sql(EFFECTS_SQL)

    # -- database ------------------------------------------------------------------------

    def sql(self, query: str, params: Any = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, params: Any = None) -> Any:
        rows = self.sql(query, params)
        return rows[0][0] if rows else None

    def send(self, name: str, datas: Iterable[dict[str, Any]]) -> int:
        """Insert events in one statement, as a bulk producer would."""
        payload = [json.dumps(d) for d in datas]
        self.sql(
            "INSERT INTO orchestrator.events (name, data) "
            "SELECT %s, CAST(d AS jsonb) FROM unnest(CAST(%s AS text[])) AS d",
            (name, payload),
        )
        return len(payload)

    def db_now(self) -> datetime:
        value: datetime = self.scalar("SELECT now()")
        return value

    def status_counts(self) -> dict[str, int]:
        return dict(self.sql("SELECT status, count(*) FROM orchestrator.runs GROUP BY status"))

    def terminal(self) -> int:
        return int(
            self.scalar(
                "SELECT count(*) FROM orchestrator.runs "
                "WHERE status IN ('completed', 'failed', 'cancelled')"
            )
        )

    def wait_terminal(
        self, expected: int, timeout: float, *, during: Callable[[], None] | None = None
    ) -> float:
        """Wait until `expected` runs are terminal; call `during` each poll. Returns seconds."""
        started = time.monotonic()
        while True:
            if during is not None:
                during()
            if self.terminal() >= expected:
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(
                    f"only {self.terminal()} of {expected} runs finished in {timeout}s: "
                    f"{self.status_counts()}"
                )
            time.sleep(0.1)

    def check(self, **kwargs: Any) -> Report:
        return check(self.url, **kwargs)

    # -- daemons -------------------------------------------------------------------------

    def start_daemon(self, *, wait: bool = True, **overrides: Any) -> DaemonProcess:
        config = self.config | overrides
        index = len(self.daemons)
        daemon = DaemonProcess(self.url, APP, self.logs / f"{self.name}-d{index}.log", **config)
        self.daemons.append(daemon)
        return daemon.start(wait=wait)

    def restart_daemon(self, daemon: DaemonProcess) -> DaemonProcess:
        daemon.proc = None
        return daemon.start()

    def alive(self) -> list[DaemonProcess]:
        return [d for d in self.daemons if d.proc is not None and d.proc.poll() is None]

    def kill_random_worker(self, rng: random.Random) -> int | None:
        pids = [p for d in self.alive() for p in d.worker_pids()]
        if not pids:
            return None
        pid = rng.choice(pids)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return pid

    def daemon_errors(self) -> list[str]:
        """Log lines at error level, or tracebacks, from every daemon (expected ones aside)."""
        found = []
        for daemon in self.daemons:
            for entry in daemon.log_events():
                if entry.get("level") in ("error", "critical") and entry.get("event") not in (
                    "worker died",
                ):
                    found.append(f"{entry.get('event')}: {entry.get('error', '')}")
            if "Traceback" in daemon.logs() and '"exception"' not in daemon.logs():
                found.append("traceback in daemon output")
        return found

    def close(self) -> None:
        for daemon in self.daemons:
            daemon.stop()
        try:
            with psycopg.connect(self.cluster.url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        except psycopg.Error:
            pass


def pids_of_group(pgid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-g", str(pgid)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]
