"""What a daemon tells the outside world about itself, wired in one place: metrics and health
over HTTP (when `http_address` is set), and systemd notifications (when systemd asks).

The daemon reports a few moments — listening, serving, each loop pass, each heartbeat, each
database error, stopping — and counts through `metrics`; this object turns them into health
verdicts, `READY=1`/`STATUS=`/`WATCHDOG=1`/`STOPPING=1` datagrams, and the background probe
of the due queue.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.config import Config, parse_http_address
from orchestrator.db.database import Database
from orchestrator.log import scrub_secrets
from orchestrator.runtime.backlog import BacklogProbe
from orchestrator.runtime.endpoints import Endpoints
from orchestrator.runtime.health import Health
from orchestrator.runtime.metrics import DaemonMetrics
from orchestrator.runtime.systemd import Notifier


class Telemetry:
    def __init__(
        self,
        config: Config,
        *,
        function_ids: Sequence[str],
        app_version: str,
        db: Database,
        leader: Callable[[], bool],
        executing: Callable[[], int],
        log: Any,
    ) -> None:
        self.health = Health.for_intervals(
            poll_interval=config.poll_interval, heartbeat_interval=config.heartbeat_interval
        )
        self.metrics = DaemonMetrics(
            function_ids,
            app_version=app_version,
            health=self.health,
            leader=leader,
            executing=executing,
            threads=config.workers * config.concurrency + 1,
        )
        self.notifier = Notifier.from_environ(log=log)
        self.endpoints: Endpoints | None = None
        self.backlog: BacklogProbe | None = None
        if config.http_address:
            self.endpoints = Endpoints(
                parse_http_address(config.http_address),
                metrics=self.metrics.exposition,
                health=self.health,
                log=log,
            )
            self.backlog = BacklogProbe(db, function_ids, report=self.metrics.set_backlog, log=log)
        self.status = "starting"

    def listen(self) -> None:
        """Bind the HTTP listener, if configured (first thing at start-up, so that a taken
        port fails at once); /healthz and /readyz answer 503 until the daemon serves."""
        if self.endpoints is not None:
            self.endpoints.start()

    def serving(self, status: str) -> None:
        self.status = status
        self.health.serving()
        if self.backlog is not None:
            self.backlog.start()
        self.notifier.ready(status)

    def tick(self) -> None:
        """A pass of the scheduler loop (on the hot path: two clock reads and a compare)."""
        self.health.ticked()
        self.notifier.pet()

    def wait_limit(self) -> float | None:
        """The longest the loop may wait before its next pass, for the watchdog's sake."""
        return self.notifier.pet_in()

    def heartbeat_ok(self) -> None:
        self.health.heartbeat_ok()
        self.notifier.status(self.status)

    def database_error(self, message: str) -> None:
        message = scrub_secrets(message)  # a driver's message may quote the URL it was given
        self.health.database_error(message)
        self.notifier.status(f"database error, retrying: {message}")

    def stopping(self, status: str) -> None:
        self.status = status
        self.health.stopping()
        self.notifier.stopping(status)
        if self.backlog is not None:
            self.backlog.stop()

    def close(self) -> None:
        if self.endpoints is not None:
            self.endpoints.stop()
        self.notifier.close()
