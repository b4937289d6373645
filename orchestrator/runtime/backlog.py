"""Measure the due queue (depth and lag per function) every few seconds, in the background.

Runs in its own thread only while the HTTP listener is on, so neither the scheduler loop nor a
scrape ever waits for it: a scrape reads the last measurement, and
`orchestrator_due_probe_timestamp_seconds` says how old it is. One statement per probe, two
index scans per function (db/backlog.py), the depth counted up to `DEPTH_CAP`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from orchestrator.db import backlog
from orchestrator.db.database import Database, DatabaseError
from orchestrator.errors import first_line

PROBE_EVERY = 5.0  # seconds
DEPTH_CAP = 10_000


class BacklogProbe:
    def __init__(
        self,
        db: Database,
        function_ids: Sequence[str],
        *,
        report: Callable[[list[backlog.DueBacklog], float], None],
        log: Any,
        every: float = PROBE_EVERY,
        cap: int = DEPTH_CAP,
    ) -> None:
        self.db = db
        self.function_ids = list(function_ids)
        self.report = report
        self.log = log
        self.every = every
        self.cap = cap
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="backlog-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.probe()
            self._stop.wait(self.every)

    def probe(self) -> bool:
        """Measure once and report; False (and the last report stands) if the database
        could not be reached."""
        try:
            with self.db.transaction() as conn:
                found = backlog.due_backlog(conn, self.function_ids, cap=self.cap)
        except DatabaseError as exc:
            if not self._failing:  # once per outage: the scheduler logs its own errors
                self.log.warning("could not measure the due queue", error=first_line(exc))
            self._failing = True
            return False
        except Exception:
            self.log.exception("measuring the due queue failed")
            return False
        self._failing = False
        self.report(found, time.time())
        return True
